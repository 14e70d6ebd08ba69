"""Throughput of matfunnel's MatRIS against the ``matris`` package: same weights, same structures.

    .venv/bin/python benchmarks/matris_throughput.py [--n-struct 8] [--atoms 16] [--layers 10] [--repeat 2]

Random weights in the published 10M architecture (10 layers, 6 / 4.5 A cutoffs); energy, forces,
stress and magmoms of a batch of random structures, end to end (graph construction included).
Prints seconds per batch (best of ``--repeat``) and structures per second for both.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from matfunnel.potential.matris import PUBLISHED, model_from_dict
from matfunnel.potential.matris.potential import MatrisPotential


def random_structures(rng, n_struct: int, atoms: int) -> list[Structure]:
    out = []
    for _ in range(n_struct):
        a = (atoms * 14.0) ** (1 / 3)  # ~14 A^3 per atom
        lat = Lattice(np.diag([a, a, a]) + rng.normal(0, 0.2, (3, 3)))
        frac = []
        while len(frac) < atoms:
            f = rng.random(3)
            if all(np.linalg.norm(lat.get_cartesian_coords(((f - g + 0.5) % 1) - 0.5)) > 1.6 for g in frac):
                frac.append(f)
        out.append(Structure(lat, rng.integers(1, 84, atoms).tolist(), np.array(frac)))
    return out


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-struct", type=int, default=8)
    ap.add_argument("--atoms", type=int, default=16)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from matris.model import MatRIS

    torch.manual_seed(0)
    cfg = PUBLISHED["10m-oam"].replace(num_layers=args.layers).to_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        ref = MatRIS(**cfg).eval()
    ours = MatrisPotential(module=model_from_dict({"config": ref.config, "state_dict": ref.state_dict()}))
    structs = random_structures(np.random.default_rng(0), args.n_struct, args.atoms)

    def run_ref():
        graphs = [ref.graph_converter(s) for s in structs]
        ref(graphs, task="efsm")

    def run_ours():
        ours.predict(structs)

    run_ours()  # warm-up (basis tables)
    t_ref = best(run_ref, args.repeat)
    t_ours = best(run_ours, args.repeat)
    g = ours.graph(structs)
    print(f"MatRIS {args.layers} layers, {args.n_struct} structures x {args.atoms} atoms "
          f"({g.n_edges} undirected edges, {g.n_angles} angles), {torch.get_num_threads()} threads")
    print(f"  matris package : {t_ref:.3f} s/batch  {args.n_struct / t_ref:.2f} structures/s")
    print(f"  matfunnel      : {t_ours:.3f} s/batch  {args.n_struct / t_ours:.2f} structures/s  "
          f"(x{t_ref / t_ours:.2f})")


if __name__ == "__main__":
    main()
