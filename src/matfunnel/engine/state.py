"""A batch of periodic structures as concatenated torch tensors (the state every batched engine uses).

Structures are stored back to back: per-atom tensors have ``N`` rows (all atoms of all structures),
per-structure tensors have ``B`` rows, and ``batch`` (N,) says which structure each atom belongs to.
Engines extend :class:`SystemState` with their own fields (velocities, FIRE counters, ...) and mark
each field's scope with :func:`atom_field` / :func:`system_field`; :func:`select` and
:func:`concat` then work on any such state, which is what lets finished structures leave a running
batch and queued ones enter it.

Geometry is float64 on the potential's device: positions Cartesian A, ``cell`` rows are lattice
vectors (ASE and pymatgen convention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pymatgen.core import Lattice, Structure
from torch import Tensor

from matfunnel.potential.base import Evaluation

DTYPE = torch.float64

def atom_field(**kw) -> Any:
    """A dataclass field with one row per atom."""
    return field(metadata={"scope": "atom"}, **kw)


def system_field(**kw) -> Any:
    """A dataclass field with one row per structure."""
    return field(metadata={"scope": "system"}, **kw)


def _batch_field() -> Any:
    """The dataclass field of ``batch``: per atom, the index of its structure (remapped by :func:`select`)."""
    return field(metadata={"scope": "batch"})


@dataclass
class SystemState:
    """Positions, cells and species of ``B`` structures, plus the latest potential evaluation."""

    positions: Tensor = atom_field()  # (N, 3) float64 Cartesian A
    numbers: Tensor = atom_field()  # (N,) long atomic numbers
    batch: Tensor = _batch_field()  # (N,) long structure index of each atom
    cell: Tensor = system_field()  # (B, 3, 3) float64, rows are lattice vectors
    ids: Tensor = system_field()  # (B,) long: index of each structure in the caller's input list
    # latest evaluation at ``positions``/``cell`` (None until evaluated)
    energy: Tensor | None = system_field(default=None)  # (B,) eV
    forces: Tensor | None = atom_field(default=None)  # (N, 3) eV/A
    stress: Tensor | None = system_field(default=None)  # (B, 3, 3) GPa, positive = tensile
    magmoms: Tensor | None = atom_field(default=None)  # (N,) mu_B
    eval_error: list | None = None  # per structure: the potential's message or None
    min_distance: Tensor | None = system_field(default=None)  # (B,) A, when the potential reports it

    # ---- derived ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the tensors live on."""
        return self.positions.device

    @property
    def n_systems(self) -> int:
        """Number of structures ``B``."""
        return int(self.cell.shape[0])

    @property
    def n_atoms(self) -> Tensor:
        """(B,) atoms per structure."""
        return torch.bincount(self.batch, minlength=self.n_systems)

    def volumes(self) -> Tensor:
        """(B,) cell volumes, A^3."""
        return torch.linalg.det(self.cell).abs()


def _scope(f: dataclasses.Field) -> str | None:
    return f.metadata.get("scope")


def from_structures(structures: list[Structure], device: str | torch.device = "cpu",
                    ids: list[int] | None = None) -> SystemState:
    """A :class:`SystemState` of pymatgen structures (not yet evaluated)."""
    ids = list(range(len(structures))) if ids is None else list(ids)
    pos = np.concatenate([s.cart_coords for s in structures]).astype(np.float64)
    z = np.concatenate([np.asarray(s.atomic_numbers, dtype=np.int64) for s in structures])
    cell = np.stack([s.lattice.matrix for s in structures]).astype(np.float64)
    counts = torch.tensor([len(s) for s in structures], dtype=torch.long, device=device)
    return SystemState(positions=torch.from_numpy(pos).to(device), numbers=torch.from_numpy(z).to(device),
                       batch=torch.repeat_interleave(torch.arange(len(structures), device=device), counts),
                       cell=torch.from_numpy(cell).to(device),
                       ids=torch.tensor(ids, dtype=torch.long, device=device))


