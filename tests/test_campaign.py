"""Campaign specs, the DFT gate, and one end-to-end tiny campaign (real CHGNet, real GPAW, real hull)."""

from __future__ import annotations

import csv
import json

import pytest

from builders import b32_lial, fcc
from matfunnel.campaign.spec import CampaignSpec, SpecError, load_spec
from matfunnel.dft.gate import DftGateMaker


def test_spec_errors_are_clear(tmp_path):
    with pytest.raises(SpecError, match="needs 'chemsys'"):
        CampaignSpec.from_dict({"name": "x"})
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['fmaxx'\] in section 'relax'"):
        CampaignSpec.from_dict({"chemsys": "Li-O", "relax": {"fmaxx": 0.1}})
    assert CampaignSpec.from_dict({"chemsys": "Li-O", "phonons": {"enabled": True}}).phonons.enabled
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['nope'\] in section 'phonons'"):
        CampaignSpec.from_dict({"chemsys": "Li-O", "phonons": {"nope": 1}})
    with pytest.raises(SpecError, match="dft.engine"):
        CampaignSpec.from_dict({"chemsys": "Li-O", "dft": {"engine": "abinit"}})
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    from matfunnel.campaign.funnel import resolve

    with pytest.raises(SpecError, match="Xx"):
        resolve(CampaignSpec.from_dict({"chemsys": "Li-Xx"}))


def test_shipped_flow_specs_load():
    from pathlib import Path

    from matfunnel.campaign.funnel import build_flow

    specs = sorted(Path(__file__).parents[1].joinpath("flows").glob("*.yaml"))
    assert any(p.name == "quickstart.yaml" for p in specs)
    for p in specs:
        flow = build_flow(load_spec(p))
        assert [j.name for j in flow.jobs][:1] == ["candidates"]


def _doc(cid, converged=True, n=2):
    return {"label": cid, "converged": converged, "final_structure": fcc("Al", 4.0).as_dict() if n == 4 else
            b32_lial().as_dict() if n == 4 else {**fcc("Al", 4.0).get_primitive_structure().as_dict()}, "error": None}


def test_gate_sends_only_near_hull_candidates():
    gate = DftGateMaker(threshold=0.05, max_candidates=2)
    docs = [_doc("a"), _doc("b"), _doc("c"), _doc("d", converged=False), _doc("e"), _doc("f")]
    hull = {"rows": [
        {"entry_id": "a", "e_above_hull": 0.0}, {"entry_id": "b", "e_above_hull": 0.05},
        {"entry_id": "c", "e_above_hull": 0.051}, {"entry_id": "d", "e_above_hull": 0.0},
        {"entry_id": "e", "e_above_hull": 0.01}, {"entry_id": "f", "e_above_hull": None, "error": "bad"},
    ]}
    dec = gate.decisions(docs, hull)
    assert dec["a"] == "to DFT" and dec["e"] == "to DFT"  # the two lowest
    assert dec["b"].startswith("near hull; beyond dft.max_candidates")
    assert dec["c"].startswith("above threshold")
    assert dec["d"] == "skipped: MLIP relaxation not converged"
    assert dec["f"] == "skipped: bad"
    # the phonon gate drops dynamically unstable candidates before DFT
    phonons = {"enabled": True, "decisions": {"a": "unstable: imaginary optical mode at Gamma", "e": "stable"}}
    dec = gate.decisions(docs, hull, phonons)
    assert dec["a"].startswith("skipped: dynamically unstable") and dec["e"] == "to DFT" and dec["b"] == "to DFT"
    gate.engine = "none"
    assert gate.decisions(docs, hull)["a"] == "near hull; DFT disabled"


