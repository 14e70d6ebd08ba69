"""Host time of the batched relaxation engine itself, with a potential that costs nothing.

On a GPU the device waits while the engine's Python runs between two evaluations: validating and entering
structures, the FIRE step, the failure checks, and the result documents of the structures that leave. This
script measures that host time on its own, with :class:`~matfunnel.engine.testing.CosinePotential` (an
egg-box potential, nearly free, that reports the minimum distance like the CHGNet potential does), and
prints it per structure and per iteration, with the CPU time of the process (less sensitive to a busy
machine than the wall time). With ``--device cuda`` the batch lives on the GPU, as in a real run: the host
time is then what the device waits for (Python, kernel launches, host synchronisations).

It also times the result documents against pymatgen's own way of writing them in the same run
(``Structure.as_dict()`` of the input, and of a ``Structure`` built at the final geometry), which the engine
replaced with :class:`~matfunnel.engine.documents.SiteTable`; the documents are checked equal.

    python benchmarks/engine_overhead.py --n 2000 --max-atoms 50000
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _potential(device: str = "cpu"):
    from matfunnel.engine.testing import CosinePotential

    class FreePotential(CosinePotential):
        """The egg box, reporting a (fixed, safe) minimum distance like a graph potential does."""

        distances_on_graph = True

        def __init__(self):
            super().__init__(device=device)
            self.seconds, self.calls = 0.0, 0

        def evaluate(self, numbers, positions, cells, n_atoms, **kw):
            t = time.perf_counter()
            ev = super().evaluate(numbers, positions, cells, n_atoms, **kw)
            ev = ev._replace(min_distance=torch.full((n_atoms.shape[0],), 2.0, dtype=torch.float64,
                                                     device=positions.device))
            if positions.is_cuda:
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return ev

    return FreePotential()


def _best(fn, repeats: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def documents(structures, repeats: int) -> dict:
    from pymatgen.core import Lattice, Structure

    from matfunnel.engine.documents import SiteTable

    rng = np.random.default_rng(0)
    finals = [(s.lattice.matrix @ (np.eye(3) + rng.normal(0, 0.01, (3, 3))),
               s.cart_coords + rng.normal(0, 0.05, (len(s), 3))) for s in structures]

    def pymatgen_way():
        for s, (lat, cart) in zip(structures, finals, strict=False):
            s.as_dict()
            t = Structure(Lattice(lat), s.species, cart, coords_are_cartesian=True)
            t.properties = dict(s.properties)
            t.as_dict()

    def table_way():
        for s, (lat, cart) in zip(structures, finals, strict=False):
            table = SiteTable(s)
            table.initial()
            table.at(lat, cart)

    for s, _ in zip(structures[:50], finals[:50], strict=False):
        assert SiteTable(s).initial() == s.as_dict()
    ref, ours = _best(pymatgen_way, repeats), _best(table_way, repeats)
    n = len(structures)
    return {"pymatgen_ms": 1e3 * ref / n, "ours_ms": 1e3 * ours / n, "ratio": ref / ours}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="structures (4-64 atoms, the relaxation benchmark's)")
    ap.add_argument("--max-atoms", type=int, default=50_000, help="atoms per batch (about an H100's relax batch)")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the batch lives (cuda: the host time a GPU run waits for)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from relax_throughput import make_structures

    from matfunnel.engine.runner import relax_batched

    structures = make_structures(args.n, 1)
    atoms = sum(len(s) for s in structures)
    print(f"{args.n} structures, {atoms} atoms; batch cap {args.max_atoms} atoms; torch threads {args.threads}; "
          f"device {args.device}")
    d = documents(structures, args.repeats)
    print(f"result documents per structure (initial + final): pymatgen {d['pymatgen_ms']:.3f} ms, "
          f"SiteTable {d['ours_ms']:.3f} ms: {d['ratio']:.2f}x")
    for r in range(args.repeats):
        pot = _potential(args.device)
        w0, c0 = time.perf_counter(), time.process_time()
        res = relax_batched(structures, pot, max_atoms=args.max_atoms, max_steps=args.max_steps)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        host = wall - pot.seconds
        steps = sum(x.n_steps for x in res)
        print(f"run {r + 1}: wall {wall:.2f} s (CPU {cpu:.2f} s), in the potential {pot.seconds:.2f} s, "
              f"{pot.calls} iterations, {steps} structure-steps; engine host time {1e3 * host / args.n:.2f} ms "
              f"per structure = {1e3 * host / pot.calls:.1f} ms per iteration")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
