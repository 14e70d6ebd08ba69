"""Real FireWorks execution against a MongoDB wire server (mongoeco): unmodified ``rlaunch`` /
``lpad`` subprocesses, jobflow's ``JobFiretask``, results in a maggma ``MongoStore`` + GridFS."""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest
from jobflow import Flow

pytest.importorskip("fireworks")

from mf_fw_jobs import (  # noqa: E402
    add_all,
    executions,
    fake_dft,
    fake_relax,
    fan_out,
    flaky,
    has_mp_key,
    slow_once,
    square,
)

from matfunnel.campaign import fireworks as mffw  # noqa: E402


def _fw_by_name(lp, wf_id):
    wf = lp.get_wf_by_fw_id(wf_id)
    return {fw.name: fw for fw in wf.fws}


def _assert_no_secret(fw_env, key):
    leaks = [name for name, blob in fw_env.all_documents().items() if key.encode() in blob]
    assert not leaks, f"MP_API_KEY found in collections {leaks}"
    files = fw_env.files_containing(key)
    assert not files, f"MP_API_KEY found in files {files}"


def test_parallel_workers_run_every_firework_once(fw_env, fake_mp_key):
    log = fw_env.log
    squares = [square(i, log, f"sq{i}") for i in range(4)]
    relax = [fake_relax(squares[i].output, log, f"relax{i}") for i in range(2)]
    dft = fake_dft(squares[2].output, log, "dft")
    fan = fan_out(2, log, "fan")  # cpu; creates 2 gpu jobs + 1 cpu job at run time
    key = has_mp_key(log, "key")
    total = add_all([s.output for s in squares] + [r.output["energy"] for r in relax] + [dft.output, fan.output],
                    log, "total")
    flow = Flow([*squares, *relax, dft, fan, key, total], name="parallel")
    wf_id = mffw.submit(flow, fw_env.launchpad_file)

    # two rapidfire workers competing for cpu jobs; only the gpu one takes gpu jobs, only the
    # other one dft jobs (categories from workflows/my_fworker_*.yaml + cpu)
    fw_env.set_categories("gpu", ["gpu", "cpu"])
    fw_env.set_categories("dft", ["dft", "cpu"])
    workers = [fw_env.rlaunch("gpu", "worker_gpu"), fw_env.rlaunch("dft", "worker_dft")]
    fw_env.wait(workers, timeout=120)
    assert [w.returncode for w in workers] == [0, 0], fw_env.worker_output()

    lp = fw_env.lp
    wf = lp.get_wf_by_fw_id(wf_id)
    assert set(wf.fw_states.values()) == {"COMPLETED"}, (wf.fw_states, fw_env.worker_output())

    # every job body ran exactly once (the log is appended when a job starts)
    ran = collections.Counter(executions(log))
    expected = {f"sq{i}" for i in range(4)} | {"relax0", "relax1", "dft", "fan", "fan-child0", "fan-child1",
                                               "fan-sum", "key", "total"}
    assert set(ran) == expected
    assert all(n == 1 for n in ran.values()), ran
    # ... and every Firework has exactly one launch
    for fw in wf.fws:
        assert len(fw.launches) == 1 and not fw.archived_launches, fw.name

    # routing: gpu jobs on the gpu worker, dft on the dft worker, cpu jobs shared
    ran_on = {fw.fw_id: fw.launches[0].fworker.name for fw in wf.fws}
    cats = {fw.fw_id: fw.spec["_category"] for fw in wf.fws}
    names = {fw.fw_id: fw.name for fw in wf.fws}
    for fw_id, cat in cats.items():
        if cat == "gpu":
            assert ran_on[fw_id] == "gpu-worker", names[fw_id]
        elif cat == "dft":
            assert ran_on[fw_id] == "dft-worker", names[fw_id]
    by_name = collections.defaultdict(set)
    for fw_id, name in names.items():
        by_name[name].add(cats[fw_id])
    # 2 static + 2 generated at run time by fan_out (a cpu job): all gpu
    assert sum(name == "mlip relax (fake)" for name in names.values()) == 4
    assert by_name["mlip relax (fake)"] == {"gpu"} and by_name["dft static (fake)"] == {"dft"}
    assert by_name["fan_out"] == {"cpu"} and by_name["add_all"] == {"cpu"} and by_name["square"] == {"cpu"}
    assert len(set(ran_on.values())) == 2

    # results from the MongoStore (+ GridFS for the trajectories)
    store = fw_env.store()
    try:
        assert store.get_output(key.uuid) is True  # the worker had the key in its environment
        expected_total = sum(i * i for i in range(4)) - 0 - 1 + (4 + 0.5) + (-0.0 - 1.0)
        assert store.get_output(total.uuid) == pytest.approx(expected_total)
        out = store.get_output(relax[1].uuid, load=True)
        assert out["energy"] == -1.0 and len(out["trajectories"][0]) == 200
        assert store.get_output(fan.uuid) == pytest.approx(-1.0)  # the replacement's output
        assert store.count({"uuid": {"$in": [s.uuid for s in squares]}}) == 4
    finally:
        store.close()

    _assert_no_secret(fw_env, fake_mp_key)


