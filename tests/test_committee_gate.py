"""Issue 22, the committee's gate: every member's energy at the relaxed structures, one hull per member, the gate's
rules on the members' spread, the report's columns and the spec's keys; one tiny offline committee campaign.

The gate rules and the per-member hull run on constructed documents (chosen energies, no model); the relaxation
test uses CHGNet with ASE's Lennard-Jones as the second member (``tests/committee_members.py``); the campaign uses
CHGNet 0.3.0 + SevenNet-0.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from builders import b32_lial, fcc
from matfunnel.campaign.spec import CampaignSpec, SpecError
from matfunnel.common.documents import DftDoc, HullDoc, ReferencesDoc
from matfunnel.dft.gate import BUDGET_MIN_PROBABILITY, DftGateMaker, gate_score, within_probability
from matfunnel.hull.committee import committee_hulls
from matfunnel.hull.entries import mlip_entry
from matfunnel.hull.maker import HullMaker
from matfunnel.hull.phase_diagram import compute_hull
from matfunnel.hull.references import reference_entries

# --- the gate's rules on constructed hull rows ------------------------------------------------------------------


def _doc(cid: str, converged: bool = True) -> dict:
    return {"label": cid, "converged": converged, "error": None,
            "final_structure": fcc("Al", 4.0).get_primitive_structure().as_dict()}


def _row(cid: str, e_hull: float | None, mean: float | None = None, std: float | None = None) -> dict:
    row: dict = {"entry_id": cid, "e_above_hull": e_hull}
    if mean is not None:
        row.update(e_above_hull_mean=mean, e_above_hull_std=std,
                   e_above_hull_members={"m1": mean - (std or 0), "m2": mean + (std or 0)})
    return row


def test_probability_is_the_normal_cdf_with_a_floor():
    assert within_probability(0.05, 0.02, 0.05) == pytest.approx(0.5)
    assert within_probability(0.03, 0.02, 0.05) == pytest.approx(0.8413447, abs=1e-6)  # one sigma below
    assert within_probability(0.07, 0.02, 0.05) == pytest.approx(0.1586553, abs=1e-6)
    # a committee that agrees exactly: the spread is floored (no division by zero), the answer is (almost) sure
    assert within_probability(0.049, 0.0, 0.05) == pytest.approx(0.8413447, abs=1e-6)  # 1 meV below, floor 1 meV
    assert within_probability(0.06, 0.0, 0.05) < 1e-20
    # no spread at all: 1 or 0 from the mean
    assert within_probability(0.05, None, 0.05) == 1.0 and within_probability(0.0501, None, 0.05) == 0.0


def test_plain_and_mean_k_sigma_disagree_where_the_committee_is_unsure():
    hull = HullDoc(rows=[
        _row("unsure", 0.08, mean=0.07, std=0.03),  # primary above the threshold, the committee not sure
        _row("agreed", 0.04, mean=0.06, std=0.0),  # primary below, the committee's mean above, no doubt
        _row("low", 0.0, mean=0.01, std=0.01),
    ])
    docs = [_doc("unsure"), _doc("agreed"), _doc("low")]
    plain, plain_scores = DftGateMaker(threshold=0.05, max_candidates=5, rule="plain").decide(docs, hull)
    assert plain == {"unsure": "above threshold (0.080 > 0.05 eV/atom)", "agreed": "to DFT", "low": "to DFT"}
    assert plain_scores == {}  # the plain rule keeps its documents as they were
    gate = DftGateMaker(threshold=0.05, max_candidates=5, rule="mean_k_sigma", k=1.0)
    dec, scores = gate.decide(docs, hull)
    assert dec["unsure"] == "to DFT" and dec["low"] == "to DFT"
    assert dec["agreed"] == ("above threshold (rule mean_k_sigma: mean - k*sigma = 0.060 - 1*0.000 = 0.060 "
                             "> 0.05 eV/atom)")
    assert scores["unsure"]["value"] == pytest.approx(0.04) and scores["unsure"]["rule"] == "mean_k_sigma"
    # the default (auto) on a committee's hull: the mean rule; its numbers are in the scores, its name in the texts
    auto, auto_scores = DftGateMaker(threshold=0.05, max_candidates=5).decide(docs, hull)
    assert auto == {"unsure": "above threshold (rule mean: committee mean 0.070 > 0.05 eV/atom; sigma 0.030)",
                    "agreed": "above threshold (rule mean: committee mean 0.060 > 0.05 eV/atom; sigma 0.000)",
                    "low": "to DFT"}
    assert auto_scores["low"]["rule"] == "mean" and auto_scores["low"]["value"] == pytest.approx(0.01)
    assert DftGateMaker(threshold=0.05, engine="none").decisions(docs, hull)["low"] == (
        "near hull; DFT disabled (rule mean: 0.010 eV/atom)")
    # k = 0: the committee's mean alone
    dec0 = DftGateMaker(threshold=0.05, rule="mean_k_sigma", k=0.0).decisions(docs, hull)
    assert dec0["unsure"].startswith("above threshold (rule mean_k_sigma") and dec0["low"] == "to DFT"
    # the order to DFT under mean_k_sigma: mean - k*sigma, lowest first
    one = DftGateMaker(threshold=0.05, max_candidates=1, rule="mean_k_sigma", k=1.0).decisions(docs, hull)
    assert one["low"] == "to DFT"
    assert one["unsure"] == "near hull; beyond dft.max_candidates=1 (rule mean_k_sigma: 0.040 eV/atom)"
    # probability: the unsure one is 25 % likely within the threshold, the low one 99.9 %
    pdec, pscores = DftGateMaker(threshold=0.05, rule="probability", min_probability=0.5).decide(docs, hull)
    assert pscores["unsure"]["probability"] == pytest.approx(within_probability(0.07, 0.03, 0.05))
    assert pdec["unsure"].startswith("unlikely within threshold (rule probability: P(e_hull <= 0.05) = 0.252 < 0.5")
    assert pdec["low"] == "to DFT" and pdec["agreed"].startswith("unlikely within threshold")
    assert DftGateMaker(threshold=0.05, rule="probability", min_probability=0.2).decisions(docs, hull)["unsure"] \
        == "to DFT"


def test_budget_spends_dft_in_order_of_probability_ties_by_mean_then_id():
    rows = [
        _row("p50", 0.0, mean=0.05, std=0.02),  # P = 0.5
        _row("p84", 0.2, mean=0.03, std=0.02),  # P = 0.84: the primary's own value plays no part
        _row("p16b", 0.0, mean=0.07, std=0.02),  # P = 0.16, a tie with p16a
        _row("p16a", 0.0, mean=0.07, std=0.02),
        _row("p99", 0.0, mean=0.0, std=0.02),  # P = 0.994
        _row("never", 0.0, mean=0.3, std=0.02),  # P ~ 0: below BUDGET_MIN_PROBABILITY, not even considered
    ]
    docs = [_doc(r["entry_id"]) for r in rows]
    gate = DftGateMaker(threshold=0.05, max_candidates=3, rule="budget")
    dec, scores = gate.decide(docs, HullDoc(rows=rows))
    assert {cid for cid, d in dec.items() if d == "to DFT"} == {"p50", "p84", "p99"}
    assert dec["p16a"].startswith("near hull; beyond dft.max_candidates=3 (rule budget: P = 0.159)")
    assert dec["p16b"].startswith("near hull; beyond dft.max_candidates=3")
    assert scores["never"]["probability"] < BUDGET_MIN_PROBABILITY
    assert dec["never"].startswith("unlikely within threshold (rule budget: P(e_hull <= 0.05) = 0.000 < 0.01")
    # one more run: the tie goes to the smaller id (same mean, same size)
    four = DftGateMaker(threshold=0.05, max_candidates=4, rule="budget").decisions(docs, HullDoc(rows=rows))
    assert four["p16a"] == "to DFT" and four["p16b"].startswith("near hull; beyond")
    # ties in probability are broken by the lower mean
    tied = [_row("x", 0.0, mean=0.0, std=0.0), _row("y", 0.0, mean=-0.01, std=0.0)]  # both P = 1
    assert DftGateMaker(threshold=0.05, max_candidates=1, rule="budget").decisions(
        [_doc("x"), _doc("y")], HullDoc(rows=tied)) == {"x": "near hull; beyond dft.max_candidates=1 (rule budget: "
                                                              "P = 1.000)", "y": "to DFT"}


def test_rows_without_a_spread_fall_back_and_say_so():
    rows = [_row("nospread_low", 0.02), _row("nospread_high", 0.09),
            _row("one_member", 0.03, mean=0.03, std=None)]  # only one member produced a value
    docs = [_doc(r["entry_id"]) for r in rows] + [_doc("unconverged", converged=False)]
    rows.append(_row("unconverged", 0.0, mean=0.0, std=0.01))
    hull = HullDoc(rows=rows)
    mks, scores = DftGateMaker(threshold=0.05, rule="mean_k_sigma", k=2.0, engine="none").decide(docs, hull)
    assert mks["nospread_low"] == "near hull; DFT disabled (rule mean_k_sigma: no committee spread, plain rule)"
    assert mks["nospread_high"] == ("above threshold (0.090 > 0.05 eV/atom; rule mean_k_sigma: no committee spread, "
                                    "plain rule)")
    assert mks["one_member"].endswith("no committee spread, plain rule)")
    assert mks["unconverged"] == "skipped: MLIP relaxation not converged"
    assert scores["nospread_low"]["spread"] is False and scores["nospread_low"]["sigma"] is None
    prob = DftGateMaker(threshold=0.05, rule="probability", engine="none").decisions(docs, hull)
    assert prob["nospread_low"].startswith("near hull; DFT disabled")
    assert prob["nospread_high"].startswith("above threshold (0.090 > 0.05 eV/atom; rule probability: no committee "
                                            "spread, P = 0)")
    # the plain rule's texts are exactly today's
    plain = DftGateMaker(threshold=0.05, engine="none", rule="plain").decisions(docs, hull)
    assert plain["nospread_low"] == "near hull; DFT disabled" and plain["nospread_high"].endswith("eV/atom)")
    # the default (auto) without any committee row is the plain rule, its texts and documents unchanged
    single = HullDoc(rows=[_row("nospread_low", 0.02), _row("nospread_high", 0.09)])
    gate = DftGateMaker(threshold=0.05, engine="none")
    assert gate.resolved(single).rule == "plain" and gate.resolved(hull).rule == "mean"
    assert gate.decide(docs[:2], single) == ({"nospread_low": "near hull; DFT disabled",
                                              "nospread_high": "above threshold (0.090 > 0.05 eV/atom)"}, {})
    doc = DftGateMaker.make.original(gate, docs[:2], single, None, "Al")
    assert doc.rule == "plain" and doc.scores == {} and doc.rule_parameters == {}
    doc = DftGateMaker.make.original(gate, docs, hull, None, "Al")
    assert doc.rule == "mean" and set(doc.scores) == {"nospread_low", "nospread_high", "one_member", "unconverged"}
    assert doc.decisions["nospread_low"] == "near hull; DFT disabled (rule mean: no committee spread, plain rule)"
    with pytest.raises(ValueError, match="unknown DFT gate rule 'sigma'"):
        DftGateMaker(rule="sigma").decisions(docs, hull)


def test_score_of_a_row_and_old_dft_documents_load():
    s = gate_score(_row("a", 0.1, mean=0.04, std=0.01), "mean_k_sigma", 0.05, 1.5)
    assert s["mean"] == 0.04 and s["sigma"] == 0.01 and s["value"] == pytest.approx(0.025) and s["spread"]
    assert s["probability"] == pytest.approx(0.5 * math.erfc(-1.0 / math.sqrt(2)))
    old = DftDoc.from_dict({"engine": "gpaw", "threshold": 0.05, "decisions": {"a": "to DFT"}})
    assert old.rule == "plain" and old.scores == {} and old.rule_parameters == {}


# --- one hull per member on constructed committee records ---------------------------------------------------


def _relaxed(label: str, structure, energies_per_atom: list[float | None], errors: dict | None = None) -> dict:
    n = len(structure)
    energies = [None if e is None else e * n for e in energies_per_atom]
    ok = [e for e in energies_per_atom if e is not None]
    return {"label": label, "formula": structure.composition.reduced_formula, "converged": True, "error": None,
            "energy": energies[0], "e_per_atom": energies_per_atom[0], "final_structure": structure.as_dict(),
            "committee": {"members": ["m1", "m2"], "primary": "m1", "energies": energies,
                          "energy_per_atom_mean": sum(ok) / len(ok), "energy_per_atom_std": None,
                          "errors": errors or {}, "n_ok": len(ok)}}


def _al_li():
    al = fcc("Al", 4.04).get_primitive_structure()
    from pymatgen.core import Lattice, Structure

    li = Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    competing = [_relaxed("Al_fcc", al, [-3.70, -3.80]), _relaxed("Li_bcc", li, [-1.90, -1.95])]
    candidates = [
        _relaxed("LiAl", b32_lial(), [-2.95, -2.90]),
        _relaxed("LiAl_bad", b32_lial(6.45), [-2.90, None], errors={"m2": "m2 refuses it"}),
        _relaxed("Al_cand", al, [-3.68, -3.81]),
    ]
    return candidates, competing


def test_each_member_hull_equals_compute_hull_with_that_members_energies():
    candidates, competing = _al_li()
    per, details = committee_hulls(candidates, competing, "Al-Li")
    for k, member in enumerate(["m1", "m2"]):
        comp = [mlip_entry(as_s(d), d["committee"]["energies"][k], d["label"]) for d in competing]
        refs = reference_entries("Al-Li", mlip_competing=comp, offline=True)
        cands = [mlip_entry(as_s(d), d["committee"]["energies"][k], d["label"]) for d in candidates
                 if d["committee"]["energies"][k] is not None]
        alone = {r["entry_id"]: r["e_above_hull"] for r in compute_hull(cands, refs)}
        for cid, rec in per.items():
            if cid in alone:
                assert rec["e_above_hull_members"][member] == pytest.approx(alone[cid], abs=1e-12)
            else:
                assert rec["e_above_hull_members"][member] is None and member == "m2" and cid == "LiAl_bad"
        assert details["members"][member]["reference_label"] == refs.label
    # the members disagree: a spread; a member that failed leaves the candidate flagged, with one value, no spread
    lial = per["LiAl"]
    values = list(lial["e_above_hull_members"].values())
    assert lial["e_above_hull_mean"] == pytest.approx(sum(values) / 2)
    assert lial["e_above_hull_std"] == pytest.approx(abs(values[0] - values[1]) / 2)
    bad = per["LiAl_bad"]
    assert bad["committee_errors"] == {"m2": "m2 refuses it"} and bad["e_above_hull_std"] is None
    assert bad["e_above_hull_mean"] == bad["e_above_hull_members"]["m1"]


def as_s(doc):
    from matfunnel.common.structures import as_structure

    return as_structure(doc["final_structure"], doc["label"])


def test_hull_maker_adds_the_committee_keys_and_keeps_the_primary_value():
    candidates, competing = _al_li()
    maker = HullMaker(model="committee:m1,m2")
    hull = HullMaker.make.original(maker, candidates, ReferencesDoc(mode="offline", competing=competing), "Al-Li")
    plain_docs = [{k: v for k, v in d.items() if k != "committee"} for d in candidates]
    plain_comp = [{k: v for k, v in d.items() if k != "committee"} for d in competing]
    plain = HullMaker.make.original(maker, plain_docs, ReferencesDoc(mode="offline", competing=plain_comp), "Al-Li")
    per, _ = committee_hulls(candidates, competing, "Al-Li")
    for row, before in zip(hull.rows, plain.rows, strict=True):
        assert {k: v for k, v in row.items() if k in before} == before  # the primary's row is unchanged
        assert row["e_above_hull_members"] == per[row["entry_id"]]["e_above_hull_members"]
        assert row["e_above_hull_members"]["m1"] == pytest.approx(row["e_above_hull"], abs=1e-12)
    assert "e_above_hull_std" not in plain.rows[0] and "committee" not in plain.reference_details
    assert set(hull.reference_details["committee"]["members"]) == {"m1", "m2"}


def test_competing_phase_a_member_failed_on_uses_the_shipped_corner():
    candidates, competing = _al_li()
    competing[1]["committee"]["energies"][1] = None
    competing[1]["committee"]["errors"] = {"m2": "m2 failed on Li"}
    per, details = committee_hulls(candidates, competing, "Al-Li")
    assert details["members"]["m2"]["skipped_competing"] == {"Li_bcc": "m2 failed on Li"}
    assert "MP elemental refs" in details["members"]["m2"]["reference_label"] and "for Li" in \
        details["members"]["m2"]["reference_label"]
    assert all(rec["e_above_hull_members"]["m1"] is not None for rec in per.values())


# --- relaxation: every member scores the relaxed structures, the cache keeps the records ---------------------

PICKY = "ase:committee_members:picky_lj"


def test_relax_maker_scores_relaxed_structures_with_every_member(tmp_path):
    pytest.importorskip("torch_sim")
    from matfunnel.makers.relax import RelaxMaker

    name = f"committee:chgnet-0.3.0,{PICKY}"
    kw = {"members_kwargs": {"chgnet-0.3.0": {"calibrate": False, "threads": 1}, PICKY: {"refuse": "Li"}}}
    cache = str(tmp_path / "cache.sqlite")
    maker = RelaxMaker(potential=name, potential_kwargs=kw, progress=False, max_steps=20, result_cache=cache)
    cells = [fcc("Al", 4.05).get_primitive_structure(), b32_lial()]
    docs = RelaxMaker.relax_job.original(maker, cells, ["Al", "LiAl"])
    al, lial = docs
    assert al["error"] is None and lial["error"] is None  # a member's failure drops nothing
    rec = al["committee"]
    assert rec["members"] == ["chgnet-0.3.0", PICKY] and rec["n_ok"] == 2 and rec["errors"] == {}
    assert rec["energies"][0] == pytest.approx(al["energy"], abs=1e-4)  # the primary at its own relaxed structure
    flagged = lial["committee"]
    assert flagged["energies"][1] is None and "refuses structures containing Li" in flagged["errors"][PICKY]
    # a rerun: both from the cache, no relaxation; the complete record is the cached one, the flagged one rescored
    again = RelaxMaker.relax_job.original(maker, cells, ["Al", "LiAl"])
    assert [d["cached"] for d in again] == [True, True]
    assert again[0]["committee"] == rec
    assert again[1]["committee"]["errors"] == flagged["errors"]
    assert again[1]["committee"]["energies"][0] == pytest.approx(flagged["energies"][0], abs=1e-4)


def test_every_member_relaxes_when_asked(tmp_path):
    """committee_relax='all': each member's energy is that of its own relaxation, as the member alone gives it."""
    pytest.importorskip("torch_sim")
    from matfunnel.makers.relax import RelaxMaker

    name = f"committee:chgnet-0.3.0,sevennet-0,{PICKY}"
    kw = {"members_kwargs": {"chgnet-0.3.0": {"calibrate": False, "threads": 1}, PICKY: {"refuse": "Li"}}}
    cells = [fcc("Al", 4.15).get_primitive_structure(), b32_lial()]
    labels = ["Al", "LiAl"]
    cache = str(tmp_path / "cache.sqlite")
    maker = RelaxMaker(potential=name, potential_kwargs=kw, progress=False, max_steps=150, committee_relax="all",
                       result_cache=cache)
    docs = RelaxMaker.relax_job.original(maker, cells, labels)
    alone = RelaxMaker.relax_job.original(RelaxMaker(potential="sevennet-0", progress=False, max_steps=150),
                                          cells, labels)
    for d, ref in zip(docs, alone, strict=True):
        rec = d["committee"]
        assert d["error"] is None and rec["relaxed_by"] == "all"
        assert rec["energies"][0] == pytest.approx(d["energy"], abs=1e-4)   # the primary's own relaxation
        assert ref["converged"] and rec["energies"][1] == pytest.approx(ref["energy"], abs=1e-4)
        assert rec["member_steps"]["sevennet-0"] == ref["n_steps"]
        # the member's own minimum lies below its energy at the primary's minimum
        assert rec["energies"][1] <= rec["energies_at_primary"][1] + 1e-4
        n = len(d["final_structure"]["sites"])
        ok = [e / n for e in rec["energies"] if e is not None]
        assert rec["n_ok"] == len(ok) and rec["energy_per_atom_std"] == pytest.approx(float(np.std(ok)), abs=1e-9)
    lial = docs[1]["committee"]
    assert lial["energies"][2] is None and "refuses structures containing Li" in lial["errors"][PICKY]
    assert not any(k in d["committee"] for d in RelaxMaker.relax_job.original(
        RelaxMaker(potential=name, potential_kwargs=kw, progress=False, max_steps=150), cells[:1], labels[:1])
        for k in ("relaxed_by", "energies_at_primary"))  # the default: one member relaxes
    with pytest.raises(ValueError, match="committee_relax='all' needs a committee potential"):
        RelaxMaker.relax_job.original(RelaxMaker(potential="chgnet-0.3.0", committee_relax="all"), cells, labels)


