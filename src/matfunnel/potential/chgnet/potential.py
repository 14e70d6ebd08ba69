"""``chgnet-0.3.0``: matfunnel's own batched CHGNet with the official 0.3.0 weights."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time

import numpy as np
import torch
from pymatgen.core import Structure
from torch import Tensor

from matfunnel.common.errors import ResourceError, StructureError
from matfunnel.common.geometry import MAX_DENSITY
from matfunnel.potential import calibration
from matfunnel.potential.allocator import keep_freed_memory
from matfunnel.potential.base import Evaluation, Potential
from matfunnel.potential.batching import ItemBudget
from matfunnel.potential.chgnet import cpu_ops, triton_ops
from matfunnel.potential.chgnet.graph import GraphTooLarge, build_graph
from matfunnel.potential.chgnet.weights import load_checkpoint
from matfunnel.potential.failures import is_memory_failure, out_of_memory
from matfunnel.potential.validate import MIN_DISTANCE, site_numbers

#: measured peak memory of one forward + backward (forces and stress), bytes per work item (a directed
#: edge or an angle), float32; see benchmarks/NOTES.md ("Memory")
BYTES_PER_ITEM = 16_000
#: the same with the fused CPU kernels (float32 on the CPU): measured 7.9-8.0 kB on rocksalt cells of 864 and
#: 2048 atoms (13.6 kB on the pure-torch path), with a margin
BYTES_PER_ITEM_FUSED = 9_000
#: what stays allocated per item when the edge/angle work is chunked (features, weights, indices, grads)
BYTES_PER_ITEM_CHUNKED = 7_000
#: float32 on CUDA with the Triton kernels: measured 6.1-6.2 kB (peak allocated above the baseline; relax-like
#: batch of 100 structures and rocksalt cells of 2048 and 6912 atoms, H100), with a margin
BYTES_PER_ITEM_GPU = 7_000
MIN_CHUNK = 10_000
MAX_CHUNKS = 8
#: a batch is chunked only when its actual size exceeds the item budget by this factor: batches are packed by
#: estimated sizes (a few % off for dense or rattled cells) and chunking recomputes every chunk's forward in
#: the backward, so a batch 2% over its budget must not pay that (the budget itself is a soft 1/8 of the RAM
#: or 1/2 of the free GPU memory)
CHUNK_SLACK = 1.25


@contextlib.contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _OtherLoad:
    """CPU cores used by other processes, from /proc/stat less this process's own CPU time.

    Measured over the time since the previous reading (at least ``min_window`` seconds; the first reading
    waits ``min_window``). The 1-minute load average is no good here: it counts this process's own recent
    threads (e.g. a reference model run just before) as somebody else's.
    """

    def __init__(self, min_window: float = 0.05):
        self.min_window = min_window
        self.last: tuple[float, float, float] | None = None
        self.value = 0.0

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy = (sum(fields[:8]) - idle) / tick
        t = os.times()
        return time.monotonic(), busy, t.user + t.system

    def cores(self) -> float:
        try:
            now = self._sample()
            if self.last is None:
                self.last = now
                time.sleep(self.min_window)
                now = self._sample()
            dt = now[0] - self.last[0]
            if dt >= self.min_window:
                others = (now[1] - self.last[1]) - (now[2] - self.last[2])
                self.value = max(0.0, others / dt)
                self.last = now
        except (OSError, ValueError, IndexError):  # no /proc: fall back to the load average
            try:
                return max(0.0, os.getloadavg()[0] - 1.0)
            except OSError:
                return 0.0
        return self.value


_OTHER_LOAD = _OtherLoad()


def auto_threads(max_threads: int | None = None) -> int:
    """Intra-op threads for the CPU given the other load on the machine.

    torch's OpenMP threads wait for each other at the end of every operation; when another process
    holds a core, the thread that shares it stalls every operation (measured on 2 cores with one busy
    neighbour: 4-7x slower with 2 threads than with 1). So only as many threads as there are cores not
    used by other processes (:class:`_OtherLoad`) are used.
    """
    n = max_threads or torch.get_num_threads()
    free = (os.cpu_count() or n) - _OTHER_LOAD.cores()
    return max(1, min(n, int(free + 0.5)))


_PER_ATOM = ("forces", "magmoms")
#: the tensor-level ``evaluate`` (the engine's step, after its inputs were admitted against the budget) refuses
#: only a graph this many times over the single-structure budget: a runaway (a cell squeezed or clustered during
#: a run), not a structure the chunked path can still carry
RUNAWAY = 2
#: how a refusal over the memory budget starts (a resource limit: retryable on a larger machine)
_OVER_BUDGET = "too large for the memory budget:"


def _rows(counts: list[int], structures: list[int], dev) -> Tensor:
    """Atom rows of the given structures (in that order) in a concatenation with ``counts`` atoms each."""
    starts = np.concatenate([[0], np.cumsum(counts)])
    if structures == list(range(len(counts))):
        return torch.arange(int(starts[-1]), device=dev)
    idx = np.concatenate([np.arange(starts[b], starts[b + 1]) for b in structures]) if structures else np.zeros(0)
    return torch.from_numpy(idx.astype(np.int64)).to(dev)


class ChgnetPotential(calibration.MemoryCalibrated, ItemBudget, Potential):
    """Batched CHGNet; numbers match ``chgnet-reference`` (float32 default, float64 selectable).

    Structures are packed into batches by an estimate of their work items (directed edges + angles)
    against a memory budget (``memory_budget`` bytes; ``BYTES_PER_ITEM`` each), or by explicit
    ``max_atoms`` / ``max_edges`` (directed) / ``max_angles`` per batch. A structure too big for one batch
    runs alone with the edge/angle work split into chunks of ``chunk`` items whose activations are
    recomputed during the backward pass, so memory stays bounded for 10k-atom cells.

    ``keep_memory`` (default: on the CPU) keeps freed memory mapped in the process so that the next batch does
    not page-fault it back in (:mod:`matfunnel.potential.allocator`; process-wide).

    ``threads``: ``"auto"`` (default) picks the CPU thread count from the machine's load for every call
    (see :func:`auto_threads`), an int fixes it, ``None`` leaves torch's setting alone.

    ``calibrate``: the bytes per item come from a measurement on this device, made once and cached
    (:meth:`calibrate`; default); ``True`` measures again, ``False`` keeps the built-in estimate.
    """

    name = "chgnet-0.3.0"
    min_items = MIN_CHUNK

    def __init__(
        self,
        device: str = "cpu",
        *,
        version: str = "0.3.0",
        dtype: torch.dtype | str = torch.float32,
        checkpoint: str | None = None,
        memory_budget: int | None = None,
        max_atoms: int | None = None,
        max_edges: int | None = None,
        max_angles: int | None = None,
        chunk: int | None = None,
        threads: int | str | None = "auto",
        keep_memory: bool | None = None,
        calibrate: bool | None = None,
    ):
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        self.device = device
        self.dtype = dtype
        self.model = load_checkpoint(checkpoint, version=version).to(device=device, dtype=dtype)
        self.supported_elements = frozenset(range(1, self.model.cfg.max_num_elements + 1))
        self.graph_cutoffs = (self.model.cfg.atom_graph_cutoff, self.model.cfg.bond_graph_cutoff)
        gpu = str(device).startswith("cuda")
        self.memory_budget = int(memory_budget or calibration.default_budget(device))
        fused = not gpu and dtype == torch.float32 and cpu_ops.available(device)
        triton_path = gpu and dtype == torch.float32 and triton_ops.available()
        self.code_path = "fused" if fused else "triton" if triton_path else "torch"
        #: bytes one directed edge or angle costs in a forward + backward pass (the memory model): measured on
        #: this device by :meth:`calibrate`, else the figures measured in benchmarks/NOTES.md
        self.bytes_per_item = (BYTES_PER_ITEM_FUSED if fused else BYTES_PER_ITEM_GPU if triton_path
                               else BYTES_PER_ITEM * (2 if dtype == torch.float64 else 1))
        self._max_atoms = max_atoms
        self.max_edges = max_edges
        self.max_angles = max_angles
        self.chunk = chunk
        self.threads = threads if not gpu else None
        if keep_memory if keep_memory is not None else not gpu:
            keep_freed_memory()
        #: the calibration record in use (None: the built-in estimate)
        self.calibration: dict | None = None
        self._set_budget()
        if calibrate is not False:
            self.calibrate(force=bool(calibrate))

    def probe_spec(self):
        """How the CPU memory probe's child process builds this potential (see :mod:`..memprobe`)."""
        from matfunnel.potential.memprobe import ProbeSpec

        return ProbeSpec(f"{__name__}:_probe_potential", {"dtype": str(self.dtype).split(".")[-1]})

    def memory_probe(self, cell) -> int:
        """One unchunked forward + backward of ``cell``; returns its work items (directed edges + angles)."""
        g = build_graph(*self._arrays([cell]))
        out = self.model(g)
        out["forces"].sum().item()
        return 2 * g.n_edges + g.n_angles

    # ---- batching --------------------------------------------------------------------------
    def chunk_for(self, n_edges: int, n_angles: int) -> int | None:
        """Chunk size (items) for ``n_edges`` directed edges and ``n_angles`` angles; None when it fits unchunked.

        Chunked, what stays allocated is about ``BYTES_PER_ITEM_CHUNKED`` per item and one chunk costs
        ``self.bytes_per_item`` per item; the chunk takes what is left of the budget (at least ``MIN_CHUNK``
        items, and at most ``MAX_CHUNKS`` chunks: each chunk's backward also writes full-size gradients
        of the per-atom and per-bond projections, so many small chunks cost time for little memory).
        """
        n_items = n_edges + n_angles
        if self.chunk is not None:
            return self.chunk if self.too_big(0, n_edges, n_angles) else None
        if n_items <= self.max_items * CHUNK_SLACK:
            return None
        scale = 2 if self.dtype == torch.float64 else 1
        left = self.memory_budget - n_items * BYTES_PER_ITEM_CHUNKED * scale
        # every chunk also costs a pass over the full per-atom / per-bond gradients: at most MAX_CHUNKS
        return max(MIN_CHUNK, -(-n_items // MAX_CHUNKS), int(left // self.bytes_per_item))

    def retained_bytes_per_item(self) -> float:
        """Bytes per item a lone structure needs at least: what stays allocated when its work is chunked."""
        return float(BYTES_PER_ITEM_CHUNKED * (2 if self.dtype == torch.float64 else 1))

    def single_item_limit(self) -> int:
        """Work items (directed edges + angles) of the largest structure the memory budget allows."""
        return int(self.memory_budget // self.retained_bytes_per_item())

    @contextlib.contextmanager
    def _thread_setting(self):
        if self.threads is None:
            yield
            return
        before = torch.get_num_threads()
        want = auto_threads(before) if self.threads == "auto" else int(self.threads)
        if want == before:
            yield
            return
        torch.set_num_threads(want)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # ---- structures ----------------------------------------------------------------------
    #: predict() checks the minimum interatomic distance on the graph it builds anyway (one device reduction)
    #: instead of a pymatgen neighbour list per structure (which cost more than the model on a GPU)
    distances_on_graph = True

    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        n_atoms = [len(s) for s in structures]
        volumes = [abs(float(np.linalg.det(s.lattice.matrix))) for s in structures]
        results: list[dict | None] = [None] * len(structures)
        with self._thread_setting():
            for idx in self.plan_batches(n_atoms, volumes):
                self._predict_batch(structures, labels, idx, errors, results)
        return results  # type: ignore[return-value]

    def _predict_batch(self, structures: list[Structure], labels: list[str], idx: list[int], errors: str,
                       results: list[dict | None]) -> None:
        """Results of the structures ``idx`` into ``results``; a batch out of memory is split until it fits."""
        try:
            out, errs = self._run(*self._arrays([structures[k] for k in idx]), compute_stress=True,
                                  check_distances=True, item_limit=self.single_item_limit())
        except Exception as exc:  # noqa: BLE001 - only allocation failures are handled; others re-raised
            if not is_memory_failure(exc):
                raise
            del exc  # its traceback holds the failed pass's tensors
            gc.collect()
            if len(idx) == 1:
                oom = ResourceError(labels[idx[0]], out_of_memory(len(structures[idx[0]]), MemoryError()))
                if errors == "raise":
                    raise oom from None
                results[idx[0]] = {"error": str(oom)}
                return
            half = len(idx) // 2
            self._predict_batch(structures, labels, idx[:half], errors, results)
            self._predict_batch(structures, labels, idx[half:], errors, results)
            return
        # one device -> host copy per output for the whole batch
        host = {q: v.detach().double().cpu().numpy() for q, v in out.items()}
        starts = np.concatenate([[0], np.cumsum([len(structures[k]) for k in idx])])
        for b, j in enumerate(idx):
            err = errs[b]
            if err is not None:
                results[j] = self._fail(labels[j], err, errors)
                continue
            lo, hi = starts[b], starts[b + 1]
            res = {"energy": float(host["energy"][b]), "forces": host["forces"][lo:hi],
                   "magmoms": host["magmoms"][lo:hi], "stress": host["stress"][b]}
            if not (np.isfinite(res["energy"]) and np.all(np.isfinite(res["forces"]))
                    and np.all(np.isfinite(res["stress"]))):
                res = self._fail(labels[j], "the potential returned NaN/inf", errors)
            results[j] = res

    def _arrays(self, structs: list[Structure]):
        frac = torch.from_numpy(np.concatenate([s.frac_coords for s in structs]))
        lat = torch.from_numpy(np.stack([s.lattice.matrix for s in structs]))
        z = torch.from_numpy(np.concatenate([site_numbers(s) for s in structs]))  # validated: ordered sites
        n = torch.tensor([len(s) for s in structs], dtype=torch.long)
        dev = self.device
        return frac.to(dev), lat.to(dev), z.to(dev), n.to(dev)

    def _fail(self, label: str, problem: str, errors: str) -> dict:
        err = ResourceError(label, problem) if problem.startswith(_OVER_BUDGET) else StructureError(label, problem)
        if errors == "raise":
            raise err
        return {"error": str(err)}

    # ---- the engine ------------------------------------------------------------------------
    def _run(self, frac, lat, z, n, *, compute_stress: bool, check_distances: bool = False,
             item_limit: int | None = None) -> tuple[dict[str, Tensor], list[str | None]]:
        """Run one batch (tensors, any device).

        Returns the outputs over the whole batch and one error message (or None) per structure; rows of failed
        structures are NaN. Structures with an atom that has no neighbour (or, with ``check_distances``, two
        atoms closer than ``MIN_DISTANCE``) are reported and the rest are run again.
        """
        cfg = self.model.cfg
        dev = self.device
        frac, lat, z, n = frac.to(dev), lat.to(dev), z.to(dev), n.to(device=dev, dtype=torch.long)
        counts = n.tolist()
        n_struct = len(counts)
        try:
            graph = build_graph(frac, lat, z, n, cutoff=cfg.atom_graph_cutoff, bond_cutoff=cfg.bond_graph_cutoff,
                                max_items=item_limit or RUNAWAY * self.single_item_limit())
        except GraphTooLarge as exc:  # counted before the angles exist: refuse those structures, run the others
            errs0: list[str | None] = [
                None if k < 0 else f"{_OVER_BUDGET} {k:,} graph items, which need about "
                f"{k * self.retained_bytes_per_item() / 2**30:.1f} GiB against the memory budget of "
                f"{self.memory_budget / 2**30:.1f} GiB" for k in exc.items]
            return self._without(errs0, frac, lat, z, n, counts, compute_stress, item_limit)
        deg = graph.degree()
        isolated = torch.zeros(n_struct, dtype=torch.float64, device=deg.device).index_add_(
            0, graph.batch, (deg == 0).to(torch.float64))
        dmin = torch.full((n_struct,), math.inf, dtype=torch.float64, device=deg.device).scatter_reduce_(
            0, graph.batch.index_select(0, graph.src), graph.length, "amin")
        if check_distances:
            iso_l, dmin_l = torch.stack([isolated, dmin]).tolist()  # one synchronisation
        else:
            iso_l, dmin_l = isolated.tolist(), [math.inf] * n_struct
        errs: list[str | None] = [None] * n_struct
        for k in range(n_struct):
            if iso_l[k]:
                errs[k] = f"{int(iso_l[k])} atom(s) have no neighbour within {cfg.atom_graph_cutoff} A"
            elif dmin_l[k] < MIN_DISTANCE:
                errs[k] = f"atoms closer than {MIN_DISTANCE} A (minimum distance {dmin_l[k]:.3f} A)"
        if any(e is not None for e in errs):
            return self._without(errs, frac, lat, z, n, counts, compute_stress, item_limit)
        chunk = self.chunk_for(2 * graph.n_edges, graph.n_angles)
        with _gc_paused():  # the autograd graph's many small objects otherwise trigger collections mid-pass
            out = self.model(graph, compute_stress=compute_stress, chunk=chunk)
        keys = ("energy", "forces", "magmoms") + (("stress",) if compute_stress else ())
        res = {q: out[q] for q in keys}
        res["min_distance"] = dmin
        return res, errs

    def _without(self, errs: list[str | None], frac, lat, z, n, counts: list[int], compute_stress: bool,
                 item_limit: int | None) -> tuple[dict[str, Tensor], list[str | None]]:
        """Outputs of a batch whose structures with an error in ``errs`` are left out (NaN rows) and the rest run."""
        dev = self.device
        keep = [k for k, e in enumerate(errs) if e is None]
        out = self._nan_outputs(len(counts), int(sum(counts)), compute_stress, dev)
        errs = list(errs)
        if keep:
            rows = _rows(counts, keep, dev)
            sub, sub_errs = self._run(frac[rows], lat[keep], z[rows], n[keep], compute_stress=compute_stress,
                                      item_limit=item_limit)
            keep_t = torch.as_tensor(keep, device=dev)
            for q, v in sub.items():
                out[q].index_copy_(0, rows if q in _PER_ATOM else keep_t, v.to(out[q].dtype))
            for k, e in zip(keep, sub_errs, strict=True):
                errs[k] = e
        return out, errs

    def _nan_outputs(self, n_struct: int, n_total: int, compute_stress: bool, dev) -> dict[str, Tensor]:
        # energies are float64 in every dtype (the model sums site energies in float64)
        out = {"energy": torch.full((n_struct,), math.nan, dtype=torch.float64, device=dev),
               "forces": torch.full((n_total, 3), math.nan, dtype=self.dtype, device=dev),
               "magmoms": torch.full((n_total,), math.nan, dtype=self.dtype, device=dev),
               "min_distance": torch.full((n_struct,), math.nan, dtype=torch.float64, device=dev)}
        if compute_stress:
            out["stress"] = torch.full((n_struct, 3, 3), math.nan, dtype=self.dtype, device=dev)
        return out

    def evaluate(self, numbers, positions, cells, n_atoms, *, compute_stress: bool = True) -> Evaluation:
        """Energy (B,) eV, forces (N, 3) eV/A, stress (B, 3, 3) GPa of a concatenated batch, from tensors.

        Same batching, chunking and numbers as :meth:`predict`, without pymatgen objects. Outputs are
        float64 on ``positions.device``; a structure that cannot be evaluated (NaN/inf coordinates, a
        degenerate cell, an unsupported element, an isolated atom) has NaN outputs and its message in
        ``errors``.
        """
        out_dev = positions.device
        counts = [int(c) for c in n_atoms.tolist()]
        n_struct, n_total = len(counts), int(sum(counts))
        dev = self.device
        pos = positions.detach().to(device=dev, dtype=torch.float64)
        cell = cells.detach().to(device=dev, dtype=torch.float64).reshape(n_struct, 3, 3)
        z = numbers.detach().to(device=dev, dtype=torch.long)
        n = torch.as_tensor(counts, dtype=torch.long, device=dev)
        batch = torch.repeat_interleave(torch.arange(n_struct, device=dev), n)
        energy = torch.full((n_struct,), float("nan"), dtype=torch.float64, device=dev)
        forces = torch.full((n_total, 3), float("nan"), dtype=torch.float64, device=dev)
        stress = torch.full((n_struct, 3, 3), float("nan"), dtype=torch.float64, device=dev)
        magmoms = torch.full((n_total,), float("nan"), dtype=torch.float64, device=dev)
        dmin = torch.full((n_struct,), float("nan"), dtype=torch.float64, device=dev)
        errors: list[str | None] = [None] * n_struct
        if n_struct == 0:
            return Evaluation(energy.to(out_dev), forces.to(out_dev), stress.to(out_dev) if compute_stress else None,
                              magmoms.to(out_dev), None)

        # checks (vectorised): finite input, non-degenerate cell, supported elements, no empty structure
        vol = torch.linalg.det(cell).abs()
        finite_atoms = torch.zeros(n_struct, dtype=torch.long, device=dev).index_add_(
            0, batch, (~torch.isfinite(pos).all(1)).long())
        bad_z = torch.zeros(n_struct, dtype=torch.long, device=dev).index_add_(
            0, batch, ((z < 1) | (z > self.model.cfg.max_num_elements)).long())
        # a cell squeezed during a relaxation: its density bounds the graph before one is built
        dense = n.to(torch.float64) > MAX_DENSITY * vol
        checks = torch.stack([finite_atoms > 0, ~torch.isfinite(cell).flatten(1).all(1),
                              ~(vol >= 1e-3), dense, bad_z > 0, n == 0], 1).tolist()
        messages = ["coordinates contain NaN/inf", "lattice contains NaN/inf", "the cell is degenerate",
                    f"number density above {MAX_DENSITY:g} atoms/A^3 (not physical)",
                    "element(s) not covered by the potential", "the structure has no atoms"]
        good = []
        vols = vol.tolist()
        for b, row in enumerate(checks):
            bad = [m for m, flag in zip(messages, row, strict=True) if flag]
            if bad:
                errors[b] = f"batch[{b}]: {'; '.join(bad)}"
            else:
                good.append(b)
        safe_cell = torch.where(torch.isfinite(cell) & (vol >= 1e-3)[:, None, None], cell,
                                torch.eye(3, dtype=cell.dtype, device=dev))
        frac = (pos.unsqueeze(2) * torch.linalg.inv(safe_cell).index_select(0, batch)).sum(1)

        with self._thread_setting():
            for idx in self.plan_batches([counts[b] for b in good], [vols[b] for b in good]):
                bs = [good[k] for k in idx]
                rows = _rows(counts, bs, dev)
                try:
                    outs, errs = self._run(frac[rows], cell[bs], z[rows], n[bs], compute_stress=compute_stress)
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report, keep going
                    if len(bs) == 1:
                        errors[bs[0]] = f"batch[{bs[0]}]: {_failure(counts[bs[0]], exc)}"
                        continue
                    outs, errs = self._nan_outputs(len(bs), len(rows), compute_stress, dev), []
                    lo = 0
                    for k, b in enumerate(bs):  # one by one to find the culprit
                        r = rows[lo:lo + counts[b]]
                        try:
                            o1, e1 = self._run(frac[r], cell[[b]], z[r], n[[b]], compute_stress=compute_stress)
                            for q, v in o1.items():
                                if q in _PER_ATOM:
                                    outs[q][lo:lo + counts[b]] = v
                                else:
                                    outs[q][k] = v[0]
                            errs.extend(e1)
                        except Exception as exc1:  # noqa: BLE001
                            errs.append(_failure(counts[b], exc1))
                        lo += counts[b]
                for b, e in zip(bs, errs, strict=False):
                    if e is not None:
                        errors[b] = f"batch[{b}]: {e}"
                # one scatter per output for the whole batch (failed structures' rows are NaN)
                bs_t = torch.as_tensor(bs, device=dev)
                energy.index_copy_(0, bs_t, outs["energy"].double())
                forces.index_copy_(0, rows, outs["forces"].double())
                magmoms.index_copy_(0, rows, outs["magmoms"].double())
                dmin.index_copy_(0, bs_t, outs["min_distance"])
                if compute_stress:
                    stress.index_copy_(0, bs_t, outs["stress"].double())
        return Evaluation(energy.to(out_dev), forces.to(out_dev), stress.to(out_dev) if compute_stress else None,
                          magmoms.to(out_dev), errors if any(errors) else None, dmin.to(out_dev))


def _failure(n_atoms: int, exc: BaseException) -> str:
    """A structure's error for an exception raised while evaluating it (an allocation failure said plainly)."""
    if is_memory_failure(exc):
        return f"{out_of_memory(n_atoms, exc)} ({ResourceError.MARK})"
    return f"{type(exc).__name__}: {exc}"


def _probe_potential(dtype: str) -> ChgnetPotential:
    """The CPU memory probe's potential: uncalibrated, with a budget no probe reaches (no chunking)."""
    return ChgnetPotential("cpu", dtype=dtype, calibrate=False, memory_budget=1 << 40)
