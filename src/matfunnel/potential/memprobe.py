"""Memory probes for :mod:`matfunnel.potential.calibration`, for any potential with a ``memory_probe``.

Two rattled rocksalt cells (2.75 A bonds: about 32 directed edges and 30 angles per atom within CHGNet's
cutoffs) go through one unchunked forward + backward (energy, forces, stress) each; the potential's
``memory_probe(cell)`` runs that pass and returns the cell's work items (directed edges + angles). On a GPU
this runs in the calling process; on the CPU in a child process that builds the potential from a
:class:`ProbeSpec` (``python -m matfunnel.potential.memprobe SPEC-JSON``) and prints the (items, peak
resident bytes) of each probe as JSON.
"""

from __future__ import annotations

import gc
import importlib
import json
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from matfunnel.potential.synthetic import supercell

#: probe cells (atoms) per device type: big enough that the pass, not start-up, sets the peak (for
#: chgnet-0.3.0 the CPU pair peaks at about 0.7 and 1.2 GB; below 4 GB available a potential's small sizes)
SIZES = {"cpu": (864, 2048), "cuda": (2048, 6912)}
SMALL_CPU = (256, 864)
#: candidate probe cells (atoms) for sizes chosen by a memory target: 4-atom cells repeated (no two alike)
LADDER = tuple(4 * m for m in (1, 2, 3, 4, 6, 8, 12, 18, 27, 36, 48, 64, 80, 100, 125, 150, 180, 216, 270, 343,
                                432, 512, 640, 729, 864, 1000, 1331, 1728))


@dataclass
class ProbeSpec:
    """How a child process builds the potential to probe, and which probe cells it runs.

    ``factory`` ("module:callable") called with ``kwargs`` (JSON values) must return the potential ready to
    run, uncalibrated, with an unlimited budget. The probes are the cells of ``sizes`` atoms, or, with
    ``target_bytes``, the smallest :data:`LADDER` cell and the largest one its measured cost predicts to peak
    within ``target_bytes`` above the start.
    """

    factory: str
    kwargs: dict = field(default_factory=dict)
    sizes: Sequence[int] = SIZES["cpu"]
    target_bytes: int | None = None


def cuda_peak(run: Callable[[], int], device) -> tuple[int, int]:
    """(items, peak bytes allocated above the start) of ``run()``, which returns its number of items."""
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    items = run()
    torch.cuda.synchronize(dev)
    return items, torch.cuda.max_memory_allocated(dev) - base


def probe_cell(n_atoms: int):
    """The rattled rocksalt probe cell of about ``n_atoms`` atoms (the same cell on every call)."""
    cubic = round((n_atoms / 4) ** (1 / 3)) ** 3 * 4 == n_atoms  # as before for the cubic sizes
    return supercell(np.random.default_rng(0), n_atoms, proto="rocksalt", bond=2.75, cubic=cubic)


def measure_cuda(pot, sizes: Sequence[int] = SIZES["cuda"],
                 target_bytes: int | None = None) -> list[tuple[int, int]]:
    """(items, peak bytes allocated) of each probe, in this process.

    The probes are the cells of ``sizes`` atoms, or chosen by ``target_bytes``: see :class:`ProbeSpec`.
    """
    def run(cell) -> tuple[int, int]:
        return cuda_peak(lambda: pot.memory_probe(cell), pot.device)

    if target_bytes is not None:
        return _by_target(run, target_bytes)
    pot.memory_probe(probe_cell(64))  # kernels compiled, allocator warm
    return [run(probe_cell(n)) for n in sizes]


def _ladder() -> list:
    cells, seen = [], set()
    for n in LADDER:
        c = probe_cell(n)
        if len(c) not in seen:
            seen.add(len(c))
            cells.append(c)
    return cells


def _by_target(run, target_bytes: int, level=None) -> list[tuple[int, int]]:
    """Probe the smallest ladder cell, then the largest predicted to stay within ``target_bytes``.

    The prediction is the cell's items at the first probe's bytes per item; ``run(cell)`` returns (items, peak),
    measured from ``level()`` (default 0) as taken before a warm-up run.
    """
    cells = _ladder()
    start = level() if level is not None else 0
    warm = run(cells[0])  # kernels, allocator, lazy imports
    first = run(cells[0])
    # the prediction uses the warm-up's growth from the start (memory kept from it would hide the cost), which
    # also counts the one-time costs: it errs on the small side
    per_item = max(1.0, (max(warm[1], first[1]) - start) / first[0])
    items_per_atom = first[0] / len(cells[0])
    fits = [c for c in cells[1:] if len(c) * items_per_atom * per_item <= target_bytes]
    if not fits:
        raise ValueError(f"even the second probe cell ({len(cells[1])} atoms) would exceed "
                         f"{target_bytes / 2**30:.1f} GiB at {per_item:.0f} bytes per item")
    return [first, run(fits[-1])]


def measure_cpu(spec: ProbeSpec, timeout: float = 300) -> list[tuple[int, int]]:
    """Peak resident memory of the probes, in a child process (a fresh process image has its own peak)."""
    cmd = [sys.executable, "-m", "matfunnel.potential.memprobe", json.dumps(asdict(spec))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return [tuple(p) for p in json.loads(out.stdout.strip().splitlines()[-1])]


def cpu_sizes(need_gb: float, small: Sequence[int] = SMALL_CPU) -> Sequence[int]:
    """The CPU probe sizes, or ``small`` where less than ``need_gb`` GB is available."""
    try:
        import psutil

        if psutil.virtual_memory().available < need_gb * 2**30:
            return small
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    return SIZES["cpu"]


def _reset_peak() -> None:
    """Reset the peak resident size of this process (Linux >= 4.0; elsewhere the probes' order suffices)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _status_bytes(key: str) -> int | None:
    """A size from ``/proc/self/status`` in bytes (``VmHWM``: peak resident; ``VmRSS``: resident now)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def _peak_rss() -> int:
    """Peak resident bytes of this process image: ``VmHWM``.

    ``ru_maxrss`` would include the parent's size at the fork, which survives the exec.
    """
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> int:
    return _status_bytes("VmRSS") or 0


def main(argv: list[str]) -> None:
    """Child-process entry: run the probes of ``argv[0]`` (a :class:`ProbeSpec` as JSON).

    Prints the probes' (items, peak resident bytes) as a JSON list.
    """
    spec = ProbeSpec(**json.loads(argv[0]))
    module, name = spec.factory.split(":")
    pot = getattr(importlib.import_module(module), name)(**spec.kwargs)

    def run(cell) -> tuple[int, int]:
        gc.collect()
        _reset_peak()
        return pot.memory_probe(cell), _peak_rss()

    if spec.target_bytes is not None:
        points = _by_target(run, spec.target_bytes, level=_rss)
    else:
        run(probe_cell(64))
        # increasing: each probe reuses the (kept) memory of the one before
        points = [run(probe_cell(n)) for n in sorted(spec.sizes)]
    print(json.dumps(points))


if __name__ == "__main__":
    main(sys.argv[1:])