def test_killed_worker_is_recovered_by_detect_lostruns(fw_env, fake_mp_key):
    log, marker = fw_env.log, str(fw_env.root / "slow.started")
    slow = slow_once(1, log, "slow", marker)
    after = square(slow.output, log, "after", pause=0)
    wf_id = mffw.submit(Flow([slow, after], name="kill"), fw_env.launchpad_file)

    victim = fw_env.rlaunch("cpu", "worker_victim")
    deadline = time.monotonic() + 60
    while not os.path.exists(marker):
        assert victim.poll() is None and time.monotonic() < deadline, fw_env.worker_output()
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)  # the whole worker: rlaunch + rocket + ping thread
    victim.wait(timeout=10)

    lp = fw_env.lp
    assert _fw_by_name(lp, wf_id)["slow_once"].state == "RUNNING"
    time.sleep(2.5)
    res = fw_env.lpad("detect_lostruns", "--time", "2", "--rerun")
    assert res.returncode == 0, res.stdout + res.stderr
    fws = _fw_by_name(lp, wf_id)
    assert fws["slow_once"].state == "READY", res.stdout + res.stderr
    # the wrapper finds nothing more to recover
    assert mffw.recover_lost_runs(fw_env.launchpad_file, expiration_secs=2) == []

    rescuer = fw_env.rlaunch("cpu", "worker_rescue")
    fw_env.wait([rescuer], timeout=90)
    fws = _fw_by_name(lp, wf_id)
    assert {fw.state for fw in fws.values()} == {"COMPLETED"}, fw_env.worker_output()
    assert len(fws["slow_once"].archived_launches) == 1  # the killed launch, kept for the record
    assert collections.Counter(executions(log)) == {"slow": 2, "after": 1}
    store = fw_env.store()
    try:
        assert store.get_output(after.uuid) == 4
        assert store.count({"uuid": slow.uuid}) == 1  # the killed run wrote nothing
    finally:
        store.close()
    _assert_no_secret(fw_env, fake_mp_key)


def test_failing_job_fizzles_and_reruns(fw_env, fake_mp_key):
    log, fixed = fw_env.log, str(fw_env.root / "fixed")
    bad = flaky(3, log, "flaky", fixed)
    child = square(bad.output, log, "child", pause=0)
    wf_id = mffw.submit(Flow([bad, child], name="fizzle"), fw_env.launchpad_file)

    w = fw_env.rlaunch("cpu", "worker_1")
    fw_env.wait([w], timeout=60)
    lp = fw_env.lp
    fws = _fw_by_name(lp, wf_id)
    assert fws["flaky"].state == "FIZZLED"
    assert fws["square"].state == "WAITING"
    stored = fws["flaky"].launches[0].action.stored_data
    assert "deliberate failure of flaky" in stored["_exception"]["_stacktrace"]
    assert "RuntimeError" in stored["_exception"]["_stacktrace"]
    store = fw_env.store()
    try:
        assert store.count({"uuid": bad.uuid}) == 0
    finally:
        store.close()

    open(fixed, "w").close()  # "fix the input", then rerun what fizzled
    assert mffw.rerun_fizzled(fw_env.launchpad_file, wf_id) == [fws["flaky"].fw_id]
    w = fw_env.rlaunch("cpu", "worker_2")
    fw_env.wait([w], timeout=60)
    fws = _fw_by_name(lp, wf_id)
    assert {fw.state for fw in fws.values()} == {"COMPLETED"}, fw_env.worker_output()
    store = fw_env.store()
    try:
        assert store.get_output(child.uuid) == 900
    finally:
        store.close()
    _assert_no_secret(fw_env, fake_mp_key)


def test_secret_search_finds_a_planted_leak(fw_env, fake_mp_key):
    """Negative control: the searches used above do see a key in a document, blob or file."""
    client = fw_env.server.client()
    try:
        client[fw_env.store_db]["outputs"].insert_one({"output": {"note": f"key={fake_mp_key}"}})
        (fw_env.root / "worker_x").mkdir()
        (fw_env.root / "worker_x" / "FW.json").write_text(f'{{"spec": {{"MP_API_KEY": "{fake_mp_key}"}}}}')
        with pytest.raises(AssertionError, match="collections"):
            _assert_no_secret(fw_env, fake_mp_key)
        client[fw_env.store_db]["outputs"].delete_many({})
        with pytest.raises(AssertionError, match="files"):
            _assert_no_secret(fw_env, fake_mp_key)
    finally:
        client.close()
