"""The ``matfunnel`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import cast

QUICKSTART_SPEC = "quickstart.yaml"


def _flows_dir() -> Path:
    """``flows/`` of a checkout, else the copy shipped inside the package."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "flows", here.parent / "data" / "flows"):
        if (cand / QUICKSTART_SPEC).exists():
            return cand
    return Path("flows")


def cmd_run(args) -> int:
    """``matfunnel run``: run a campaign spec on this machine and print its report table.

    Exit status 1, with one message on stderr, when the run cannot start or fails (2: an invalid spec).
    """
    from matfunnel.campaign.local import CampaignFailed, run_campaign
    from matfunnel.campaign.preflight import PreflightError
    from matfunnel.campaign.report import format_table
    from matfunnel.campaign.runlock import RunFolderError
    from matfunnel.campaign.spec import load_spec
    from matfunnel.common.cache import CacheError
    from matfunnel.common.store import StoreError

    spec = load_spec(args.spec)
    run_dir = Path(args.run_dir or Path("runs") / spec.name)
    t0 = time.perf_counter()
    try:
        report = run_campaign(spec, run_dir)
    except (PreflightError, RunFolderError, CampaignFailed, StoreError, CacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the disk failed under the run (full, read-only, removed)
        where = f" {exc.filename}" if exc.filename else f" in {run_dir}"
        print(f"error: campaign {spec.name!r}: cannot write or read{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(format_table(report))
    print(f"\nrun folder: {run_dir}  (report.csv, report.json, hull.png)  "
          f"wall time {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_quickstart(args) -> int:
    """``matfunnel quickstart``: run the bundled quickstart spec offline."""
    args.spec = str(_flows_dir() / QUICKSTART_SPEC)
    args.run_dir = args.run_dir or "runs/quickstart"
    return cmd_run(args)


def cmd_report(args) -> int:
    """``matfunnel report``: print the report table of a run folder's current run (1 when it has none)."""
    from matfunnel.campaign.local import load_report, run_status
    from matfunnel.campaign.report import format_table
    from matfunnel.common.store import StoreError

    try:
        report = load_report(args.run_dir)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report is None:
        status = run_status(args.run_dir) or {}
        if status.get("status") == "failed":
            why = f"its last run (started {status.get('started', '?')}) failed: {status.get('error', '?')}"
        elif status.get("status") == "running":
            why = f"its run started {status.get('started', '?')} (pid {status.get('pid', '?')}) has not finished"
        else:
            why = "has the campaign finished?"
        print(f"no report found in {args.run_dir!r} ({why})", file=sys.stderr)
        return 1
    print(format_table(report))
    return 0


def cmd_submit(args) -> int:
    """``matfunnel submit``: submit a campaign spec to FireWorks and print the workflow id."""
    from matfunnel.campaign.fireworks import submit_campaign

    wf_id = submit_campaign(args.spec, args.launchpad)
    print(f"submitted workflow {wf_id}")
    return 0


def cmd_phonons_compare(args) -> int:
    """``matfunnel phonons compare``: see :func:`matfunnel.phonons.cli.run_compare`."""
    from matfunnel.phonons.cli import run_compare

    return run_compare(args)


def cmd_benchmark_mbd(args) -> int:
    """``matfunnel benchmark matbench-discovery``: run (or resume) the IS2RE benchmark and print its metrics.

    Exit status 2 for invalid settings, 3 when a data file is unavailable.
    """
    from matfunnel.benchmark.data import DataUnavailableError
    from matfunnel.benchmark.run import BenchmarkConfig, model_slug, run_benchmark
    from matfunnel.benchmark.score import format_metrics
    from matfunnel.potential.registry import parse_kwargs

    try:  # bad --protocol / --fmax / --potential-kwargs: one clear line before any work
        cfg = BenchmarkConfig(
            potential=args.model, device=args.device, fmax=args.fmax, max_steps=args.max_steps,
            shard_size=args.shard_size, subset=args.subset, sample=args.sample, seed=args.seed,
            data_dir=args.data_dir, out_dir=args.out or f"runs/matbench-discovery-{model_slug(args.model)}",
            geometry=args.geometry, download=not args.no_download, check_md5=not args.no_md5_check,
            preset=args.protocol, potential_kwargs=parse_kwargs(args.potential_kwargs),
        )
        settings = cfg.settings()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    changed = ", ".join(f"{k} {v['used']:g} (preset {v['preset']:g})" for k, v in settings["overrides"].items())
    print(f"protocol {settings['name']}: {settings['optimizer']} + {settings['cell_filter']}, fmax "
          f"{settings['fmax']:g} eV/A, <= {settings['max_steps']} steps"
          + (f"; overridden: {changed}" if changed else ""),
          file=sys.stderr)
    try:
        result = run_benchmark(cfg)
    except DataUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(format_metrics(result))
    print(f"\noutputs in {cfg.out_dir}: " + ", ".join(Path(p).name for p in result["files"].values()))
    return 0


def cmd_benchmark_protocols(args) -> int:
    """``matfunnel benchmark protocols``: print the relaxation presets."""
    from matfunnel.benchmark.protocols import format_protocols

    print(format_protocols())
    return 0


def cmd_benchmark_score(args) -> int:
    """``matfunnel benchmark score``: score a predictions file and print the metrics (3: data unavailable)."""
    import json

    from matfunnel.benchmark.data import DataUnavailableError
    from matfunnel.benchmark.score import format_metrics, score_file

    try:
        result = score_file(args.predictions, pred_col=args.pred_col, data_dir=args.data_dir,
                            summary_path=args.summary, restrict=args.only_predicted,
                            download=not args.no_download, stability_threshold=args.threshold,
                            check_md5=not args.no_md5_check)
    except DataUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(format_metrics(result))
    return 0


def _add_benchmark(sub) -> None:
    from matfunnel.benchmark.protocols import DEFAULT_PROTOCOL
    from matfunnel.potential import DEFAULT_POTENTIAL

    b = sub.add_parser("benchmark", help="external benchmarks (Matbench Discovery)")
    bsub = b.add_subparsers(dest="benchmark", required=True)

    def data_opts(p):
        p.add_argument("--data-dir", default=None,
                       help="folder with local copies of the data files (else the cache, $MATFUNNEL_DATA_DIR)")
        p.add_argument("--no-download", action="store_true", help="never download; fail if a file is missing")
        p.add_argument("--no-md5-check", action="store_true", help="accept data files with other md5 sums")

    m = bsub.add_parser("matbench-discovery", help="IS2RE on the WBM test set: relax, E_form, hull distance, score")
    m.add_argument("--model", default=DEFAULT_POTENTIAL,
                   help=f"potential name (see 'matfunnel potentials'; default {DEFAULT_POTENTIAL})")
    m.add_argument("--device", default="cpu")
    m.add_argument("--subset", type=int, default=None, metavar="N", help="only N materials (first N, or --sample)")
    m.add_argument("--sample", action="store_true", help="with --subset: a random sample (see --seed)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--protocol", default=DEFAULT_PROTOCOL, metavar="NAME",
                   help=f"relaxation preset, or a leaderboard model key to use that model's protocol "
                        f"(see 'matfunnel benchmark protocols'; default {DEFAULT_PROTOCOL}: FIRE + "
                        f"FrechetCellFilter, fmax 0.05 eV/A, 500 steps)")
    m.add_argument("--fmax", type=float, default=None, help="override the preset's force criterion, eV/A (recorded)")
    m.add_argument("--max-steps", type=int, default=None, help="override the preset's step limit (recorded)")
    m.add_argument("--potential-kwargs", default=None, metavar="JSON",
                   help="keyword arguments for the potential: a JSON object, or @FILE.json")
    m.add_argument("--shard-size", type=int, default=250, help="structures per relaxation job")
    m.add_argument("--geometry", choices=["auto", "on", "off"], default="auto",
                   help="RMSD/symmetry vs DFT structures (auto: if the DFT structures file is local)")
    m.add_argument("--out", default=None, help="run folder (default runs/matbench-discovery-<model>); rerun to resume")
    data_opts(m)
    m.set_defaults(func=cmd_benchmark_mbd)

    s = bsub.add_parser("score", help="score a predictions file (material_id, e_form_per_atom_<model>)")
    s.add_argument("predictions")
    s.add_argument("--pred-col", default=None, help="prediction column (default: the e_form_per_atom_* column)")
    s.add_argument("--summary", default=None, help="WBM summary CSV (default: the registry's file)")
    s.add_argument("--only-predicted", action="store_true",
                   help="score only predicted materials (default: all of WBM, missing = predicted unstable)")
    s.add_argument("--threshold", type=float, default=0.0, help="stability threshold, eV/atom")
    s.add_argument("--json", default=None, help="also write the result as JSON here")
    data_opts(s)
    s.set_defaults(func=cmd_benchmark_score)

    pr = bsub.add_parser("protocols", help="relaxation presets and the leaderboard models that used each")
    pr.set_defaults(func=cmd_benchmark_protocols)


def cmd_potentials(args) -> int:
    """List every potential name usable here: ready, needs a package, or needs weights (and where)."""
    from matfunnel.potential.registry import ENTRY_POINT_GROUP, describe

    rows = describe()
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"{r.name:<{width}}  {r.status}")
        if r.summary:
            print(f"{'':<{width}}    {r.summary}")
    print(f"\nAny torch-sim model: 'torchsim:MODULE:CALLABLE'; any ASE calculator (unbatched): "
          f"'ase:MODULE:CALLABLE'; packages add names through the entry-point group {ENTRY_POINT_GROUP!r}.")
    return 0


def cmd_train(args) -> int:
    """Fine-tune as a spec says (``torchrun --nproc_per_node N -m matfunnel.cli train ...``: N processes)."""
    from matfunnel.train.data import TrainingDataError
    from matfunnel.train.run import init_distributed, run_training
    from matfunnel.train.spec import TrainSpecError, load_spec
    from matfunnel.train.trainer import FineTuneError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        spec = load_spec(args.spec)
        rank = init_distributed()
        result = run_training(spec, args.out, progress=not args.quiet and rank == 0)
    except (TrainSpecError, TrainingDataError, FineTuneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rank:
        return 0
    before, after = result.metrics["before"] or {}, result.metrics["after"] or {}
    print(f"checkpoint {result.checkpoint} (epoch {result.metrics['epoch']}, training set {result.dataset_hash[:12]})")
    for key, unit in (("energy", "meV/atom"), ("forces", "meV/A"), ("stress", "GPa"), ("magmoms", "muB")):
        b, a = before.get(f"{key}_mae"), after.get(f"{key}_mae")
        if b is not None and b == b:
            print(f"  validation {key} MAE: {b:.4g} -> {a:.4g} {unit}")
    print(f"log: {result.folder / 'log.csv'}, curves: {result.folder / 'curves.png'}")
    return 0


def cmd_calibrate(args) -> int:
    """Measure (``--force``) or show this device's memory model for batch sizing."""
    from matfunnel.potential import calibration, load_potential
    from matfunnel.potential.batching import ItemBudget

    pot = load_potential(args.potential, args.device, **({"calibrate": True} if args.force else {}))
    rec = getattr(pot, "calibration", None)
    if rec is None:
        print(f"{args.potential} on {args.device}: no measurement (see the warning above); "
              f"{getattr(pot, 'bytes_per_item', '?')} bytes per item assumed")
        return 1
    budget = cast(ItemBudget, pot)  # a potential with a calibration record sizes its batches by ItemBudget
    print(f"{rec['key']}: {rec['bytes_per_item']} bytes per work item ({rec['source']}, {rec['how']}, "
          f"{rec['measured']}); batches use {budget.bytes_per_item} (x{calibration.MARGIN}) under a budget of "
          f"{budget.memory_budget / 2**30:.1f} GiB = {budget.max_items:,} items; cache {calibration.cache_file()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``matfunnel`` argument parser with all its subcommands."""
    p = argparse.ArgumentParser(prog="matfunnel", description="High-throughput materials discovery funnel")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="run flows/quickstart.yaml offline on the embedded store")
    q.add_argument("--run-dir", default=None)
    q.set_defaults(func=cmd_quickstart)

    r = sub.add_parser("run", help="run a campaign spec (flows/*.yaml) on this machine")
    r.add_argument("spec")
    r.add_argument("--run-dir", default=None, help="default: runs/<spec name>")
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="print the report of a run folder")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)

    s = sub.add_parser("submit", help="submit a campaign to FireWorks")
    s.add_argument("spec")
    s.add_argument("--launchpad", required=True, help="my_launchpad.yaml")
    s.set_defaults(func=cmd_submit)

    ph = sub.add_parser("phonons", help="phonon checks")
    ph_sub = ph.add_subparsers(dest="phonons_command", required=True)
    from matfunnel.phonons.cli import add_compare_arguments

    add_compare_arguments(ph_sub.add_parser("compare",
                                            help="compare MLIP phonons with DFT references (phonopy folders)"))
    ph_sub.choices["compare"].set_defaults(func=cmd_phonons_compare)

    pl = sub.add_parser("potentials", help="list the potentials: ready, or what each still needs")
    pl.set_defaults(func=cmd_potentials)

    t = sub.add_parser("train", help="fine-tune a potential from a spec (see matfunnel.train.spec)")
    t.add_argument("spec")
    t.add_argument("--out", default=None, help="run folder (default: the spec's out, else runs/fine-tune)")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("calibrate", help="measure this device's memory per work item for batch sizing (cached)")
    c.add_argument("--potential", default="chgnet-0.3.0")
    c.add_argument("--device", default="cpu")
    c.add_argument("--force", action="store_true", help="measure again even if a cached figure exists")
    c.set_defaults(func=cmd_calibrate)

    _add_benchmark(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the subcommand and return its exit status."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from matfunnel.campaign.spec import SpecError

    try:
        return args.func(args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
