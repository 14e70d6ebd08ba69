"""Submission: categories, no store / no API key in Firework specs (mostly no server needed)."""

from __future__ import annotations

import json

import pytest
from jobflow import Flow, Job

pytest.importorskip("fireworks")

from mf_fw_jobs import add_all, fake_dft, fake_relax, fan_out, square  # noqa: E402

from matfunnel.campaign import fireworks as mffw  # noqa: E402


def _flow(log="/dev/null"):
    a = square(2, log, "a")
    r = fake_relax(a.output, log, "r")
    d = fake_dft(a.output, log, "d")
    pinned = square(3, log, "p")
    pinned.metadata[mffw.RESOURCE_KEY] = "gpu"
    s = add_all([r.output["energy"], d.output, pinned.output], log, "s")
    return Flow([a, r, d, pinned, s], name="small"), (a, r, d, pinned, s)


def test_categories_by_name_metadata_and_default():
    flow, (a, r, d, pinned, s) = _flow()
    wf = mffw.flow_to_fireworks(flow)
    cats = {fw.tasks[0]["job"].uuid: fw.spec["_category"] for fw in wf.fws}
    assert cats == {a.uuid: "cpu", r.uuid: "gpu", d.uuid: "dft", pinned.uuid: "gpu", s.uuid: "cpu"}
    # input flow untouched
    assert "_category" not in r.config.manager_config


def test_category_map_reroutes_gpu_to_cpu():
    flow, (a, r, *_rest) = _flow()
    wf = mffw.flow_to_fireworks(flow, category_map={"gpu": "cpu"})
    assert {fw.spec["_category"] for fw in wf.fws} == {"cpu", "dft"}
    with pytest.raises(mffw.SubmissionError):
        mffw.flow_to_fireworks(flow, category_map={"gpu": "tpu"})


def test_explicit_bad_category_is_an_error():
    j = square(1, "/dev/null", "x")
    j.metadata[mffw.RESOURCE_KEY] = "quantum"
    with pytest.raises(mffw.SubmissionError, match="quantum"):
        mffw.flow_to_fireworks(j)


def test_no_store_in_firework_specs():
    flow, _ = _flow()
    wf = mffw.flow_to_fireworks(flow)
    for fw in wf.fws:
        d = fw.to_dict()
        assert d["spec"]["_tasks"][0]["store"] is None
        assert "JobStore" not in json.dumps(d)


def test_dynamic_children_are_routed_by_name():
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    j = fan_out(2, "/dev/null", "f")  # a cpu job that creates gpu jobs at run time
    wf = mffw.flow_to_fireworks(j, category_map={"dft": "cpu"})
    (fw,) = wf.fws
    assert fw.spec["_category"] == "cpu"
    job: Job = fw.tasks[0]["job"]
    store = JobStore(MemoryStore())
    store.connect()
    response = job.run(store=store)  # what the worker's JobFiretask does
    cats = [(c.name, c.config.manager_config["_category"]) for c in response.replace.jobs]
    assert sorted(cats)[:3] == [("add_all", "cpu"), ("mlip relax (fake)", "gpu"), ("mlip relax (fake)", "gpu")]
    assert {c for n, c in cats if n not in ("add_all", "mlip relax (fake)")} <= {"cpu"}  # jobflow's store_inputs


def test_campaign_like_names():
    from jobflow import job as jf_job

    @jf_job
    def noop():
        return None

    cats = {}
    for name in ("candidates", "relax candidates", "reference phases", "hull", "dft gate", "gpaw Al2Li",
                 "dft hull", "report", "gather", "pack references", "mlip static", "phonons"):
        j = noop()
        j.name = name
        cats[name] = mffw.job_category(j)
    assert cats == {"candidates": "cpu", "relax candidates": "gpu", "reference phases": "cpu", "hull": "cpu",
                    "dft gate": "cpu", "gpaw Al2Li": "dft", "dft hull": "cpu", "report": "cpu", "gather": "cpu",
                    "pack references": "cpu", "mlip static": "gpu", "phonons": "gpu"}
    j = noop()
    j.metadata["category"] = "gpu"  # what build_flow sets on "reference phases"
    assert mffw.job_category(j) == "gpu"


def test_api_key_value_is_refused(fake_mp_key):
    leaky = square(2, "/dev/null", f"tag-{fake_mp_key}")
    with pytest.raises(mffw.SecretInWorkflowError) as err:
        mffw.submit(leaky, launchpad=object())  # refused before the launchpad is touched
    assert fake_mp_key not in str(err.value)


def test_result_cache_uri_is_a_secret(monkeypatch):
    """The shared result cache's MongoDB URI may carry a password: a job given it as an argument is refused; a plain
    SQLite path in the same variable is not a secret."""
    uri = "mongodb://matfunnel:s3cret-pw-0123456789@db.example.org/matfunnel_jobs"
    monkeypatch.setenv("MATFUNNEL_RESULT_CACHE", uri)
    with pytest.raises(mffw.SecretInWorkflowError, match="MATFUNNEL_RESULT_CACHE") as err:
        mffw.submit(square(2, "/dev/null", uri), launchpad=object())
    assert "s3cret" not in str(err.value)
    monkeypatch.setenv("MATFUNNEL_RESULT_CACHE", "/scratch/run/cache.sqlite")
    mffw.check_no_secrets({"spec": {"_tasks": [{"job": {"function_args": ["/scratch/run/cache.sqlite"]}}]}})


def test_api_key_field_is_refused():
    with pytest.raises(mffw.SecretInWorkflowError, match="api_key"):
        mffw.check_no_secrets({"spec": {"_tasks": [{"job": {"function_kwargs": {"mp_api_key": "x" * 32}}}]}})
    mffw.check_no_secrets({"spec": {"api_key": None}})  # empty field: fine


def test_submit_to_mongoeco_spec_is_clean(fw_env, fake_mp_key):
    flow, (a, *_rest) = _flow(fw_env.log)
    wf_id = mffw.submit(flow, fw_env.launchpad_file)
    lp = fw_env.lp
    wf = lp.get_wf_by_fw_id(wf_id)
    assert len(wf.fws) == 5
    assert sorted(fw.spec["_category"] for fw in wf.fws) == ["cpu", "cpu", "dft", "gpu", "gpu"]
    assert all(fw.state in ("READY", "WAITING") for fw in wf.fws)
    raw = fw_env.all_documents()
    assert not any(fake_mp_key.encode() in blob for blob in raw.values())
    assert not any(b"JobStore" in blob for blob in raw.values())
    assert set(mffw.workflow_states(lp, wf_id).values()) <= {"READY", "WAITING"}