def movable_mask(structures: list[Structure]) -> np.ndarray | None:
    """(N, 3) float: 0 where pymatgen's ``selective_dynamics`` holds a Cartesian component fixed, else 1.

    ``None`` when no structure has that site property.
    """
    if not any("selective_dynamics" in s.site_properties for s in structures):
        return None
    parts = []
    for s in structures:
        sd = s.site_properties.get("selective_dynamics")
        parts.append(np.ones((len(s), 3)) if sd is None else np.array(
            [np.broadcast_to(np.asarray(1.0 if v is None else v, dtype=float), (3,)) for v in sd]).reshape(len(s), 3))
    return np.concatenate(parts)


def to_structure(state: SystemState, b: int, template: Structure | None = None) -> Structure:
    """Structure ``b`` of the batch as pymatgen (species and ``properties`` from ``template``)."""
    mask = state.batch == b
    pos = state.positions[mask].detach().cpu().numpy()
    lat = state.cell[b].detach().cpu().numpy()
    species = template.species if template is not None else state.numbers[mask].cpu().tolist()
    s = Structure(Lattice(lat), species, pos, coords_are_cartesian=True)
    if template is not None:
        s.properties = dict(template.properties)
    return s


def upgrade[S: SystemState](state: SystemState, cls: type[S], **fields) -> S:
    """``state`` as a subclass ``cls`` with the extra ``fields`` filled in (every field ``state`` has is kept)."""
    names = {f.name for f in dataclasses.fields(cls)}
    base = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name in names}
    return cls(**{**base, **fields})


def select[S: SystemState](state: S, keep: Tensor) -> S:
    """The structures where ``keep`` (B,) bool is true, in order."""
    keep = keep.to(device=state.device, dtype=torch.bool)
    idx = torch.nonzero(keep).squeeze(1)
    atom_keep = keep[state.batch]
    remap = torch.full((state.n_systems,), -1, dtype=torch.long, device=state.device)
    remap[idx] = torch.arange(idx.shape[0], device=state.device)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if v is None:
            kw[f.name] = None
        elif _scope(f) == "batch":
            kw[f.name] = remap[v[atom_keep]]
        elif _scope(f) == "atom":
            kw[f.name] = v[atom_keep]
        elif _scope(f) == "system":
            kw[f.name] = v[idx]
        elif f.name == "eval_error":
            kw[f.name] = [v[i] for i in idx.tolist()]
        else:
            kw[f.name] = v
    return type(state)(**kw)


def concat[S: SystemState](states: list[S]) -> S:
    """Structures of all ``states`` (same type) in one batch. Missing evaluations stay missing."""
    states = [s for s in states if s is not None and s.n_systems > 0]
    if not states:
        raise ValueError("nothing to concatenate")
    if len(states) == 1:
        return states[0]
    cls = type(states[0])
    kw: dict[str, Any] = {}
    offsets = np.cumsum([0] + [s.n_systems for s in states[:-1]])
    for f in dataclasses.fields(cls):
        vals = [getattr(s, f.name) for s in states]
        if _scope(f) == "batch":
            kw[f.name] = torch.cat([v + int(o) for v, o in zip(vals, offsets, strict=True)])
        elif f.name == "eval_error":
            kw[f.name] = None if all(v is None for v in vals) else sum(
                (v if v is not None else [None] * s.n_systems for v, s in zip(vals, states, strict=True)), [])
        elif _scope(f) in ("atom", "system"):
            kw[f.name] = None if any(v is None for v in vals) else torch.cat(vals)
        else:
            kw[f.name] = vals[0]
    return cls(**kw)


def evaluate[S: SystemState](state: S, potential, *, compute_stress: bool = True) -> S:
    """``state`` with energy/forces/stress/magmoms of its current geometry (float64)."""
    ev: Evaluation = potential.evaluate(state.numbers, state.positions, state.cell, state.n_atoms,
                                        compute_stress=compute_stress)
    dev = state.device

    def cast(t):
        return None if t is None else t.to(device=dev, dtype=DTYPE)

    return dataclasses.replace(state, energy=cast(ev.energy), forces=cast(ev.forces), stress=cast(ev.stress),
                               magmoms=cast(ev.magmoms), eval_error=ev.errors,
                               min_distance=cast(getattr(ev, "min_distance", None)))


