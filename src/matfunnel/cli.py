"""The ``matfunnel`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

QUICKSTART_SPEC = "quickstart.yaml"


def _flows_dir() -> Path:
    """``flows/`` of a checkout, else the copy shipped inside the package."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "flows", here.parent / "data" / "flows"):
        if (cand / QUICKSTART_SPEC).exists():
            return cand
    return Path("flows")


def cmd_run(args) -> int:
    from matfunnel.campaign.report import format_table
    from matfunnel.campaign.runner import run_campaign
    from matfunnel.campaign.spec import load_spec

    spec = load_spec(args.spec)
    run_dir = Path(args.run_dir or Path("runs") / spec.name)
    t0 = time.perf_counter()
    report = run_campaign(spec, run_dir)
    print(format_table(report))
    print(f"\nrun folder: {run_dir}  (report.csv, report.json, hull.png)  wall time {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_quickstart(args) -> int:
    args.spec = str(_flows_dir() / QUICKSTART_SPEC)
    args.run_dir = args.run_dir or "runs/quickstart"
    return cmd_run(args)


def cmd_report(args) -> int:
    from matfunnel.campaign.report import format_table
    from matfunnel.campaign.runner import load_report

    report = load_report(args.run_dir)
    if report is None:
        print(f"no report found in {args.run_dir!r} (has the campaign finished?)", file=sys.stderr)
        return 1
    print(format_table(report))
    return 0


def cmd_submit(args) -> int:
    from matfunnel.campaign.fireworks import submit_campaign

    wf_id = submit_campaign(args.spec, args.launchpad)
    print(f"submitted workflow {wf_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    return p


def main(argv: list[str] | None = None) -> int:
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