@pytest.mark.slow
def test_tiny_campaign_end_to_end(tmp_path, capsys):
    """Al-Li with user structures: known ground states land on the hull, DFT runs only for the
    gated candidates, and bad inputs are reported without stopping the campaign."""
    from matfunnel.cli import main

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    b32 = b32_lial(6.30)
    b32.to(filename=str(inputs / "LiAl_B32.cif"))
    al = fcc("Al", 4.0).get_primitive_structure()
    al.to(filename=str(inputs / "Al_fcc.json"))
    overlap = fcc("Al", 4.0)
    overlap.append("Li", [0.1, 0.0, 0.0])
    overlap.to(filename=str(inputs / "overlap.json"))
    (inputs / "garbage.cif").write_text("data_nothing\n_this is not a cif\n")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps({
        "name": "tiny", "chemsys": "Al-Li",
        "candidates": {"sources": ["aflow", "user"], "structures": ["inputs"], "max_candidates": 4, "max_sites": 2},
        "relax": {"fmax": 0.05, "max_steps": 200, "batch_size": 3},
        "hull": {"references": "offline", "competing_max_sites": 2},
        "dft": {"engine": "gpaw", "threshold": 0.03, "max_candidates": 1, "max_sites": 4, "preset": "quick"},
    }))
    run_dir = tmp_path / "run"
    assert main(["run", str(spec), "--run-dir", str(run_dir)]) == 0
    rows = {r["id"]: r for r in csv.DictReader((run_dir / "report.csv").open())}
    assert (run_dir / "hull.png").stat().st_size > 1000
    report = json.loads((run_dir / "report.json").read_text())
    assert report["reference"].startswith("offline:")
    # the offline hull's corners come from the same potential; CHGNet's elemental energies sit
    # within ~0.15 eV/atom of the MP DFT elemental references it was trained on
    offsets = report["reference_details"]["mlip_minus_mp_elemental"]
    assert set(offsets) == {"Al", "Li"} and all(abs(v) < 0.15 for v in offsets.values())

    by_formula = {}
    for r in rows.values():
        by_formula.setdefault(r["formula"], []).append(r)
    # fcc Al relaxed by the same potential is an elemental reference: on the hull, E_form 0
    al_rows = [r for r in by_formula["Al"] if r["status"] == "ok"]
    assert al_rows and min(float(r["e_above_hull"]) for r in al_rows) < 0.005
    assert min(abs(float(r["e_form_per_atom"])) for r in al_rows) < 0.005
    # B32 LiAl (the known ground state) is on or near the hull with a negative formation energy
    lial = [r for r in by_formula["LiAl"] if r["spacegroup"] == "Fd-3m"]
    assert lial and float(lial[0]["e_above_hull"]) < 0.02 and float(lial[0]["e_form_per_atom"]) < -0.05
    # bad inputs are flagged, named, and did not stop anything
    rejected = [r for r in rows.values() if r["status"] == "rejected"]
    assert any("garbage.cif" in r["error"] for r in rejected)
    assert any("overlap" in r["error"] and "closer than" in r["error"] for r in rejected)
    # the gate: DFT exactly for the rows it sent, at most dft.max_candidates
    to_dft = [r for r in rows.values() if r["gate"] == "to DFT"]
    assert len(to_dft) == 1
    for r in rows.values():
        assert (r["dft_e_above_hull"] != "") == (r["gate"] == "to DFT")
        if r["gate"].startswith("above threshold"):
            assert float(r["e_above_hull"]) > 0.03
    (chosen,) = to_dft
    assert 0.0 <= float(chosen["dft_e_above_hull"]) < 0.1
    assert report["dft_runs"] and all(run["error"] is None for run in report["dft_runs"])

    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "hull reference: offline" in printed and chosen["id"] in printed


def test_gate_vasp_engine_builds_atomate2_flow_only_for_gated():
    """VASP cannot run here (mocked by not running it): check the dynamic replacement flow the
    gate returns — atomate2's MP GGA double relax + static for each gated candidate only,
    routed to DFT workers, followed by the MP2020-hull collect job."""
    from jobflow import Flow, Response

    gate = DftGateMaker(engine="vasp", threshold=0.05)
    docs = [{"label": "near", "converged": True, "final_structure": b32_lial().as_dict()},
            {"label": "far", "converged": True, "final_structure": b32_lial(6.6).as_dict()}]
    hull = {"rows": [{"entry_id": "near", "e_above_hull": 0.01}, {"entry_id": "far", "e_above_hull": 0.2}],
            "phases": {}, "reference_entries": []}
    resp = DftGateMaker.make.original(gate, docs, hull, None, "Al-Li")
    assert isinstance(resp, Response) and isinstance(resp.replace, Flow)
    names = [j.name for j in resp.replace.jobs]
    assert names[-1] == "dft hull"
    inner = [j for f in resp.replace.jobs if isinstance(f, Flow) for j, _ in f.iterflow()]
    assert [j.name for j in inner] == ["MP GGA relax 1", "MP GGA relax 2", "MP GGA static"], names
    assert all(j.metadata.get("category") == "dft" for j in inner)
    assert resp.replace.jobs[-1].function_args[1] == ["near"]
