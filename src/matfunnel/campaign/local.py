"""Run a campaign on one machine: ``run_locally`` on the embedded store under the run folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jobflow import run_locally

from matfunnel.campaign.funnel import build_flow, resolve
from matfunnel.campaign.spec import CampaignSpec
from matfunnel.common.store import embedded_store

log = logging.getLogger(__name__)


def run_campaign(spec: CampaignSpec, run_dir: str | Path) -> dict:
    """Run the whole funnel; return the report (also written to ``run_dir``)."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = resolve(spec)
    (run_dir / "spec.json").write_text(json.dumps(spec.as_dict(), indent=2))
    # finished relaxations / DFT runs are identified by their inputs: a rerun of a killed
    # campaign with the same command reuses them (see matfunnel.common.cache)
    flow = build_flow(spec, out_dir=str(run_dir), result_cache=str(run_dir / "cache.sqlite"))
    store = embedded_store(run_dir)
    jobs_dir = run_dir / "jobs"
    jobs_dir.mkdir(exist_ok=True)
    responses = run_locally(flow, store=store, create_folders=True, root_dir=str(jobs_dir), log=True)
    report = load_report(run_dir, store=store)
    if report is None:
        failed = [str(uuid) for uuid, r in responses.items() if not r] if responses else []
        raise RuntimeError(f"campaign {spec.name!r} did not produce a report (jobs without output: {failed})")
    return report


def load_report(run_dir: str | Path, store=None) -> dict | None:
    """The newest report stored for the run (from the store; falls back to report.json)."""
    run_dir = Path(run_dir)
    if store is None and (run_dir / "store").exists():
        store = embedded_store(run_dir)
    if store is not None:
        docs = list(store.query({"name": "report"}, sort={"completed_at": -1}, limit=1, load=True))
        if docs and docs[0].get("output"):
            return docs[0]["output"]
    path = run_dir / "report.json"
    return json.loads(path.read_text()) if path.exists() else None
