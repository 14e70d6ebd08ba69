"""Batched relaxation with in-flight refill and per-structure failure isolation.

:func:`relax_batched` keeps one :class:`~matfunnel.engine.fire.FireState` on the potential's device.
Every iteration evaluates all structures in it with one ``potential.evaluate`` call, retires the ones
that converged, ran out of steps or blew up (NaN, forces above 1e3 eV/A, atoms closer than 0.5 A,
an error from the potential), moves the others one FIRE step, and fills the freed room with queued
structures, so the device stays full until the queue is empty. How many atoms fit is decided by
:class:`AtomBudget` (the potential's own ``plan_batches`` when it has one).

Results are :class:`~matfunnel.engine.ase_relax.RelaxResult` documents, identical in format to the
ASE path; ``on_result(index, result)`` fires as soon as a structure leaves the batch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import torch
from pymatgen.core import Structure

from matfunnel.engine.ase_relax import RelaxResult
from matfunnel.engine.documents import SiteTable, initial_dict
from matfunnel.engine.fire import FireConfig, FireState, fire_forces, fire_init, fire_update
from matfunnel.engine.inputs import check_relax_settings, labels_for
from matfunnel.engine.state import concat, evaluate, failure_reasons, from_structures, movable_mask, select
from matfunnel.engine.symmetry import Symmetrizer, symmetrized
from matfunnel.engine.trajectory import Frames
from matfunnel.potential import Potential, StructureError
from matfunnel.potential.validate import structure_label, to_structure as as_structure, \
    validate_structure

#: rough peak memory per atom of a GNN potential step with forces and stress (bytes), used only when
#: the potential gives no budget of its own
BYTES_PER_ATOM = 256 * 1024


class AtomBudget:
    """How many structures may share one evaluation.

    Uses, in order: the potential's ``plan_batches(n_atoms, volumes)`` (a set fits when it plans a
    single batch for it); an explicit ``max_atoms`` (or the potential's ``max_atoms``); otherwise an
    atom count from free device memory (``BYTES_PER_ATOM`` per atom, at most 20k atoms on GPU and 4k
    on CPU). A structure that alone exceeds the budget still runs, alone.
    """

    def __init__(self, potential: Potential, max_atoms: int | None = None):
        self.plan = None if max_atoms is not None else getattr(potential, "plan_batches", None)
        self.max_atoms = max_atoms or getattr(potential, "max_atoms", None) or self._from_memory(potential.device)
        est, too_big = getattr(potential, "work_estimate", None), getattr(potential, "too_big", None)
        #: per-structure (atoms, edges, angles) sums against the potential's budgets: a refill costs O(1) per
        #: structure instead of re-planning the whole batch for every candidate
        self._additive = (est, too_big) if (max_atoms is None and est is not None and too_big is not None) else None
        self._cost: dict = {}

    @staticmethod
    def _from_memory(device) -> int:
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(dev)
            return int(max(64, min(20_000, 0.7 * free / BYTES_PER_ATOM)))
        try:
            import psutil

            free = psutil.virtual_memory().available
        except ImportError:  # pragma: no cover
            free = 8 * 1024**3
        return int(max(64, min(4_000, 0.3 * free / BYTES_PER_ATOM)))

    def register(self, key, n_atoms: int, volume: float) -> None:
        """Remember structure ``key``'s size for :meth:`tally` / :meth:`add`."""
        if self._additive is not None:
            edges, angles = self._additive[0](n_atoms, volume)
            self._cost[key] = (n_atoms, edges, angles)
        else:
            self._cost[key] = (n_atoms, volume)

    def tally(self, keys: Sequence) -> list:
        """The running total of the registered structures ``keys`` (the batch as it is)."""
        if self._additive is not None:
            # one pass over the batch and one numpy sum (not three Python sums)
            total = np.asarray([self._cost[k] for k in keys], dtype=float).reshape(-1, 3).sum(0)
            return [float(v) for v in total] + [len(keys)]
        return list(keys)

    def add(self, tally: list, key) -> bool:
        """Add ``key`` to ``tally`` if the batch still fits with it (a lone structure always fits)."""
        if self._additive is not None:
            c = self._cost[key]
            new = [tally[0] + c[0], tally[1] + c[1], tally[2] + c[2]]
            if tally[3] and self._additive[1](int(new[0]), new[1], new[2]):
                return False
            tally[:] = new + [tally[3] + 1]
            return True
        keys = tally + [key]
        if not self.fits([self._cost[k][0] for k in keys], [self._cost[k][1] for k in keys]):
            return False
        tally.append(key)
        return True

    def fits(self, n_atoms: Sequence[int], volumes: Sequence[float]) -> bool:
        if len(n_atoms) <= 1:
            return True
        if self.plan is not None:
            return len(self.plan(list(n_atoms), list(volumes))) == 1
        return sum(n_atoms) <= self.max_atoms


def _structure_doc(res: RelaxResult, final: dict, e: float, forces, stress, magmoms) -> None:
    res.final_structure = final
    res.energy = float(e)
    res.e_per_atom = float(e) / len(final["sites"])
    res.forces = np.asarray(forces, dtype=float).tolist()
    res.stress = np.asarray(stress, dtype=float).tolist()
    m = None if magmoms is None else np.asarray(magmoms, dtype=float)
    res.magmoms = None if m is None or not np.all(np.isfinite(m)) else m.tolist()


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
    config: FireConfig = FireConfig(),
    max_atoms: int | None = None,
    check_distance_every: int = 1,
    progress: bool = False,
    on_result: Callable[[int, RelaxResult], None] | None = None,
    trajectory_every: int = 0,
    max_frames: int = 100,
) -> list[RelaxResult]:
    """Relax every structure (FIRE + Frechet cell filter, ASE semantics) in refilled batches.

    Arguments mirror :func:`matfunnel.engine.relax_structures` plus: ``symmetry`` keeps each
    structure's space group (spglib, ``symprec``); ``scalar_pressure`` GPa; ``max_atoms`` overrides
    the batch budget; ``check_distance_every`` steps between minimum-distance checks. Returns one
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
    labels = labels_for(labels, n)
    check_relax_settings(fmax, max_steps)
    if trajectory_every < 0 or max_frames < 2:
        raise ValueError(f"trajectory_every must be >= 0 and max_frames >= 2, got {trajectory_every}, {max_frames}")
    recorders: dict[int, Frames] = {}
    results: list[RelaxResult | None] = [None] * n
    inputs: list[Structure | None] = [None] * n
    #: the document parts of each validated input that do not change with the geometry (while it is in a batch)
    tables: dict[int, SiteTable] = {}
    sym_start: dict[int, Structure] = {}  # symmetry mode: the symmetrised starting structures of queued inputs
    entered: dict[int, float] = {}
    dev = potential.device
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="relax", unit="struct")
    # a potential that measures the minimum distance on its own graph reports it with every evaluation, so the
    # first step checks it (free) instead of an all-pairs distance matrix per structure up front
    graph_distances = bool(getattr(potential, "distances_on_graph", False)) and bool(check_distance_every)

    def finish(i: int, res: RelaxResult) -> None:
        res.wall_time = time.perf_counter() - entered.get(i, time.perf_counter())
        results[i] = res
        if on_result is not None:
            on_result(i, res)
        if bar is not None:
            bar.update(1)

    def blank(i: int, s) -> RelaxResult:
        formula = s.composition.reduced_formula if isinstance(s, Structure) and len(s) else ""
        table = tables.get(i)
        init = table.initial() if table is not None else initial_dict(s)
        return RelaxResult(label=labels[i], formula=formula, initial_structure=init)

    def prepare(i: int):
        """(structure, label, error) of input ``i``."""
        label = labels[i]
        try:
            s = as_structure(structures[i], label or f"structure#{i}")
            label = label or structure_label(s, i)
            validate_structure(s, label, potential.supported_elements, check_distances=not graph_distances)
            return s, label, None
        except StructureError as exc:
            return None, label or f"structure#{i}", str(exc)

    def failed_doc(i: int, error: str) -> RelaxResult:
        res = blank(i, structures[i] if inputs[i] is None else inputs[i])
        res.error = error
        return res

    symmetrizer = Symmetrizer(symprec) if symmetry else None
    queue: deque[int] = deque(range(n))
    ready: set[int] = set()
    budget = AtomBudget(potential, max_atoms)

    def head() -> int | None:
        """The first queued structure, validated and registered with the budget (invalid ones leave first)."""
        while queue:
            i = queue[0]
            if i in ready:
                return i
            s, labels[i], error = prepare(i)
            if error is not None:
                queue.popleft()
                entered[i] = time.perf_counter()
                finish(i, failed_doc(i, error))
                continue
            inputs[i] = s
            tables[i] = SiteTable(s)
            if symmetrizer is not None:  # start from the exact symmetry (ASE's FixSymmetry refines it too)
                sym_start[i] = symmetrized(s, symprec)
                symmetrizer.add(i, sym_start[i])
            budget.register(i, len(s), float(s.volume))
            ready.add(i)
            return i
        return None

    active: FireState | None = None
    it = 0

    def refill(active: FireState | None) -> FireState | None:
        if not queue:
            return active
        tally = budget.tally([] if active is None else active.ids.tolist())
        take = []
        while head() is not None and budget.add(tally, queue[0]):
            take.append(queue.popleft())
        if not take:
            return active
        now = time.perf_counter()
        for k in take:
            entered[k] = now
        entering = [sym_start.pop(k, inputs[k]) for k in take]
        new = fire_init(
            from_structures(entering, dev, ids=take), fmax=fmax, max_steps=max_steps,
            relax_cell=relax_cell, exp_cell_factor=exp_cell_factor, scalar_pressure=scalar_pressure,
            config=config, movable=movable_mask(entering))
        if trajectory_every:
            for k in take:
                recorders[k] = Frames(trajectory_every, max_frames)
        return new if active is None else concat([active, new])

    active = refill(None)
    while active is not None and active.n_systems > 0:
        active = evaluate(active, potential)
        if symmetrizer is not None:
            active = symmetrizer(active)
        reasons = failure_reasons(
            active, torch.isfinite(active.energy) & torch.isfinite(active.stress).flatten(1).all(1),
            torch.isfinite(active.forces).all(1),
            bool(check_distance_every) and it % check_distance_every == 0 and (it > 0 or graph_distances))
        failing = [b for b, r in enumerate(reasons) if r is not None]
        ok = torch.ones(active.n_systems, dtype=torch.bool, device=active.device)
        if failing:
            ok[torch.tensor(failing, device=active.device)] = False
        active = fire_forces(active)
        residual = torch.where(ok, active.residual, torch.full_like(active.residual, math.inf))
        converged = residual < active.fmax
        exhausted = active.n_steps >= active.max_steps
        done = converged | exhausted | ~ok
        if recorders:
            _record(active, recorders, reasons)
        if bool(done.any()):
            conv_l, done_l = converged.tolist(), done.tolist()
            ids, steps = active.ids.tolist(), active.n_steps.tolist()
            counts = active.n_atoms.tolist()
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            e_l = active.energy.tolist()
            res_l = active.residual.tolist()
            # one device -> host copy per quantity for everything that finishes now
            pos_h, cell_h = active.positions.detach().cpu().numpy(), active.cell.detach().cpu().numpy()
            f_h, s_h = active.forces.detach().cpu().numpy(), active.stress.detach().cpu().numpy()
            m_h = None if active.magmoms is None else active.magmoms.detach().cpu().numpy()
            for b in np.nonzero(done_l)[0].tolist():
                i = ids[b]
                res = blank(i, inputs[i])
                res.n_steps = int(steps[b])
                res.data = {"engine": "batched-fire", "final_fmax": float(res_l[b])}
                if active.eval_error and active.eval_error[b] is not None:
                    res.data["potential_error"] = str(active.eval_error[b])
                if reasons[b] is not None:
                    res.error = f"structure {labels[i]!r}: {reasons[b]}"
                else:
                    lo, hi = int(starts[b]), int(starts[b] + counts[b])
                    final = tables[i].at(cell_h[b], pos_h[lo:hi])
                    _structure_doc(res, final, e_l[b], f_h[lo:hi], s_h[b], None if m_h is None else m_h[lo:hi])
                    res.converged = bool(conv_l[b])
                    if not res.converged:
                        res.error = f"structure {labels[i]!r}: not converged to fmax={fmax} in {max_steps} steps"
                rec = recorders.pop(i, None)
                if rec is not None:
                    if reasons[b] is None:
                        lo = int(starts[b])
                        rec.add(int(steps[b]), e_l[b], res_l[b], pos_h[lo:lo + counts[b]], cell_h[b], final=True)
                    res.trajectory = rec.as_dict()
                finish(i, res)
                tables.pop(i, None)
                if symmetrizer is not None:
                    symmetrizer.remove(i)
            active = select(active, ~done) if not bool(done.all()) else None
        if active is not None:
            active = fire_update(active, config)
        active = refill(active)
        it += 1
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]


def _record(active: FireState, recorders: dict, reasons: list) -> None:
    """A frame of every structure whose trajectory is due at its current step (one host copy for all of them)."""
    ids, steps = active.ids.tolist(), active.n_steps.tolist()
    due = [b for b, (i, st) in enumerate(zip(ids, steps))
           if reasons[b] is None and i in recorders and recorders[i].due(st)]
    if not due:
        return
    counts = active.n_atoms.tolist()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    e, res = active.energy.tolist(), active.residual.tolist()
    pos, cell = active.positions.detach().cpu().numpy(), active.cell.detach().cpu().numpy()
    for b in due:
        lo = starts[b]
        recorders[ids[b]].add(steps[b], e[b], res[b], pos[lo:lo + counts[b]], cell[b])


__all__ = ["AtomBudget", "relax_batched"]
