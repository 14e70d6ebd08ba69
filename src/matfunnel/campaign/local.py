"""Run a campaign on one machine: ``run_locally`` on the embedded store under the run folder.

A run folder shows only what its current run produced. A run:

1. checks everything it can before any work (:func:`matfunnel.campaign.preflight.preflight`: the folder,
   another campaign in it, the device, the potential's elements, the hull references);
2. locks the folder (:class:`~matfunnel.campaign.runlock.RunLock`: a second run on it is refused);
3. records itself in ``run.json`` (a fresh ``run_id``, ``status: running``) and moves the previous report
   aside (``previous-report/``);
4. runs the flow, stopping at the first failed job (:class:`CampaignFailed` names the job and the error);
5. marks ``run.json`` finished (or failed, with the error).

:func:`load_report` returns the report of the folder's current run only: a report whose ``run_id`` is not
that of ``run.json`` (an earlier run's) is never returned.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from jobflow import run_locally

from matfunnel.campaign.funnel import FunnelMaker, resolve
from matfunnel.campaign.preflight import preflight
from matfunnel.campaign.runlock import RunFolderError, RunLock
from matfunnel.campaign.spec import CampaignSpec
from matfunnel.common.cache import active_cache
from matfunnel.common.store import embedded_store

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
REPORT_FILES = ("report.json", "report.csv", "hull.png")
PREVIOUS = "previous-report"


class CampaignFailed(ValueError):
    """A campaign run failed; the message names the campaign, the failed job and the error."""


class _JobTracker(logging.Handler):
    """Remembers the job jobflow started last (the one that failed when ``run_locally`` raises)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.current = "?"

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Starting job - "):
            self.current = msg.removeprefix("Starting job - ").rsplit(" (", 1)[0]


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; a failure is a :class:`RunFolderError` naming the path."""
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise RunFolderError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot write or read{where}: {exc.strerror}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400] if text else ''}".rstrip(": ")


def _start(spec: CampaignSpec, run_dir: Path) -> dict:
    """Record the new run in ``run.json`` and ``spec.json``; move the previous report aside."""
    info = {"run_id": uuid.uuid4().hex, "campaign": spec.name, "chemsys": spec.chemsys, "status": "running",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "pid": os.getpid(), "host": socket.gethostname()}
    _write(run_dir / RUN_FILE, json.dumps(info, indent=2))
    old = [run_dir / name for name in REPORT_FILES if (run_dir / name).exists()]
    if old:
        aside = run_dir / PREVIOUS
        try:
            if aside.exists():
                shutil.rmtree(aside)
            aside.mkdir()
            for path in old:
                path.rename(aside / path.name)
        except OSError as exc:
            raise RunFolderError(f"cannot move the previous report of {run_dir} aside to {aside}: "
                                 f"{exc.strerror or exc}") from exc
    _write(run_dir / "spec.json", json.dumps(spec.as_dict(), indent=2))
    return info


def _finish(run_dir: Path, info: dict, error: str | None) -> None:
    info = {**info, "status": "failed" if error else "finished", "ended": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if error:
        info["error"] = error
    try:
        _write(run_dir / RUN_FILE, json.dumps(info, indent=2))
    except RunFolderError as exc:
        log.warning("%s", exc)


def run_campaign(spec: CampaignSpec, run_dir: str | Path) -> dict:
    """Run the whole funnel; return the report (also written to ``run_dir``).

    Raises
    ------
    PreflightError
        The run cannot start (every problem listed).
    RunFolderError
        The run folder is in use by another run, or cannot be written.
    CampaignFailed
        A job failed (named, with its error); the folder then holds no report of this run.
    """
    run_dir = Path(run_dir).resolve()
    spec = resolve(spec)
    mode, why = preflight(spec, run_dir)
    with RunLock(run_dir):
        info = _start(spec, run_dir)
        try:
            report = _run(spec, run_dir, info["run_id"], mode, why)
        except BaseException as exc:
            _finish(run_dir, info, _describe(exc))
            raise
        _finish(run_dir, info, None)
    return report


def _run(spec: CampaignSpec, run_dir: Path, run_id: str, mode: str, why: str) -> dict:
    cache_path = run_dir / "cache.sqlite"
    active_cache(str(cache_path))  # opened (and checked, a corrupt file moved aside) before any work
    # finished relaxations / DFT runs are identified by their inputs: a rerun of a killed
    # campaign with the same command reuses them (see matfunnel.common.cache)
    funnel = FunnelMaker.from_spec(spec, out_dir=str(run_dir), result_cache=str(cache_path))
    funnel.references.references = mode
    funnel.report.run_id, funnel.report.reference_note = run_id, why
    flow = funnel.make(spec.chemsys)
    store = embedded_store(run_dir)
    jobs_dir = run_dir / "jobs"
    try:
        jobs_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create {jobs_dir}: {exc.strerror or exc}") from exc
    tracker = _JobTracker()
    job_log = logging.getLogger("jobflow.core.job")
    job_log.addHandler(tracker)
    try:
        run_locally(flow, store=store, create_folders=True, root_dir=str(jobs_dir), log=True,
                    raise_immediately=True)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - any job's failure ends the run: named, with its error
        raise CampaignFailed(f"campaign {spec.name!r} failed in job {tracker.current!r}: {_describe(exc)} "
                             f"(run folder {run_dir}; finished relaxations are kept in cache.sqlite and "
                             f"reused when you run it again)") from exc
    finally:
        job_log.removeHandler(tracker)
    report = _stored_report(store, run_id)
    if report is None:
        raise CampaignFailed(f"campaign {spec.name!r} did not produce a report (run folder {run_dir})")
    return report


def _stored_report(store, run_id: str) -> dict | None:
    docs = store.query({"name": "report"}, sort={"completed_at": -1}, load=True)
    for doc in docs:
        out = doc.get("output")
        if isinstance(out, dict) and out.get("run_id") == run_id:
            return out
    return None


def run_status(run_dir: str | Path) -> dict | None:
    """The folder's current run as recorded in ``run.json`` (``run_id``, ``status``, ...), or None."""
    try:
        info = json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def load_report(run_dir: str | Path, store=None) -> dict | None:
    """The report of the folder's current run (from the store, else ``report.json``), or None.

    A report of another run (its ``run_id`` is not that of ``run.json``) is never returned. A folder written by
    an older matfunnel, without ``run.json``, gives its newest report.

    Raises
    ------
    StoreError
        When the folder's store is damaged (naming the file).
    """
    run_dir = Path(run_dir)
    status = run_status(run_dir)
    if store is None and (run_dir / "store").exists():
        store = embedded_store(run_dir)
    if status is not None:
        run_id = status.get("run_id")
        if status.get("status") != "finished" or not run_id:
            return None
        found = _stored_report(store, run_id) if store is not None else None
        if found is None:
            found = _report_file(run_dir)
            found = found if found is not None and found.get("run_id") == run_id else None
        return found
    if store is not None:
        docs = list(store.query({"name": "report"}, sort={"completed_at": -1}, limit=1, load=True))
        if docs and docs[0].get("output"):
            return docs[0]["output"]
    return _report_file(run_dir)


def _report_file(run_dir: Path) -> dict | None:
    path = run_dir / "report.json"
    try:
        report = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        log.warning("%s cannot be read; it is not shown", path)
        return None
    return report if isinstance(report, dict) else None
