"""Potential evaluations to fmax with ASE's optimizers (and ours), one structure at a time, same potential.

    python benchmarks/optimizer_steps.py --n 30 --seed 5                      # the benchmark's structures
    python benchmarks/optimizer_steps.py --candidates Al-Li,Li-Mn-O --n 24    # the funnel's real candidates
    python benchmarks/optimizer_steps.py --only fire,lbfgs --json out.json
    python benchmarks/optimizer_steps.py --batched fire lbfgs lbfgs:alpha=10,curvature_check=1 --n 30

``--batched SPEC ...`` runs matfunnel's batched optimizers instead (one ``relax_batched`` call per spec, all
structures at once; ``name:param=value,...`` with ASE's parameter names): the same counts, since the batched
methods take exactly ASE's steps (tests/test_engine_lbfgs.py), at a fraction of the time.

Counts *potential evaluations* (calls of the calculator that compute, not optimizer iterations: a line
search or a preconditioner's extra calls count too) to ``--fmax`` with at most ``--max-steps`` optimizer steps,
for every optimizer on every structure, all with the cell relaxed (``FrechetCellFilter``, or the method's own
variable-cell form). Prints, per optimizer: converged structures, mean and median evaluations (over the
structures every optimizer converged), the ratio to FIRE, and how many minima end more than 1 meV/atom from
FIRE's. This is the measurement that chose the batched engine's optimizers (README, "Relaxation").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _counted(calc):
    """``calc`` with a counter of the calculations it actually performs (cache hits do not count)."""
    calc.n_evals = 0
    inner = calc.calculate

    def calculate(*a, **kw):
        calc.n_evals += 1
        return inner(*a, **kw)

    calc.calculate = calculate
    return calc


def _fire(target, **kw):
    from ase.optimize import FIRE

    return FIRE(target, logfile=None, **kw)


def _optimizers() -> dict:
    """name -> (builder(atoms) -> list of (optimizer, stage fmax or None)), as ASE ships them (defaults)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, LBFGS, BFGSLineSearch, LBFGSLineSearch
    from ase.optimize.fire2 import FIRE2
    from ase.optimize.precon import Exp, PreconLBFGS

    def single(cls, **kw):
        return lambda atoms: [(cls(FrechetCellFilter(atoms), logfile=None, **kw), None)]

    def hybrid(cls, switch):
        def build(atoms):
            f = FrechetCellFilter(atoms)
            return [(_fire(f), switch), (cls(FrechetCellFilter(atoms), logfile=None), None)]
        return build

    return {
        "fire": single(__import__("ase.optimize", fromlist=["FIRE"]).FIRE),
        "fire2": single(FIRE2),
        "lbfgs": single(LBFGS),
        "bfgs": single(BFGS),
        "lbfgs-linesearch": single(LBFGSLineSearch),
        "bfgs-linesearch": single(BFGSLineSearch),
        "precon-lbfgs": lambda atoms: [(PreconLBFGS(atoms, precon=Exp(A=3), variable_cell=True, use_armijo=True,
                                                    logfile=None), None)],
        "hybrid-fire-bfgs": hybrid(BFGS, 0.5),
        "hybrid-fire-lbfgs": hybrid(LBFGS, 0.5),
    }


def run_one(structure, calc, builder, fmax: float, max_steps: int) -> dict:
    """Relax one structure with one optimizer; evaluations, steps, convergence, final energy and volume."""
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    calc.reset()
    calc.n_evals = 0
    steps, t0, err = 0, time.perf_counter(), None
    try:
        stages = builder(atoms)
        for k, (opt, stage_fmax) in enumerate(stages):
            last = k == len(stages) - 1
            for _ in opt.irun(fmax=fmax if stage_fmax is None else stage_fmax, steps=max_steps - steps):
                if not np.isfinite(atoms.get_potential_energy()) or np.abs(atoms.get_forces()).max() > 1e3:
                    raise RuntimeError("blew up")
            steps += opt.nsteps
            if last:
                converged = bool(opt.converged())
    except Exception as exc:  # noqa: BLE001 - a measurement: record and go on
        converged, err = False, f"{type(exc).__name__}: {exc}"
    n_evals = calc.n_evals
    e = float(atoms.get_potential_energy()) / len(atoms) if err is None else float("nan")
    return {"evals": n_evals, "steps": steps, "converged": converged and err is None, "e_per_atom": e,
            "volume": float(atoms.get_volume()), "wall": time.perf_counter() - t0, "error": err}


