"""Training batches: frames as tensors, shuffled batches, and size-balanced shards for data-parallel runs.

Every process of a data-parallel run draws the same global batches (same seed) and takes its own shard of
each. The shards are balanced by cost, not by count: a structure's cost is its number of atoms (the work of
a CHGNet pass grows with its edges and angles, which grow with the atoms at a fixed density), and the shards
are filled largest first into the lightest (the LPT rule), so no process waits long for the slowest one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from matfunnel.train.frames import Frame


@dataclass
class FrameTensors:
    """One frame's inputs and labels as CPU tensors (labels None where the frame has none)."""

    frac: Tensor
    lattice: Tensor
    numbers: Tensor
    energy: float | None
    forces: Tensor | None
    stress: Tensor | None
    magmoms: Tensor | None
    baseline: tuple[Tensor, Tensor, Tensor] | None = None  # (frac, lattice, numbers) of the undisplaced cell

    @property
    def n_atoms(self) -> int:
        """The number of atoms."""
        return int(self.numbers.shape[0])


def to_tensors(frame: Frame) -> FrameTensors:
    """The tensors of ``frame`` (float64 geometry and labels)."""
    s = frame.structure

    def opt(a) -> Tensor | None:
        return None if a is None else torch.tensor(np.asarray(a, dtype=np.float64))

    return FrameTensors(
        frac=torch.tensor(np.asarray(s.frac_coords, dtype=np.float64)),
        lattice=torch.tensor(np.asarray(s.lattice.matrix, dtype=np.float64)),
        numbers=torch.tensor(np.asarray(s.atomic_numbers, dtype=np.int64)),
        energy=None if frame.energy is None else float(frame.energy),
        forces=opt(frame.forces), stress=opt(frame.stress), magmoms=opt(frame.magmoms),
        baseline=None if frame.baseline is None else _geometry(frame.baseline))


def _geometry(s) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.tensor(np.asarray(s.frac_coords, dtype=np.float64)),
            torch.tensor(np.asarray(s.lattice.matrix, dtype=np.float64)),
            torch.tensor(np.asarray(s.atomic_numbers, dtype=np.int64)))


def epoch_batches(n_frames: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The frame indices of each global batch of an epoch: a seeded shuffle cut into ``batch_size`` pieces.

    The last batch may be smaller. The order depends only on ``(seed, epoch)``, so every process of a run and
    a resumed run draw the same batches.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_frames)
    return [order[i:i + batch_size].tolist() for i in range(0, n_frames, batch_size)]


def shard(batch: Sequence[int], costs: Sequence[float], n_shards: int) -> list[list[int]]:
    """Split ``batch`` into ``n_shards`` lists of about equal total cost (largest first into the lightest).

    Ties go to the lowest shard, so the split is deterministic. Each shard keeps the batch's order. A shard
    may be empty when the batch has fewer members than shards.
    """
    loads = [0.0] * n_shards
    members: list[list[int]] = [[] for _ in range(n_shards)]
    for idx in sorted(batch, key=lambda i: (-costs[i], i)):
        k = min(range(n_shards), key=lambda s: (loads[s], s))
        loads[k] += costs[idx]
        members[k].append(idx)
    position = {idx: pos for pos, idx in enumerate(batch)}
    return [sorted(m, key=position.__getitem__) for m in members]
