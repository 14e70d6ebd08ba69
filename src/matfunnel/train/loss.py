"""The fine-tuning loss and the error metrics, over a shard of a global batch.

Every term is a mean over the whole *global* batch: a process sums its shard's errors and divides by the
global count (structures with energies, force components, stress components, moments), so the processes'
losses and gradients add up to exactly those of one process running the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from matfunnel.train.batches import FrameTensors
from matfunnel.train.config import TrainConfig

TERMS: tuple[str, ...] = ("energy", "forces", "stress", "magmoms")
"""The loss terms, in order."""


def label_counts(members: Sequence[FrameTensors]) -> dict[str, int]:
    """How many values of each label the frames hold (energies per structure, force and stress components, moments)."""
    return {
        "energy": sum(t.energy is not None for t in members),
        "forces": sum(3 * t.n_atoms for t in members if t.forces is not None),
        "stress": sum(9 for t in members if t.stress is not None),
        "magmoms": sum(t.n_atoms for t in members if t.magmoms is not None),
    }


def _elementwise(diff: Tensor, config: TrainConfig) -> Tensor:
    if config.loss == "huber":
        return F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=config.huber_delta)
    return diff * diff


def _pairs(members: Sequence[FrameTensors], out: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Prediction and label of each term over the members that have the label (float64, flattened)."""
    n = torch.tensor([t.n_atoms for t in members])
    starts = torch.cumsum(n, 0) - n
    pairs: dict[str, tuple[list[Tensor], list[Tensor]]] = {k: ([], []) for k in TERMS}
    for b, t in enumerate(members):
        lo, hi = int(starts[b]), int(starts[b] + n[b])
        if t.energy is not None and "energy" in out:
            pairs["energy"][0].append(out["energy"][b:b + 1].to(torch.float64) / t.n_atoms)
            pairs["energy"][1].append(torch.tensor([t.energy / t.n_atoms], dtype=torch.float64))
        for key, label, rows in (("forces", t.forces, slice(lo, hi)), ("stress", t.stress, slice(b, b + 1)),
                                 ("magmoms", t.magmoms, slice(lo, hi))):
            if label is not None and key in out:
                pairs[key][0].append(out[key][rows].reshape(-1).to(torch.float64))
                pairs[key][1].append(label.reshape(-1))
    dev = next(iter(out.values())).device
    return {k: (torch.cat(p).to(dev), torch.cat(y).to(dev)) for k, (p, y) in pairs.items() if p}


def shard_loss(members: Sequence[FrameTensors], out: dict[str, Tensor], global_counts: dict[str, int],
               config: TrainConfig) -> tuple[Tensor, dict[str, float]]:
    """The shard's share of the global batch's loss, and its per-term sums of absolute errors.

    Parameters
    ----------
    members
        The shard's frames, in the order of the model's outputs ``out``.
    out
        The model's differentiable outputs (energy per structure, forces, stress, magmoms).
    global_counts
        :func:`label_counts` of the whole global batch.
    config
        Loss function and weights.

    Returns
    -------
    loss : Tensor
        A float64 scalar: summed over all processes it is the batch's loss.
    abs_errors : dict
        Per term, the sum of absolute errors over this shard (for MAEs) and ``"<term>_n"`` its count.
    """
    weights = {k: getattr(config.weights, k) for k in TERMS}
    active = config.terms()
    dev = next(iter(out.values())).device
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    sums: dict[str, float] = {}
    for key, (pred, label) in _pairs(members, out).items():
        diff = pred - label
        sums[key] = float(diff.detach().abs().sum())
        sums[key + "_n"] = float(diff.numel())
        if key in active and global_counts[key]:
            loss = loss + weights[key] * _elementwise(diff, config).sum() / global_counts[key]
    return loss, sums
