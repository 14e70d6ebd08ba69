"""A real matfunnel campaign through FireWorks on the mongoeco server: ``matfunnel submit``, two
competing ``rlaunch rapidfire`` workers (MLIP/cpu and DFT categories), every Firework once, the
dynamic DFT gate expanding at run time, and the report read back from the MongoStore."""

from __future__ import annotations

import collections
import json
import time

import pytest

pytest.importorskip("fireworks")


def test_campaign_runs_on_fireworks_and_report_is_in_the_store(fw_env, fake_mp_key, tmp_path, capsys):
    from matfunnel.cli import main

    spec = tmp_path / "fw-campaign.yaml"
    spec.write_text(json.dumps({
        "name": "fw-campaign", "chemsys": "Al-Li",
        "candidates": {"sources": ["aflow"], "max_candidates": 2, "max_sites": 2},
        "relax": {"fmax": 0.05, "max_steps": 200},
        "hull": {"references": "offline", "competing_max_sites": 1},
        "dft": {"engine": "gpaw", "threshold": 1.0, "max_candidates": 1, "preset": "quick"},
    }))
    assert main(["submit", str(spec), "--launchpad", str(fw_env.launchpad_file)]) == 0
    wf_id = int(capsys.readouterr().out.split()[-1])

    fw_env.set_categories("cpu", ["cpu"])  # potential.device cpu: MLIP jobs are cpu jobs
    fw_env.set_categories("dft", ["dft"])
    # a rapidfire worker exits when nothing it may run is ready or on its way; the DFT jobs only
    # appear when the gate runs, so keep one worker of each kind alive the way qlaunch/cron would
    lp = fw_env.lp
    deadline = time.monotonic() + 420
    workers = {"cpu": None, "dft": None}
    while time.monotonic() < deadline:
        if set(lp.get_wf_by_fw_id(wf_id).fw_states.values()) == {"COMPLETED"}:
            break
        for kind, proc in workers.items():
            if proc is None or proc.poll() is not None:
                assert proc is None or proc.returncode == 0, fw_env.worker_output()
                workers[kind] = fw_env.rlaunch(kind, f"worker_{kind}", timeout=400)
        time.sleep(1)
    fw_env.wait([p for p in workers.values() if p is not None], timeout=60)

    wf = lp.get_wf_by_fw_id(wf_id)
    states = {fw.name: (fw.state, fw.spec.get("_category")) for fw in wf.fws}
    assert set(wf.fw_states.values()) == {"COMPLETED"}, "\n".join(f"{k}: {v}" for k, v in states.items())
    # every Firework ran exactly once; GPAW jobs (created by the gate at run time) only on the DFT worker
    for fw in wf.fws:
        assert len(fw.launches) == 1, fw.name
    by_category = collections.defaultdict(set)
    for fw in wf.fws:
        by_category[fw.spec["_category"]].add(fw.launches[0].fworker.name)
    assert by_category["dft"] == {"dft-worker"} and by_category["cpu"] == {"cpu-worker"}
    assert any(fw.name.startswith("gpaw") for fw in wf.fws)

    store = fw_env.store()
    (doc,) = list(store.query({"name": "report"}, load=True))
    report = doc["output"]
    assert report["chemsys"] == "Al-Li" and report["reference"].startswith("offline:")
    to_dft = [r for r in report["rows"] if r["gate"] == "to DFT"]
    assert len(to_dft) == 1 and to_dft[0]["dft_e_above_hull"] is not None
    assert all(r["status"] == "ok" for r in report["rows"])
    # the key the workers had in their environment is nowhere in the store, the specs or the logs
    leaks = [name for name, blob in fw_env.all_documents().items() if fake_mp_key.encode() in blob]
    assert not leaks and not fw_env.files_containing(fake_mp_key)
