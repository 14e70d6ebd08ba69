"""Resume: a campaign killed with SIGKILL mid-relaxation reruns with the same command and
recomputes nothing that had finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from matfunnel.common.cache import ResultCache, content_key


def test_content_key_is_stable_and_input_sensitive():
    from builders import fcc

    a = fcc("Al", 4.05)
    key = content_key("x", [a.lattice.matrix.tolist()], {"fmax": 0.05})
    assert key == content_key("x", [a.lattice.matrix.tolist()], {"fmax": 0.05})
    assert key != content_key("x", [a.lattice.matrix.tolist()], {"fmax": 0.02})


def test_cache_roundtrip_across_processes(tmp_path):
    path = tmp_path / "c.sqlite"
    code = ("import sys; from matfunnel.common.cache import ResultCache; "
            "c = ResultCache(sys.argv[1]); [c.put(f'{sys.argv[2]}-{i}', 'k', {'i': i}) for i in range(50)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(p)]) for p in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    cache = ResultCache(path)
    assert cache.count() == 200 and cache.get("3-49") == {"i": 49}


@pytest.mark.slow
def test_sigkill_then_resume_recomputes_nothing_finished(tmp_path):
    spec = tmp_path / "resume.yaml"
    spec.write_text(json.dumps({
        "name": "resume", "chemsys": "Al-Li",
        "candidates": {"sources": ["aflow"], "max_candidates": 4, "max_sites": 2},
        "relax": {"fmax": 0.05, "max_steps": 150, "batch_size": 4},
        "hull": {"references": "offline", "competing_max_sites": 1},
        "dft": {"engine": "none"},
    }))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "matfunnel.cli", "run", str(spec), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache_file = run_dir / "cache.sqlite"
    deadline = time.time() + 400
    done_before = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            if cache_file.exists():
                done_before = ResultCache(cache_file).count("mlip-relax")
                if done_before >= 2:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, "campaign finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = ResultCache(cache_file).count("mlip-relax")
    assert killed_at >= 2 and not (run_dir / "report.json").exists()

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["rows"] and all(r["status"] in ("ok", "unconverged") for r in report["rows"])
    # every relaxation finished before the kill was reused, none recomputed
    from matfunnel.common.store import embedded_store

    store = embedded_store(run_dir)
    docs = [d for j in store.query({"name": {"$regex": "relax [0-9]+$"}}, load=True) for d in (j["output"] or [])]
    cached = sum(bool(d.get("cached")) for d in docs)
    assert cached >= killed_at
    assert ResultCache(cache_file).count("mlip-relax") == len({d["label"] for d in docs})
