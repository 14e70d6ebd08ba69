"""Memory probes of chgnet-0.3.0 for :mod:`matfunnel.potential.calibration`.

Two rattled rocksalt cells (2.75 A bonds: about 32 directed edges and 30 angles per atom) go through one
unchunked forward + backward (energy, forces, stress) each. On a GPU this runs in the calling process;
on the CPU in a child (``python -m matfunnel.potential.chgnet.memprobe DTYPE N1 N2 ...``), which prints the
(items, peak resident bytes) of each probe as JSON.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys

import numpy as np
import torch

#: probe cells (atoms) per device type: big enough that the pass, not start-up, sets the peak (the CPU pair
#: peaks at about 0.7 and 1.2 GB; machines with less than 4 GB available use SMALL_CPU, about 0.3 and 0.7 GB)
SIZES = {"cpu": (864, 2048), "cuda": (2048, 6912)}
SMALL_CPU = (256, 864)


def _cell(n_atoms: int):
    from matfunnel.potential.chgnet.testing import supercell

    return supercell(np.random.default_rng(0), n_atoms, proto="rocksalt", bond=2.75)


def run_probe(pot, n_atoms: int) -> int:
    """One unchunked forward + backward of the probe cell; returns its work items (directed edges + angles)."""
    from matfunnel.potential.chgnet.graph import build_graph

    g = build_graph(*pot._arrays([_cell(n_atoms)]))
    out = pot.model(g)
    out["forces"].sum().item()
    return 2 * g.n_edges + g.n_angles


def measure_cuda(pot) -> list[tuple[int, int]]:
    from matfunnel.potential.calibration import cuda_peak

    run_probe(pot, 64)  # kernels compiled, allocator warm
    return [cuda_peak(lambda n=n: run_probe(pot, n), pot.device) for n in SIZES["cuda"]]


def measure_cpu(dtype: torch.dtype, timeout: float = 300) -> list[tuple[int, int]]:
    """Peak resident memory of the probes, in a child process (a fresh process image has its own peak)."""
    name = str(dtype).split(".")[-1]
    sizes = SIZES["cpu"]
    try:
        import psutil

        if psutil.virtual_memory().available < 4 * 2**30 * (2 if dtype == torch.float64 else 1):
            sizes = SMALL_CPU
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    cmd = [sys.executable, "-m", "matfunnel.potential.chgnet.memprobe", name, *map(str, sizes)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return [tuple(p) for p in json.loads(out.stdout.strip().splitlines()[-1])]


def _reset_peak() -> None:
    """Reset the peak resident size of this process (Linux >= 4.0; elsewhere the probes' order suffices)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak resident bytes of this process image: ``VmHWM`` (``ru_maxrss`` would include the parent's size at
    the fork, which survives the exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str]) -> None:
    from matfunnel.potential.chgnet.potential import ChgnetPotential

    dtype, sizes = argv[0], [int(x) for x in argv[1:]]
    pot = ChgnetPotential("cpu", dtype=dtype, calibrate=False, memory_budget=1 << 40)
    run_probe(pot, 64)
    points = []
    for n in sorted(sizes):  # increasing: each probe reuses the (kept) memory of the one before
        gc.collect()
        _reset_peak()
        items = run_probe(pot, n)
        points.append((items, _peak_rss()))
    print(json.dumps(points))


if __name__ == "__main__":
    main(sys.argv[1:])
