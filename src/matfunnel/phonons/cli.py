"""``matfunnel phonons compare``: arguments and command (kept here, out of the main CLI module)."""

from __future__ import annotations

import json
import sys
import time


def add_compare_arguments(p) -> None:
    """Add the ``phonons compare`` options to the argparse parser ``p``."""
    p.add_argument("--reference", required=True, metavar="DIR",
                   help="folder with one subfolder per material: phonopy.yaml[.xz] (+ FORCE_SETS[.xz])")
    p.add_argument("--potential", default=None, help="potential name (default: matfunnel's default potential)")
    p.add_argument("--potential-kwargs", default=None, metavar="JSON",
                   help="keyword arguments for the potential: a JSON object, or @FILE.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, metavar="FILE.csv",
                   help="per-material table; summary in FILE.summary.json")
    p.add_argument("--relax", action="store_true", help="relax each reference cell with the potential first "
                                                        "(symmetry fixed, fmax 0.005 eV/A)")
    p.add_argument("--limit", type=int, default=None, help="only the first N references")
    p.add_argument("--ids", nargs="+", default=None, help="only these material folders")
    p.add_argument("--cheapest", action="store_true",
                   help="order references by cost (supercell atoms x displacements, from DIR/index.csv)")
    p.add_argument("--mesh", type=float, default=100.0, help="phonopy mesh length (default %(default)s)")
    p.add_argument("--imaginary-tol", type=float, default=0.1,
                   help="THz; modes below -tol count as imaginary (default %(default)s)")


def run_compare(args) -> int:
    """Run ``phonons compare``: print one line per material and the summary; the exit status.

    0 when some material was compared, 1 when none was, 2 for a potential that does not load or a missing
    reference folder.
    """
    from matfunnel.phonons.compare import compare_references
    from matfunnel.potential import DEFAULT_POTENTIAL, load_potential
    from matfunnel.potential.registry import parse_kwargs

    try:
        pot = load_potential(args.potential or DEFAULT_POTENTIAL, args.device, **parse_kwargs(args.potential_kwargs))
    except (ValueError, FileNotFoundError) as exc:  # unknown name, bad kwargs, missing weights
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    def progress(i, n, mid):
        print(f"[{i + 1}/{n}] {mid}  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    try:
        rows, summary = compare_references(args.reference, pot, args.out, ids=args.ids, limit=args.limit,
                                           cheapest=args.cheapest, relax=args.relax, mesh=args.mesh,
                                           imaginary_tol=args.imaginary_tol, progress=progress)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        if r.get("error"):
            print(f"error: {r['error']}", file=sys.stderr)
        else:
            print(f"{r['material_id']:>12} {r['formula']:>12}  w_max {r['omega_max_thz_ours']:6.2f} / "
                  f"{r['omega_max_thz_ref']:6.2f} THz  S300 {r['entropy_300k_ours']:7.2f} / "
                  f"{r['entropy_300k_ref']:7.2f}"
                  f"  mesh MAE {r['mesh_mae_thz']:.3f} THz  stable {r['stable_ours']!s:>5} / {r['stable_ref']!s:>5}")
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, indent=2))
    print(f"wrote {args.out} ({len(rows)} materials, {summary['n_failed']} failed) in {time.perf_counter() - t0:.0f} s")
    return 0 if summary["n_compared"] else 1
