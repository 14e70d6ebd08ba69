"""The closed loop (campaign/loop.py): DFT results fine-tune the potential, which re-screens the rest.

End to end with real GPAW, real CHGNet weights and a real fine-tuning run; killed with SIGKILL inside the
loop's fine-tuning and resumed with the same command.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from matfunnel.campaign.loop import dft_frames, merged_dft, training_docs
from matfunnel.campaign.spec import CampaignSpec, SpecError
from matfunnel.common.cache import ResultCache
from matfunnel.common.documents import DftDoc
from matfunnel.dft.gate import DONE, TO_DFT, DftGateMaker

ROOT = Path(__file__).resolve().parents[1]


def test_loop_spec_is_checked():
    with pytest.raises(SpecError, match="fine-tuning starts from chgnet-0.3.0"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "potential": {"name": "sevennet-0"}, "loop": {"rounds": 1}})
    with pytest.raises(SpecError, match="trains on forces and stresses only"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "loop": {"rounds": 1, "fine_tune": {"energy": "refit"}}})
    with pytest.raises(SpecError, match="unknown key"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "loop": {"rounds": 1, "fine_tune": {"learning_rate": 1}}})
    with pytest.raises(SpecError, match="fine-tunes on the GPAW results"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "dft": {"engine": "vasp"}, "loop": {"rounds": 1}})
    spec = CampaignSpec.from_dict({"chemsys": "Al-Li", "loop": {"rounds": 2, "budget": 3}})
    assert spec.loop.rounds == 2 and spec.loop.budget == 3


def test_gate_never_sends_a_checked_candidate_again():
    from matfunnel.common.documents import HullDoc

    al = {"label": None, "converged": True, "error": None,
          "final_structure": Structure(Lattice.cubic(4.0), ["Al"], [[0, 0, 0]]).as_dict()}
    docs = [{**al, "label": "a"}, {**al, "label": "b"}]
    hull = HullDoc(rows=[{"entry_id": "a", "e_above_hull": 0.0}, {"entry_id": "b", "e_above_hull": 0.01}])
    assert DftGateMaker(max_candidates=5).decisions(docs, hull) == {"a": TO_DFT, "b": TO_DFT}
    assert DftGateMaker(max_candidates=5, exclude=["a"]).decisions(docs, hull) == {"a": DONE, "b": TO_DFT}


def test_merged_dft_keeps_each_candidates_dft_round():
    r0 = DftDoc(engine="gpaw", threshold=0.1, decisions={"a": TO_DFT, "b": "near hull; beyond dft.max_candidates=1"},
                results=[{"id": "a", "dft_e_above_hull": 0.0}])
    r1 = DftDoc(engine="gpaw", threshold=0.1, decisions={"a": DONE, "b": TO_DFT},
                results=[{"id": "b", "dft_e_above_hull": 0.02}])
    merged = merged_dft([r0, r1])
    assert merged.decisions == {"a": TO_DFT, "b": TO_DFT}
    assert [r["id"] for r in merged.results] == ["a", "b"]


def test_a_structure_reused_across_rounds_is_one_frame():
    """A competing phase computed in round 0 and found in the result cache in round 1 is counted once."""
    def run(label, a):
        s = Structure(Lattice.cubic(a), ["Al"], [[0, 0, 0]])
        return {"label": label, "structure": s.as_dict(), "energy": -3.0, "forces": [[0.0, 0.0, 0.0]],
                "stress": [0.0] * 6, "code": "gpaw"}
    r0 = DftDoc(engine="gpaw", runs=[run("Al", 4.0), run("cand-a", 4.1)])
    r1 = DftDoc(engine="gpaw", runs=[run("Al", 4.0), run("cand-b", 4.2), {"label": "bad", "error": "SCF failed"}])
    frames, skipped = dft_frames([r0, r1])
    assert [f.source for f in frames] == ["round 0 run Al", "round 0 run cand-a", "round 1 run cand-b"]
    assert len(skipped) == 1 and "round 1 run bad" in skipped[0] and "SCF failed" in skipped[0]
    docs, _ = training_docs([r0, r1])
    assert len(docs) == 3


@pytest.mark.slow
@pytest.mark.dft
def test_loop_end_to_end_resumes_after_sigkill(tmp_path):
    spec = tmp_path / "loop.yaml"
    spec.write_text(json.dumps({
        "name": "loop", "chemsys": "Al-Li",
        "candidates": {"sources": ["aflow"], "max_candidates": 4, "max_sites": 2},
        "relax": {"fmax": 0.05, "max_steps": 200, "batch_size": 4},
        "hull": {"references": "offline", "competing_max_sites": 2},
        # GPAW at its cheapest: this checks the loop's machinery, not DFT accuracy
        "dft": {"engine": "gpaw", "threshold": 0.2, "max_candidates": 1, "max_sites": 2, "preset": "quick",
                "settings": {"ecut": 200.0, "kpts": [2, 2, 2]}},
        "loop": {"rounds": 1, "budget": 2, "fine_tune": {"epochs": 20, "batch_size": 1, "lr": 1e-4}},
    }))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "matfunnel.cli", "run", str(spec), "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 900
    state = None
    try:
        while time.time() < deadline and proc.poll() is None:
            found = list((run_dir / "fine-tune").glob("*/log.csv"))
            if found and len(found[0].read_text().splitlines()) >= 3:  # header, epoch 0, epoch 1
                state = found[0].parent
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the campaign ended before the loop's fine-tuning could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert state is not None
    with open(state / "steps.csv") as fh:
        steps_before = list(csv.DictReader(fh))
    gpaw_before = ResultCache(run_dir / "cache.sqlite").count("gpaw")
    assert gpaw_before >= 2 and not (state / "result.json").exists()

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    (round1,) = report["loop"]["rounds"]
    # the fine-tuning resumed: the steps done before the kill are kept, not redone
    assert Path(round1["checkpoint"]).parent == state
    with open(state / "steps.csv") as fh:
        steps_after = list(csv.DictReader(fh))
    assert steps_after[:len(steps_before)] == steps_before and len(steps_after) > len(steps_before)
    # round 0's DFT runs were reused; round 1 sent one new candidate and never the first one again
    to_dft = [r for r in report["rows"] if r["gate"] == TO_DFT]
    assert len(to_dft) == 2 and {r.get("dft_round") for r in to_dft} == {0, 1}
    assert all(r["dft_e_above_hull"] is not None for r in to_dft)
    first = next(r["id"] for r in to_dft if r["dft_round"] == 0)
    assert round1["decisions"][first] == DONE
    assert round1["n_frames"] >= gpaw_before and round1["budget_left"] == 1
    # the errors against DFT are measured before and after, on the DFT structures the model trained on
    assert round1["stress_mae_after"] < round1["stress_mae_before"]
    rows = list(csv.DictReader((run_dir / "loop.csv").open()))
    assert rows[0]["round"] == "1" and rows[0]["checkpoint"] == round1["checkpoint"]
    # the fine-tuned checkpoint is a potential every stage loads by name
    from matfunnel.potential import load_potential

    pot = load_potential("chgnet-0.3.0", checkpoint=round1["checkpoint"], calibrate=False)
    assert pot.model_info()["weights_sha256"]
    # a third run recomputes nothing: every relaxation, DFT run and fine-tuning is reused
    stamp = (state / "checkpoint.pt").stat().st_mtime_ns
    gpaw_done = ResultCache(run_dir / "cache.sqlite").count("gpaw")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (state / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert ResultCache(run_dir / "cache.sqlite").count("gpaw") == gpaw_done
    assert json.loads((run_dir / "report.json").read_text())["loop"]["rounds"][0]["checkpoint"] == round1["checkpoint"]
    printed = subprocess.run([sys.executable, "-m", "matfunnel.cli", "report", str(run_dir)], capture_output=True,
                             text=True, timeout=300, env=env).stdout
    assert "round 1: fine-tuned on" in printed