def min_distances(positions: Tensor, cell: Tensor, batch: Tensor, n_systems: int, cutoff: float = 1.0) -> Tensor:
    """(B,) smallest interatomic distance of each structure up to ``cutoff`` A.

    ``inf`` when no two atoms, or no atom and its own periodic image, are that close.
    A cell-list neighbour search at the small cutoff (:mod:`matfunnel.potential.neighbors`),
    so the cost is linear in the atoms whatever the cell. Used for potentials that do not report the distance
    themselves (:attr:`Evaluation.min_distance`); what the engine asks is only whether it is under
    ``MIN_DISTANCE``.
    """
    from matfunnel.potential.neighbors import pairs_within

    dev = positions.device
    out = torch.full((n_systems,), float("inf"), dtype=DTYPE, device=dev)
    if positions.shape[0] == 0:
        return out
    frac = torch.linalg.solve(cell.transpose(1, 2)[batch], positions.unsqueeze(2)).squeeze(2)  # r = L^T f
    counts = torch.bincount(batch, minlength=n_systems)
    i, _, _, d = pairs_within(frac, cell, counts, cutoff, batch)
    return out.scatter_reduce_(0, batch[i.to(dev)], d.to(device=dev, dtype=DTYPE), reduce="amin")


def failure_reasons(state, finite_systems: Tensor, finite_atoms: Tensor, check_distance: bool) -> list[str | None]:
    """Why each structure of ``state`` must stop now (None: it may go on).

    ``finite_systems`` [B] and ``finite_atoms`` [N] are the caller's finiteness masks (energy/stress,
    forces/velocities); a structure also stops when the potential reported an error for it, when a
    force exceeds ``MAX_FORCE`` or, if ``check_distance``, when two atoms come closer than
    ``MIN_DISTANCE``. Shared by relaxation and MD so both report failures the same way.

    The tests run on the device for the whole batch; only the failing structures' numbers come to the host
    (one transfer per call), so the cost per step does not grow with Python work per structure.
    """
    import math

    from matfunnel.engine.inputs import MAX_FORCE
    from matfunnel.potential.validate import MIN_DISTANCE

    nb = state.n_systems
    reasons: list[str | None] = list(state.eval_error) if state.eval_error else [None] * nb
    bad_atoms = (~finite_atoms).to(state.forces.dtype)
    finite = finite_systems & (torch.zeros(nb, dtype=bad_atoms.dtype, device=state.device).index_add_(
        0, state.batch, bad_atoms) == 0)
    fabs = torch.zeros(nb, dtype=state.forces.dtype, device=state.device).scatter_reduce_(
        0, state.batch, torch.nan_to_num(state.forces, nan=0.0).abs().amax(1), "amax")
    if not check_distance:
        dmin_t = torch.full((nb,), math.inf, dtype=fabs.dtype, device=state.device)
    elif state.min_distance is not None:  # measured on the potential's graph at these positions
        dmin_t = torch.nan_to_num(state.min_distance, nan=math.inf).to(fabs.dtype)
    else:
        dmin_t = min_distances(state.positions, state.cell, state.batch, nb).to(fabs.dtype)
    bad = (dmin_t < MIN_DISTANCE) | ~finite | (fabs > MAX_FORCE)
    # one host transfer: per structure [bad, step, finite, max |f|, minimum distance]; only the bad rows are read
    table = torch.stack([bad.to(fabs.dtype), state.n_steps.to(fabs.dtype), finite.to(fabs.dtype), fabs, dmin_t], 1)
    flagged = [b for b, r in enumerate(reasons) if r is not None]
    rows = table.cpu().numpy()
    for b in sorted(set(flagged) | set(np.flatnonzero(rows[:, 0]).tolist())):
        _, step, fin, fmax_b, dmin = rows[b].tolist()
        step = int(step)
        # the cause before its symptoms: overlapping atoms first, then the NaN or huge forces they give
        if reasons[b] is not None:
            reasons[b] = f"the potential failed at step {step}: {reasons[b]}"
        elif dmin < MIN_DISTANCE:
            reasons[b] = f"atoms closer than {MIN_DISTANCE} A (minimum distance {dmin:.3f} A) at step {step}"
        elif not fin:
            reasons[b] = f"NaN energy/forces at step {step}"
        elif fmax_b > MAX_FORCE:
            reasons[b] = f"forces exploded (> {MAX_FORCE} eV/A) at step {step}"
    return reasons
