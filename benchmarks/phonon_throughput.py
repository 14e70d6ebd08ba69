"""Phonon force evaluation: all displacements in one batched ``predict`` vs one at a time.

For each structure, phonopy's displaced supercells are evaluated (a) through matfunnel's batched
path (:func:`matfunnel.phonons.produce_force_constants`, one ``potential.predict`` call) and (b)
the classic way, one displacement at a time through the same potential's ASE calculator; both in
the same run, on the same supercells. Prints supercells/s for each, their ratio, and the largest
force-constant difference between the two.

Structures: unit cells of the shared DFT references (``--refs``), in supercells at least
``--min-length`` Å wide (``--own-supercells``: the references' own 360-1176 atom supercells).

``--relax N``: also the tight symmetric relaxation before phonons (fmax 0.005 eV/Å, space group kept) of the
first N references' cells: all together on the batched engine
(:func:`matfunnel.phonons.symmetric_relax.relax_symmetric_many`) against ASE's FIRE + FixSymmetry one after another
with the same potential, in the same run; prints the times, their ratio and the agreement.

    .venv/bin/python benchmarks/phonon_throughput.py [--potential chgnet-0.3.0] [--device cuda]
        [--refs mp-2646,mp-1883,mp-753] [--min-length 10] [--own-supercells] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MATFUNNEL_SHARED", REPO.parent / "shared"))


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def one_at_a_time(phonon, potential):
    """Classic phonopy loop: every displaced supercell through the ASE calculator."""
    from ase import Atoms

    calc = potential.calculator()
    forces = []
    for sc in phonon.supercells_with_displacements:
        atoms = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        atoms.calc = calc
        forces.append(atoms.get_forces().copy())
    phonon.forces = np.array(forces)
    phonon.produce_force_constants(show_drift=False)
    phonon.symmetrize_force_constants(show_drift=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--potential", default=None, help="default: matfunnel's default potential")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--refs", default="mp-1883,mp-2646,mp-753", help="reference ids (unit cells)")
    ap.add_argument("--min-length", type=float, default=10.0, help="supercell width, Angstrom")
    ap.add_argument("--own-supercells", action="store_true", help="use the references' own supercells")
    ap.add_argument("--repeat", type=int, default=3, help="best of N (the first run pays one-off costs)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--relax", type=int, default=0, metavar="N",
                    help="also compare the symmetric relaxation of the N cheapest references (batched vs ASE)")
    ap.add_argument("--loop-potential", default="chgnet-reference",
                    help="potential of the one-at-a-time ASE loop (default: the chgnet package itself, same "
                         "weights); pass the same name as --potential to isolate the gain from batching")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from matfunnel.phonons import build_phonopy, load_reference, produce_force_constants
    from matfunnel.potential import DEFAULT_POTENTIAL, load_potential

    pot = load_potential(args.potential or DEFAULT_POTENTIAL, args.device)
    loop_pot = load_potential(args.loop_potential, args.device)
    for p in (pot, loop_pot):  # warm-up
        p.predict([load_reference(SHARED / "data/phonons/pbe-reference/mp-1883").structure])
    print(f"batched: {pot.name}; one at a time (phonopy + ASE loop): {loop_pot.name}; on {args.device}")
    print(f"{'ref':>10} {'formula':>10} {'atoms':>6} {'disp':>5} {'batched s':>10} {'1-by-1 s':>9} {'ratio':>6} "
          f"{'max dFC':>9}")
    tot_b = tot_s = 0.0
    for mid in args.refs.split(","):
        ref = load_reference(SHARED / "data/phonons/pbe-reference" / mid)
        kw = dict(primitive_matrix=ref.primitive_matrix, displacement=ref.displacement)
        scm = ref.supercell_matrix if args.own_supercells else None
        tb, ts = [], []
        for _ in range(args.repeat):
            a = build_phonopy(ref.structure, scm, min_length=args.min_length, **kw)
            _sync(args.device)
            t = time.perf_counter()
            produce_force_constants(a, pot, remove_drift=False)
            _sync(args.device)
            tb.append(time.perf_counter() - t)
            b = build_phonopy(ref.structure, scm, min_length=args.min_length, **kw)
            t = time.perf_counter()
            one_at_a_time(b, loop_pot)
            _sync(args.device)
            ts.append(time.perf_counter() - t)
        dfc = float(np.abs(a.force_constants - b.force_constants).max())  # float32 noise across backends
        n = len(a.supercells_with_displacements)
        bt, st = min(tb), min(ts)
        tot_b, tot_s = tot_b + bt, tot_s + st
        print(f"{mid:>10} {ref.formula:>10} {len(a.supercell):>6} {n:>5} {bt:>10.2f} {st:>9.2f} {st / bt:>6.2f} "
              f"{dfc:>9.1e}", flush=True)
    print(f"total: batched {tot_b:.2f} s, one at a time {tot_s:.2f} s, speed-up {tot_s / tot_b:.2f}x")
    if args.relax:
        relax_comparison(pot, args.relax, args.device)


def relax_comparison(pot, n: int, device: str) -> None:
    from matfunnel.phonons import load_reference
    from matfunnel.phonons.compare import cheapest_references
    from matfunnel.phonons.symmetric_relax import relax_symmetric, relax_symmetric_many

    root = SHARED / "data/phonons/pbe-reference"
    refs = [load_reference(root / mid) for mid in cheapest_references(root)[:n]]
    structures = [r.structure for r in refs]
    _sync(device)
    t = time.perf_counter()
    batched = relax_symmetric_many(structures, pot, labels=[r.material_id for r in refs])
    _sync(device)
    tb = time.perf_counter() - t
    t = time.perf_counter()
    ase = [relax_symmetric(s, pot) for s in structures]
    ta = time.perf_counter() - t
    ok = [(b, a, s) for b, a, s in zip(batched, ase, structures, strict=False) if not isinstance(b, str)]
    de = [abs(b.energy - a.energy) / len(s) * 1e3 for b, a, s in ok]
    dv = [abs(b.structure.volume / a.structure.volume - 1) * 100 for b, a, s in ok]
    same = sum(b.n_steps == a.n_steps for b, a, s in ok)
    print(f"symmetric relaxation of {n} reference cells ({sum(len(s) for s in structures)} atoms), fmax 0.005: "
          f"batched {tb:.2f} s, ASE FIRE + FixSymmetry one by one {ta:.2f} s, speed-up {ta / tb:.2f}x")
    print(f"agreement ({len(ok)} relaxed): |dE| max {max(de):.2e} meV/atom, |dV| max {max(dv):.2e} %, "
          f"identical step counts {same}/{len(ok)}; converged batched {sum(b.converged for b, a, s in ok)}, "
          f"ASE {sum(a.converged for b, a, s in ok)}")


if __name__ == "__main__":
    main()
