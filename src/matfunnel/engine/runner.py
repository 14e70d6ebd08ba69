"""Batched relaxation with in-flight refill and per-structure failure isolation.

:func:`relax_batched` keeps one optimizer state (:mod:`~matfunnel.engine.optimizers`: FIRE or L-BFGS on the
Frechet cell filter's degrees of freedom) on the potential's device.
Every iteration evaluates all structures in it with one ``potential.evaluate`` call, retires the ones
that converged, ran out of steps or blew up (NaN, forces above 1e3 eV/A, atoms closer than 0.5 A,
an error from the potential), moves the others one optimizer step, and fills the freed room with queued
structures, so the device stays full until the queue is empty. How many atoms fit is decided by
:class:`AtomBudget` (the potential's own ``plan_batches`` when it has one); the queue, the refill and the
harvest of finished structures are :class:`~matfunnel.engine.batching.InFlightBatcher`'s.

Results are :class:`~matfunnel.engine.results.RelaxResult` documents, identical in format to the
ASE path; ``on_result(index, result)`` fires as soon as a structure leaves the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure

from matfunnel.engine.batching import BYTES_PER_ATOM, AtomBudget, HostView, InFlightBatcher, validated
from matfunnel.engine.cellfilter import FilterState, filter_forces
from matfunnel.engine.documents import SiteTable, initial_dict
from matfunnel.engine.inputs import check_relax_settings, labels_for
from matfunnel.engine.optimizers import Optimizer, resolve
from matfunnel.engine.results import RelaxResult
from matfunnel.engine.state import (
    evaluate,
    failure_reasons,
    from_structures,
    movable_mask,
)
from matfunnel.engine.symmetry import Symmetrizer, symmetrized
from matfunnel.engine.trajectory import Frames
from matfunnel.potential import Potential


def relax_batched(
    structures: Sequence[Structure],
    potential: Potential,
    *,
    labels: Sequence[str] | None = None,
    fmax: float = 0.05,
    max_steps: int = 500,
    relax_cell: bool = True,
    symmetry: bool = False,
    symprec: float = 1e-3,
    scalar_pressure: float = 0.0,
    exp_cell_factor: float | None = None,
    config: Any = None,
    optimizer: str | None = None,
    max_atoms: int | None = None,
    check_distance_every: int = 1,
    progress: bool = False,
    on_result: Callable[[int, RelaxResult], None] | None = None,
    trajectory_every: int = 0,
    max_frames: int = 100,
) -> list[RelaxResult]:
    """Relax every structure (an ASE optimizer + Frechet cell filter, ASE semantics) in refilled batches.

    Arguments mirror :func:`matfunnel.engine.relax_structures` plus: ``symmetry`` keeps each
    structure's space group (spglib, ``symprec``); ``scalar_pressure`` GPa; ``max_atoms`` overrides
    the batch budget; ``check_distance_every`` steps between minimum-distance checks; ``optimizer`` the method
    (``"fire"``, ``"lbfgs"``; ``None``: :data:`~matfunnel.engine.optimizers.DEFAULT_OPTIMIZER`) and ``config`` its
    parameters (its config object or a mapping of ASE's parameter names; ``None``: ASE's defaults). Returns one
    :class:`RelaxResult` per input, in input order; ``wall_time`` is the time the structure spent in
    the batch (shared with its batch mates).

    Structures are validated when the batch reaches them, not all before the first step. Atoms held by
    pymatgen's ``selective_dynamics`` site property stay fixed (as ASE's constraints hold them). With
    ``trajectory_every`` > 0 each result carries a ``trajectory`` (energy, residual force, volume, positions and
    cell every that many steps and at the end, thinned to at most ``max_frames`` frames; see
    :class:`~matfunnel.engine.trajectory.Frames`). A failure raised by the potential itself (out of memory, a
    device error) may pass on a retry: its document has ``data["potential_error"]`` set, so that callers that
    keep results do not keep it.
    """
    n = len(structures)
    method, config = resolve(optimizer, config)
    check_relax_settings(fmax, max_steps)
    if trajectory_every < 0 or max_frames < 2:
        raise ValueError(f"trajectory_every must be >= 0 and max_frames >= 2, got {trajectory_every}, {max_frames}")
    job = _Relaxation(structures, potential, labels_for(labels, n), fmax=fmax, max_steps=max_steps,
                      relax_cell=relax_cell, scalar_pressure=scalar_pressure, exp_cell_factor=exp_cell_factor,
                      method=method, config=config, check_distance_every=check_distance_every,
                      symmetrizer=Symmetrizer(symprec) if symmetry else None, symprec=symprec,
                      trajectory_every=trajectory_every, max_frames=max_frames)
    batcher = InFlightBatcher(job, n, AtomBudget(potential, max_atoms), on_result=on_result,
                              progress="relax" if progress else None)
    active, it = batcher.refill(None), 0
    while active is not None:
        active, reasons, converged, done = job.forces(active, it)
        active = batcher.harvest(active, done, reasons, partial(job.document, converged=converged))
        if active is not None:
            active = method.update(active, config)
        active = batcher.refill(active)
        it += 1
    return batcher.close()


@dataclass
class _Relaxation:
    """One :func:`relax_batched` call: its settings and the per-structure data of the structures in the batch."""

    structures: Sequence
    potential: Potential
    labels: list[str | None]
    fmax: float
    max_steps: int
    relax_cell: bool
    scalar_pressure: float
    exp_cell_factor: float | None
    method: Optimizer
    config: Any
    check_distance_every: int
    symmetrizer: Symmetrizer | None
    symprec: float
    trajectory_every: int
    max_frames: int
    inputs: dict[int, Structure] = field(default_factory=dict)
    #: the document parts of each validated input that do not change with the geometry (while it is in a batch)
    tables: dict[int, SiteTable] = field(default_factory=dict)
    #: symmetry mode: the symmetrised starting structures of queued inputs
    sym_start: dict[int, Structure] = field(default_factory=dict)
    recorders: dict[int, Frames] = field(default_factory=dict)

    def __post_init__(self):
        # a potential that measures the minimum distance on its own graph reports it with every evaluation, so the
        # first step checks it (free) instead of an all-pairs distance matrix per structure up front
        self.graph_distances = bool(getattr(self.potential, "distances_on_graph", False)) and bool(
            self.check_distance_every)

    def prepare(self, i: int) -> Structure:
        """Validate input ``i`` and build its document table (and find its symmetry, in symmetry mode)."""
        s = validated(self.structures[i], self.labels, i, self.potential.supported_elements,
                      check_distances=not self.graph_distances,
                      budget=getattr(self.potential, "budget_problem", None))
        self.inputs[i] = s
        self.tables[i] = SiteTable(s)
        if self.symmetrizer is not None:  # start from the exact symmetry (ASE's FixSymmetry refines it too)
            self.sym_start[i] = symmetrized(s, self.symprec)
            self.symmetrizer.add(i, self.sym_start[i])
        return s

    def failed(self, i: int, error: str) -> RelaxResult:
        """Return the document of input ``i``, which could not be relaxed."""
        res = self._blank(i, self.inputs.get(i, self.structures[i]))
        res.error = error
        return res

    def start(self, take: list[int]) -> FilterState:
        """Build the optimizer state of the inputs ``take``."""
        entering = [self.sym_start.pop(k, self.inputs[k]) for k in take]
        new = self.method.init(
            from_structures(entering, self.potential.device, ids=take), fmax=self.fmax, max_steps=self.max_steps,
            relax_cell=self.relax_cell, exp_cell_factor=self.exp_cell_factor, scalar_pressure=self.scalar_pressure,
            config=self.config, movable=movable_mask(entering))
        if self.trajectory_every:
            for k in take:
                self.recorders[k] = Frames(self.trajectory_every, self.max_frames)
        return new

    def forces(self, active: FilterState, it: int) -> tuple[FilterState, list, list[bool], list[bool]]:
        """Evaluate ``active`` at iteration ``it`` and find who leaves.

        Returns
        -------
        tuple
            The evaluated state with its generalised forces, each member's failure reason (or ``None``), whether it
            converged and whether it is done (converged, out of steps or failed).
        """
        active = evaluate(active, self.potential)
        if self.symmetrizer is not None:
            active = self.symmetrizer(active)
        every = self.check_distance_every
        energy, stress, forces = active.energy, active.stress, active.forces
        assert energy is not None and stress is not None and forces is not None  # set by evaluate
        reasons = failure_reasons(
            active, torch.isfinite(energy) & torch.isfinite(stress).flatten(1).all(1),
            torch.isfinite(forces).all(1),
            bool(every) and it % every == 0 and (it > 0 or self.graph_distances))
        failing = [b for b, r in enumerate(reasons) if r is not None]
        ok = torch.ones(active.n_systems, dtype=torch.bool, device=active.device)
        if failing:
            ok[torch.tensor(failing, device=active.device)] = False
        active = filter_forces(active)
        assert active.residual is not None  # set by filter_forces
        residual = torch.where(ok, active.residual, torch.full_like(active.residual, math.inf))
        converged = residual < active.fmax
        done = converged | (active.n_steps >= active.max_steps) | ~ok
        if self.recorders:
            _record(active, self.recorders, reasons)
        converged_l, done_l = torch.stack([converged, done]).tolist()
        return active, reasons, converged_l, done_l

    def document(self, i: int, b: int, view: HostView, reason: str | None, *, converged: list[bool]) -> RelaxResult:
        """Write the document of input ``i``, member ``b`` of the batch, which leaves it now."""
        res = self._blank(i, self.inputs[i])
        step, fmax_now = int(view.values("n_steps")[b]), view.values("residual")[b]
        res.n_steps = step
        res.data = {"engine": f"batched-{self.method.name}", "final_fmax": float(fmax_now)}
        if reason is not None:
            res.error = f"structure {self.labels[i]!r}: {reason}"
        else:
            cells, positions, stresses = view.array("cell"), view.atoms("positions", b), view.array("stress")
            assert cells is not None and positions is not None and stresses is not None  # an evaluated FIRE state
            res.set_final(self.tables[i].at(cells[b], positions), view.values("energy")[b], view.atoms("forces", b),
                          stresses[b], view.atoms("magmoms", b))
            res.converged = bool(converged[b])
            if not res.converged:
                res.error = f"structure {self.labels[i]!r}: not converged to fmax={self.fmax} in {self.max_steps} steps"
        rec = self.recorders.pop(i, None)
        if rec is not None:
            if reason is None:
                cells = view.array("cell")
                assert cells is not None  # every state has its cells
                rec.add(step, view.values("energy")[b], fmax_now, view.atoms("positions", b), cells[b], final=True)
            res.trajectory = rec.as_dict()
        self.tables.pop(i, None)
        if self.symmetrizer is not None:
            self.symmetrizer.remove(i)
        return res

    def _blank(self, i: int, s) -> RelaxResult:
        formula = s.composition.reduced_formula if isinstance(s, Structure) and len(s) else ""
        table = self.tables.get(i)
        init = table.initial() if table is not None else initial_dict(s)
        label = self.labels[i]
        assert label is not None  # validated() names every input it sees, also those that fail
        return RelaxResult(label=label, formula=formula, initial_structure=init)


def _record(active: FilterState, recorders: dict, reasons: list) -> None:
    """A frame of every structure whose trajectory is due at its current step (one host copy for all of them)."""
    ids, steps = active.ids.tolist(), active.n_steps.tolist()
    due = [b for b, (i, st) in enumerate(zip(ids, steps, strict=True))
           if reasons[b] is None and i in recorders and recorders[i].due(st)]
    if not due:
        return
    counts = active.n_atoms.tolist()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    assert active.energy is not None and active.residual is not None  # evaluated, with its generalised forces
    e, res = active.energy.tolist(), active.residual.tolist()
    pos, cell = active.positions.detach().cpu().numpy(), active.cell.detach().cpu().numpy()
    for b in due:
        lo = starts[b]
        recorders[ids[b]].add(steps[b], e[b], res[b], pos[lo:lo + counts[b]], cell[b])


__all__ = ["BYTES_PER_ATOM", "AtomBudget", "relax_batched"]