def structures_for(args):
    """The benchmark's random structures, or the funnel's candidates for the chemical systems given."""
    if not args.candidates:
        from relax_throughput import make_structures

        return make_structures(args.n, args.seed)
    from matfunnel.candidates.generate import generate_candidates

    out = []
    systems = args.candidates.split(",")
    per = -(-args.n // len(systems))
    for chemsys in systems:
        cands = generate_candidates(chemsys, max_candidates=per, max_sites=args.max_sites)
        out += list(cands)[:per]
    return out[: args.n]


def summarize(rows: dict, names: list[str]) -> list[dict]:
    """Per optimizer: counts over the structures that every optimizer converged, and agreement with FIRE."""
    n = len(rows[names[0]])
    common = [i for i in range(n) if all(rows[m][i]["converged"] for m in names)]
    fire = rows.get("fire")
    table = []
    for m in names:
        r = rows[m]
        ev = np.array([r[i]["evals"] for i in common], dtype=float)
        conv = sum(x["converged"] for x in r)
        row = {"optimizer": m, "converged": f"{conv}/{n}", "n_common": len(common),
               "mean_evals": float(ev.mean()) if len(ev) else float("nan"),
               "median_evals": float(np.median(ev)) if len(ev) else float("nan"),
               "wall_s": float(sum(x["wall"] for x in r))}
        if fire is not None:
            fe = np.array([fire[i]["evals"] for i in common], dtype=float)
            row["ratio_to_fire"] = float(fe.sum() / ev.sum()) if len(ev) else float("nan")
            de = [abs(r[i]["e_per_atom"] - fire[i]["e_per_atom"]) * 1e3 for i in range(n)
                  if r[i]["converged"] and fire[i]["converged"]]
            row["off_fire_1meV"] = int(sum(d > 1.0 for d in de))
            row["max_de_meV"] = float(max(de)) if de else float("nan")
        table.append(row)
    return table


def print_table(table: list[dict]) -> None:
    print(f"{'optimizer':<20} {'conv':>6} {'mean':>7} {'median':>7} {'FIRE/x':>7} {'>1meV':>6} {'max dE':>8} "
          f"{'wall s':>7}")
    for t in table:
        print(f"{t['optimizer']:<20} {t['converged']:>6} {t['mean_evals']:>7.1f} {t['median_evals']:>7.1f} "
              f"{t.get('ratio_to_fire', float('nan')):>7.2f} {t.get('off_fire_1meV', 0):>6} "
              f"{t.get('max_de_meV', float('nan')):>8.3f} {t['wall_s']:>7.1f}")
    if table:
        print(f"(mean/median over the {table[0]['n_common']} structures every optimizer converged; FIRE/x = FIRE's "
              "evaluations over this optimizer's; >1meV = converged minima more than 1 meV/atom from FIRE's)")


def _spec(text: str) -> tuple[str, dict]:
    name, _, params = text.partition(":")
    cfg = {}
    for item in filter(None, params.split(",")):
        k, _, v = item.partition("=")
        cfg[k] = bool(int(v)) if k == "curvature_check" else (int(v) if k == "memory" else float(v))
    return name, cfg


def _batched(args, pot, structs) -> int:
    """Every spec of ``--batched`` on all structures (one batched run each); evaluations = steps + 1."""
    from matfunnel.engine import relax_batched

    rows: dict[str, list] = {}
    for text in args.batched:
        name, cfg = _spec(text)
        t0 = time.perf_counter()
        res = relax_batched(structs, pot, optimizer=name, config=cfg, fmax=args.fmax, max_steps=args.max_steps)
        wall = time.perf_counter() - t0
        key = "fire" if text == "fire" else text
        rows[key] = [{"evals": r.n_steps + 1, "steps": r.n_steps, "converged": bool(r.converged),
                      "e_per_atom": r.e_per_atom if r.converged else float("nan"), "wall": wall / len(res)}
                     for r in res]
        print(f"{text}: {sum(r['converged'] for r in rows[key])}/{len(res)} converged in {wall:.0f} s", flush=True)
    table = summarize(rows, list(rows))
    print_table(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows, "table": table}, fh, indent=1)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--candidates", default=None, help="chemical systems, comma-separated: use the funnel's candidates")
    ap.add_argument("--max-sites", type=int, default=8)
    ap.add_argument("--potential", default="chgnet-0.3.0")
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--only", default=None, help="comma-separated optimizer names")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write every row to this file")
    ap.add_argument("--batched", nargs="+", default=None, metavar="SPEC",
                    help="matfunnel's batched optimizers, e.g. fire lbfgs:alpha=10,curvature_check=1")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    from matfunnel.potential import load_potential

    pot = load_potential(args.potential, "cpu")
    structs = structures_for(args)
    if args.batched:
        return _batched(args, pot, structs)
    opts = _optimizers()
    names = args.only.split(",") if args.only else list(opts)
    sizes = [len(s) for s in structs]
    print(f"{len(structs)} structures ({'candidates ' + args.candidates if args.candidates else f'seed {args.seed}'}),"
          f" {min(sizes)}-{max(sizes)} atoms; {args.potential}; fmax {args.fmax}, at most {args.max_steps} steps",
          flush=True)
    rows: dict[str, list] = {m: [] for m in names}
    for i, s in enumerate(structs):  # interleaved: every optimizer on a structure before the next structure
        for m in names:
            calc = _counted(pot.calculator())
            rows[m].append(run_one(s, calc, opts[m], args.fmax, args.max_steps))
        print(f"{i:3d} {s.composition.reduced_formula:<12} {len(s):3d} atoms  " + "  ".join(
            f"{m}={rows[m][-1]['evals']}{'' if rows[m][-1]['converged'] else '!'}" for m in names), flush=True)
    table = summarize(rows, names)
    print_table(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows, "table": table}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