# --- spec and report ------------------------------------------------------------------------------------------


def test_spec_keys_and_their_errors():
    spec = CampaignSpec.from_dict({"chemsys": "Al-Li", "potential": {"name": "committee:chgnet-0.3.0,sevennet-0"},
                                   "dft": {"rule": "probability", "min_probability": 0.3, "k": 2}})
    assert (spec.dft.rule, spec.dft.k, spec.dft.min_probability) == ("probability", 2.0, 0.3)
    default = CampaignSpec.from_dict({"chemsys": "Al-Li"})
    assert (default.dft.rule, default.dft.k, default.dft.min_probability) == ("auto", 1.0, 0.5)
    with pytest.raises(SpecError, match=r"dft.rule: mean_k_sigma needs a committee potential \(potential: "
                                        r"committee:A,B\)"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "dft": {"rule": "mean_k_sigma"}})
    with pytest.raises(SpecError, match="dft.rule"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "dft": {"rule": "sigma"}})
    with pytest.raises(SpecError, match="dft.k"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "dft": {"k": 11}})
    with pytest.raises(SpecError, match=r"relax.committee_relax: all needs a committee potential"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "relax": {"committee_relax": "all"}})
    with pytest.raises(SpecError, match="relax.committee_relax"):
        CampaignSpec.from_dict({"chemsys": "Al-Li", "relax": {"committee_relax": "some"}})
    for p in (0, 1, 1.5):
        with pytest.raises(SpecError, match="dft.min_probability"):
            CampaignSpec.from_dict({"chemsys": "Al-Li", "dft": {"min_probability": p}})
    from matfunnel.campaign.funnel import FunnelMaker

    funnel = FunnelMaker.from_spec(spec)
    assert (funnel.dft_gate.rule, funnel.dft_gate.k, funnel.dft_gate.min_probability) == ("probability", 2.0, 0.3)
    assert funnel.relax.relax.potential == "committee:chgnet-0.3.0,sevennet-0"
    assert funnel.relax.relax.committee_relax == "primary"
    every = CampaignSpec.from_dict({"chemsys": "Al-Li", "potential": {"name": "committee:chgnet-0.3.0,sevennet-0"},
                                    "relax": {"committee_relax": "all"}})
    assert FunnelMaker.from_spec(every).relax.relax.committee_relax == "all"


