"""The batch a batched engine runs: a queue of inputs, the batched state on the device, the finished documents.

:class:`InFlightBatcher` (after torch-sim's ``InFlightAutoBatcher``) owns the bookkeeping every batched engine
shares, so that an engine's driver loop only says what one step does:

* the queue of pending inputs, validated when the batch reaches them (or all at once, :meth:`~InFlightBatcher.
  prepare_all`); an input that fails validation gets its error document and never enters a batch;
* :meth:`~InFlightBatcher.refill`: queued inputs join the batched state while :class:`AtomBudget` (the
  potential's own budget when it has one) says the batch still fits; ``in_flight=False`` starts a new batch only
  once the last one is empty (fixed groups);
* :meth:`~InFlightBatcher.harvest`: the members that finished (converged, out of steps, failed) leave the state,
  each with its document, so one bad member never stops the others.

What is particular to an engine comes from a :class:`BatchJob`: how an input is validated, what its failure
document is, how entering inputs become a batched state; and, at each harvest, how a member's document is written
from the host copies of the state (:class:`HostView`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
from pymatgen.core import Structure

from matfunnel.common.errors import ResourceError, is_transient
from matfunnel.engine.state import SystemState, concat, select
from matfunnel.potential import Potential, StructureError
from matfunnel.potential.validate import structure_label, validate_structure
from matfunnel.potential.validate import to_structure as as_structure

#: rough peak memory per atom of a GNN potential step with forces and stress (bytes), used only when
#: the potential gives no budget of its own
BYTES_PER_ATOM = 256 * 1024


class AtomBudget:
    """How many structures may share one evaluation.

    Uses, in order: the potential's ``plan_batches(n_atoms, volumes)`` (a set fits when it plans a
    single batch for it); an explicit ``max_atoms`` (or the potential's ``max_atoms``); otherwise an
    atom count from free device memory (``BYTES_PER_ATOM`` per atom, at most 20k atoms on GPU and 4k
    on CPU). A structure that alone exceeds the budget still runs, alone.

    Parameters
    ----------
    potential : Potential
        The potential whose budget (``work_estimate`` / ``too_big``, ``plan_batches``, ``max_atoms``) applies.
    max_atoms : int, optional
        An atom cap that overrides the potential's own budget.
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
        """Return the running total of the registered structures ``keys`` (the batch as it is)."""
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
        """Tell whether structures of these sizes fit one evaluation (a single structure always does)."""
        if len(n_atoms) <= 1:
            return True
        if self.plan is not None:
            return len(self.plan(list(n_atoms), list(volumes))) == 1
        return sum(n_atoms) <= self.max_atoms


def validated(obj, labels: list[str | None], i: int, elements, *, check_distances: bool = True,
              budget: Callable[[int, float], str | None] | None = None) -> Structure:
    """Return input ``i`` as a validated structure.

    Parameters
    ----------
    obj : Structure or ase.Atoms
        The caller's input ``i``.
    labels : list of str or None
        The labels of all inputs; ``labels[i]`` is filled in when missing (also when the input fails).
    i : int
        The input's index.
    elements : iterable of int or None
        The potential's supported atomic numbers.
    check_distances : bool
        Check the minimum interatomic distance here (``False``: the potential reports it on its graph).
    budget : callable, optional
        ``budget(n_atoms, volume)``: why a structure of that size does not fit the potential's memory budget, or
        None (the potential's ``budget_problem``).

    Returns
    -------
    Structure
        The input as a pymatgen structure.

    Raises
    ------
    StructureError
        The input cannot be evaluated; the message names ``labels[i]`` (a :class:`ResourceError` when it is too
        large for the memory budget: a rerun with more memory may pass).
    """
    try:
        s = as_structure(obj, labels[i] or f"structure#{i}")
        label = labels[i] or structure_label(s, i)
        labels[i] = label
        validate_structure(s, label, elements, check_distances=check_distances)
    except StructureError:
        labels[i] = labels[i] or f"structure#{i}"
        raise
    except Exception as exc:  # noqa: BLE001 - an input nothing could read: its own error, never the batch's
        name = labels[i] or f"structure#{i}"
        labels[i] = name
        raise StructureError(name, f"cannot be read as a structure ({type(exc).__name__})") from exc
    problem = budget(len(s), abs(float(s.lattice.volume))) if budget is not None else None
    if problem is not None:
        raise ResourceError(label, problem)
    return s


class HostView:
    """Host copies of a batched state's fields, each made once, when first asked for.

    Parameters
    ----------
    state : SystemState
        The batched state (any :class:`~matfunnel.engine.state.SystemState` subclass).
    """

    def __init__(self, state: SystemState):
        self.state = state
        self._lists: dict[str, list] = {}
        self._arrays: dict[str, np.ndarray | None] = {}

    @cached_property
    def ids(self) -> list[int]:
        """Each member's index in the caller's inputs."""
        return self.values("ids")

    @cached_property
    def counts(self) -> list[int]:
        """Atoms per member."""
        return self.state.n_atoms.tolist()

    @cached_property
    def starts(self) -> np.ndarray:
        """(B + 1,) offsets of each member's atoms in the per-atom arrays."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(int)

    def values(self, name: str) -> list:
        """Return field ``name`` as a Python list (one device to host copy)."""
        if name not in self._lists:
            self._lists[name] = getattr(self.state, name).tolist()
        return self._lists[name]

    def array(self, name: str) -> np.ndarray | None:
        """Return field ``name`` as a numpy array, ``None`` when the state does not have it."""
        if name not in self._arrays:
            t = getattr(self.state, name)
            self._arrays[name] = None if t is None else t.detach().cpu().numpy()
        return self._arrays[name]

    def atoms(self, name: str, b: int) -> np.ndarray | None:
        """Return member ``b``'s rows of the per-atom field ``name`` (``None`` when the state does not have it)."""
        a = self.array(name)
        return None if a is None else a[self.starts[b]:self.starts[b + 1]]


class BatchJob[S: SystemState](Protocol):
    """What an engine tells :class:`InFlightBatcher` about its inputs."""

    def prepare(self, i: int) -> Structure:
        """Return input ``i``, validated and kept for :meth:`start`; raise ``StructureError`` when it cannot run."""

    def failed(self, i: int, error: str) -> Any:
        """Return the document of input ``i``, which failed validation with ``error``."""

    def start(self, take: list[int]) -> S:
        """Build the batched state of the prepared inputs ``take``, ready to join the batch."""


#: ``document(i, b, view, reason)``: the document of input ``i``, member ``b`` of ``view.state``, which failed with
#: ``reason`` (``None``: it finished)
Document = Callable[[int, int, HostView, "str | None"], Any]


class InFlightBatcher[S: SystemState]:
    """A queue of inputs fed into one batched state and the documents of those that left it.

    Parameters
    ----------
    job : BatchJob
        Validation, failure documents and state construction of the engine.
    n : int
        Number of inputs (indices ``0 .. n-1``, queued in order).
    budget : AtomBudget
        How many structures share one evaluation.
    in_flight : bool
        Refill the batch as members leave (``False``: a new batch only once the last one is empty).
    on_result : callable, optional
        ``on_result(i, document)``, called as soon as input ``i`` is finished.
    progress : str, optional
        Show a progress bar with this description.
    """

    def __init__(self, job: BatchJob[S], n: int, budget: AtomBudget, *, in_flight: bool = True,
                 on_result: Callable[[int, Any], None] | None = None, progress: str | None = None):
        self.job, self.budget, self.in_flight, self.on_result = job, budget, in_flight, on_result
        self.queue: deque[int] = deque(range(n))
        self.ready: set[int] = set()  # queued inputs already prepared and registered with the budget
        self.entered: dict[int, float] = {}
        self.results: list = [None] * n
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=n, desc=progress, unit="struct")

    def prepare_all(self) -> None:
        """Validate every queued input now: failures are finished before any batch starts."""
        self.queue = deque(i for i in self.queue if self._admit(i))

    def refill(self, state: S | None) -> S | None:
        """Queued inputs join ``state`` while the budget allows.

        Parameters
        ----------
        state : SystemState or None
            The running batch (``None``: empty).

        Returns
        -------
        SystemState or None
            The batch with the entering inputs appended (``None`` when it is empty and nothing is queued).
        """
        if not self.queue or (state is not None and not self.in_flight):
            return state
        tally = self.budget.tally([] if state is None else state.ids.tolist())
        take = []
        while self._head() is not None and self.budget.add(tally, self.queue[0]):
            take.append(self.queue.popleft())
            self.ready.discard(take[-1])
        if not take:
            return state
        now = time.perf_counter()
        for k in take:
            self.entered[k] = now
        new = self.job.start(take)
        return new if state is None else concat([state, new])

    def harvest(self, state: S, done: Sequence[bool], reasons: Sequence[str | None],
                document: Document) -> S | None:
        """Let the members ``done`` leave ``state``, each with its document.

        Parameters
        ----------
        state : SystemState
            The running batch.
        done : sequence of bool
            Per member: it leaves now (converged, out of steps or failed).
        reasons : sequence of str or None
            Per member: why it failed (``None``: it did not).
        document : callable
            ``document(i, b, view, reason)`` writes the document of input ``i``, member ``b``. A failure of the
            potential itself is marked in the document's ``data["potential_error"]`` here.

        Returns
        -------
        SystemState or None
            The members that go on (``None`` when none do).
        """
        if not any(done):
            return state
        view = HostView(state)
        for b in [k for k, d in enumerate(done) if d]:
            i = view.ids[b]
            res = document(i, b, view, reasons[b])
            # a failure of the potential (memory, device, an exception) may pass on a retry: not to be kept; a
            # rejection of the structure's geometry or elements is final and is kept like any result
            if state.eval_error and is_transient(state.eval_error[b]):
                res.data["potential_error"] = str(state.eval_error[b])
            self._finish(i, res)
        if all(done):
            return None
        return select(state, torch.tensor([not d for d in done], device=state.device))

    def close(self) -> list:
        """Return the documents of all inputs, in input order (and close the progress bar)."""
        if self.bar is not None:
            self.bar.close()
        return self.results

    def _head(self) -> int | None:
        """Return the first queued input, prepared (inputs that fail validation leave the queue first)."""
        while self.queue:
            i = self.queue[0]
            if i in self.ready or self._admit(i):
                return i
            self.queue.popleft()
        return None

    def _admit(self, i: int) -> bool:
        """Prepare input ``i`` and register it with the budget; ``False`` (and its document) when it fails."""
        try:
            s = self.job.prepare(i)
        except StructureError as exc:
            self.entered[i] = time.perf_counter()
            res = self.job.failed(i, str(exc))
            if isinstance(exc, ResourceError):  # too large for this machine's budget: a rerun elsewhere may pass
                res.data["potential_error"] = str(exc)
            self._finish(i, res)
            return False
        self.budget.register(i, len(s), float(s.volume))
        self.ready.add(i)
        return True

    def _finish(self, i: int, res) -> None:
        res.wall_time = time.perf_counter() - self.entered.get(i, time.perf_counter())
        self.results[i] = res
        if self.on_result is not None:
            self.on_result(i, res)
        if self.bar is not None:
            self.bar.update(1)


__all__ = ["AtomBudget", "BatchJob", "HostView", "InFlightBatcher", "validated"]
