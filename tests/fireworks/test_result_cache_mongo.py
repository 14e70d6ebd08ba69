"""The MongoDB result cache that FireWorks workers share (real wire protocol: the mongoeco server).

A worker killed in the middle of a ``RelaxMaker`` job loses only the structures in flight: the rerun of the
job (what ``lpad detect_lostruns --rerun`` starts) reuses every structure that had finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

from matfunnel.common.cache import MongoResultCache, open_cache

# one RelaxMaker job in its own process, on an analytic potential slowed to ~20 ms per evaluation (so the
# kill lands mid-batch); argv: output JSON path
JOB = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from jobflow import run_locally
    from pymatgen.core import Lattice, Structure
    from matfunnel.engine.testing import PairPotential
    from matfunnel.makers import RelaxMaker
    from matfunnel.potential.registry import REGISTERED, PotentialEntry

    class Slow(PairPotential):
        def evaluate(self, *a, **kw):
            time.sleep(0.02)
            return super().evaluate(*a, **kw)

    REGISTERED["pair-slow"] = PotentialEntry("pair-slow", lambda device, **kw: Slow(device=device))
    rng = np.random.default_rng(5)
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    structures = []
    for k in range(8):  # from nearly relaxed to strongly rattled: they finish one after another
        lat = 3.6 * (np.eye(3) + 0.01 * (k + 1) * rng.normal(size=(3, 3)))
        frac = np.array(fcc) + (0.005 + 0.008 * k) * rng.normal(size=(4, 3))  # the same inputs in every run
        structures.append(Structure(Lattice(lat), ["Ar"] * 4, frac))
    job = RelaxMaker(potential="pair-slow", fmax=0.002, max_steps=400, progress=False).make(structures)
    out = run_locally(job, ensure_success=True, log=False)
    docs = next(iter(out.values()))[1].output
    json.dump([{"label": d["label"], "cached": d["cached"], "energy": d["energy"]} for d in docs],
              open(sys.argv[1], "w"))
""")


def test_mongo_cache_roundtrip_across_processes(mongoeco_server):
    uri = mongoeco_server.uri + f"cache_{uuid.uuid4().hex[:8]}"
    code = ("import sys; from matfunnel.common.cache import open_cache; "
            "c = open_cache(sys.argv[1]); [c.put(f'{sys.argv[2]}-{i}', 'k', {'i': i}) for i in range(20)]; "
            "c.put('shared', 'k', {'by': sys.argv[2]})")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(p)]) for p in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    cache = open_cache(uri)
    assert isinstance(cache, MongoResultCache) and "mongodb" not in repr(cache)
    assert cache.count() == 61 and cache.count("k") == 61 and cache.get("2-19") == {"i": 19}
    assert cache.get("shared")["by"] in {"0", "1", "2"} and cache.get("missing") is None


def test_killed_relax_job_reruns_only_what_had_not_finished(mongoeco_server, tmp_path):
    uri = mongoeco_server.uri + f"cache_{uuid.uuid4().hex[:8]}"
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "MATFUNNEL_RESULT_CACHE": uri}
    cache = open_cache(uri)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "first.json")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while cache.count("mlip-relax") < 2:
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finished = cache.count("mlip-relax")
    assert 2 <= finished < 8 and not (tmp_path / "first.json").exists()

    out = subprocess.run([sys.executable, str(script), str(tmp_path / "again.json")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    docs = json.loads((tmp_path / "again.json").read_text())
    assert len(docs) == 8 and sum(d["cached"] for d in docs) == finished  # nothing finished was recomputed
    assert cache.count("mlip-relax") == 8
    # a third run: everything from the cache, same numbers
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "third.json")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    third = json.loads((tmp_path / "third.json").read_text())
    assert all(d["cached"] for d in third) and [d["energy"] for d in third] == [d["energy"] for d in docs]