def test_plain_report_csv_keeps_its_columns(tmp_path):
    from matfunnel.campaign.report import COLUMNS, build_report, format_table, write_report
    from matfunnel.common.documents import CandidatesDoc

    candidates, competing = _al_li()
    plain_docs = [{k: v for k, v in d.items() if k != "committee"} for d in candidates]
    maker = HullMaker(model="x")
    hull = HullMaker.make.original(maker, plain_docs, ReferencesDoc(mode="offline", competing=competing), "Al-Li")
    gate = DftGateMaker(engine="none")
    dft = DftDoc(engine="none", threshold=0.05, decisions=gate.decisions(plain_docs, hull))
    report = build_report(CandidatesDoc(chemsys="Al-Li"), plain_docs, hull, dft, "c", "x")
    write_report(report, hull, tmp_path / "plain")
    header = (tmp_path / "plain" / "report.csv").read_text().splitlines()[0]
    assert header == ",".join(COLUMNS) and "dft_rule" not in report
    assert "DFT: none for e_above_hull <= 0.05 eV/atom" in format_table(report)

    chull = HullMaker.make.original(maker, candidates, ReferencesDoc(mode="offline", competing=competing), "Al-Li")
    cgate = DftGateMaker(engine="none", rule="mean_k_sigma", k=1.0)
    dec, scores = cgate.decide(candidates, chull)
    cdft = DftDoc(engine="none", threshold=0.05, decisions=dec, **cgate._rule_fields(scores))
    creport = build_report(CandidatesDoc(chemsys="Al-Li"), candidates, chull, cdft, "c", "committee:m1,m2")
    write_report(creport, chull, tmp_path / "committee")
    rows = list(csv.DictReader((tmp_path / "committee" / "report.csv").open()))
    assert list(rows[0])[-3:] == ["e_above_hull_mean", "e_above_hull_std", "gate_probability"]
    by_id = {r["id"]: r for r in rows}
    assert float(by_id["Al_cand"]["e_above_hull_std"]) == pytest.approx(0.01, abs=1e-4)
    assert by_id["LiAl_bad"]["e_above_hull_std"] == ""
    assert creport["dft_rule"] == "mean_k_sigma"
    assert "rule mean_k_sigma" in format_table(creport) and "e_above_hull_std" in format_table(creport)


