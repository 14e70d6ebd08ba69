"""The embedded job store (maggma MontyStore on SQLite): persistence and concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from jobflow import job

from matfunnel.common.store import COLLECTIONS, embedded_store

N_PROCS = 8
JOBS_PER_PROC = 12


@job(data="trajectories")
def _payload(proc: int, i: int) -> dict:
    return {"proc": proc, "i": i, "energy": -proc - i / 100, "trajectories": [[proc, i, k] for k in range(50)]}


def _writer(run_dir: str, proc: int, start_at: float, errors) -> None:
    try:
        while time.time() < start_at:  # all processes connect (and write) at the same moment
            time.sleep(0.001)
        store = embedded_store(run_dir)
        for i in range(JOBS_PER_PROC):
            j = _payload(proc, i)
            j.metadata["writer"] = proc
            j.run(store=store)  # exactly what jobflow's managers do: output + blobs into the store
        store.close()
    except BaseException as exc:  # pragma: no cover - reported through the queue
        errors.put(f"process {proc}: {type(exc).__name__}: {exc}")
        raise


def test_collections_created_up_front(tmp_path):
    store = embedded_store(tmp_path)
    files = {p.name for p in (tmp_path / "store").rglob("*.collection")}
    assert {f"{c}.collection" for c in COLLECTIONS} <= files
    assert store.count() == 0
    store.close()


def test_persists_across_connections(tmp_path):
    store = embedded_store(tmp_path)
    j = _payload(0, 1)
    j.run(store=store)
    store.close()
    again = embedded_store(tmp_path)
    out = again.get_output(j.uuid, load=True)
    assert out["energy"] == pytest.approx(-0.01)
    assert out["trajectories"][3] == [0, 1, 3]
    again.close()


def test_parallel_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    start_at = time.time() + 1.5
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), p, start_at, errors)) for p in range(N_PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    msgs = []
    while not errors.empty():
        msgs.append(errors.get())
    assert not msgs, msgs
    assert [p.exitcode for p in procs] == [0] * N_PROCS

    store = embedded_store(tmp_path)
    try:
        docs = list(store.query({}, properties=["uuid", "output", "metadata"]))
        assert len(docs) == N_PROCS * JOBS_PER_PROC
        assert len({d["uuid"] for d in docs}) == N_PROCS * JOBS_PER_PROC
        seen = {(d["output"]["proc"], d["output"]["i"]) for d in docs}
        assert seen == {(p, i) for p in range(N_PROCS) for i in range(JOBS_PER_PROC)}
        for d in docs:
            assert d["metadata"]["writer"] == d["output"]["proc"]
        # every trajectory blob is there and loads back
        blobs = store.additional_stores["data"]
        assert blobs.count() == N_PROCS * JOBS_PER_PROC
        some = docs[-1]
        out = store.get_output(some["uuid"], load=True)
        assert out["trajectories"][-1] == [some["output"]["proc"], some["output"]["i"], 49]
    finally:
        store.close()