# --- a tiny offline committee campaign ------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_committee_campaign_offline(tmp_path, capsys):
    """Al-Li, CHGNet + SevenNet-0, offline hull, the gate deciding by mean - k*sigma (no DFT)."""
    pytest.importorskip("torch_sim")
    pytest.importorskip("sevenn")
    from matfunnel.cli import main

    spec = tmp_path / "committee.yaml"
    spec.write_text(json.dumps({
        "name": "committee", "chemsys": "Al-Li",
        "potential": {"name": "committee:chgnet-0.3.0,sevennet-0"},
        "candidates": {"sources": ["aflow"], "max_candidates": 3, "max_sites": 2},
        "relax": {"fmax": 0.1, "max_steps": 100},
        "hull": {"references": "offline", "competing_max_sites": 1},
        "dft": {"engine": "none", "threshold": 0.05, "rule": "mean_k_sigma", "k": 1.0},
    }))
    run_dir = tmp_path / "run"
    assert main(["run", str(spec), "--run-dir", str(run_dir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["dft_rule"] == "mean_k_sigma" and report["dft_rule_parameters"]["k"] == 1.0
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    assert ok
    for r in ok:
        assert r["e_above_hull_std"] is not None and r["e_above_hull_std"] >= 0
        assert set(r["e_above_hull_members"]) == {"chgnet-0.3.0", "sevennet-0"}
        assert r["e_above_hull_members"]["chgnet-0.3.0"] == pytest.approx(r["e_above_hull"], abs=1e-4)
        assert r["gate"].startswith("skipped") or "rule mean_k_sigma" in r["gate"], r["gate"]
    assert any("rule mean_k_sigma" in r["gate"] for r in ok)
    header = (run_dir / "report.csv").read_text().splitlines()[0]
    assert header.endswith("e_above_hull_mean,e_above_hull_std,gate_probability")
    assert "offline" in report["reference"]
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    assert "rule mean_k_sigma" in capsys.readouterr().out
