"""Issue 22, calibrating the committee gate: spread against error, and the gate rules at equal DFT budget.

Every figure is checked on constructed report rows whose answer is worked out by hand here; the rule orders are
checked against the DFT gate's own decisions on the same rows. The GPAW calibration itself is
``analysis/gate_calibration.py`` (too slow for a test); its helpers are tested on small inputs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from builders import fcc
from matfunnel.benchmark.gate_metrics import BUDGET_RULES, committee_calibration, gate_metrics, rule_order
from matfunnel.campaign.report import format_scoring
from matfunnel.common.documents import HullDoc
from matfunnel.dft.gate import TO_DFT, DftGateMaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))


def _row(cid: str, primary: float, mean: float, std: float, dft: float | None, n_sites: int = 2) -> dict:
    return {"id": cid, "status": "ok", "e_above_hull": primary, "e_above_hull_mean": mean, "e_above_hull_std": std,
            "dft_e_above_hull": dft, "n_sites": n_sites, "gate": "to DFT" if dft is not None else "n/a"}


#: threshold 0.05: the plain gate's own budget is 2 (a and b at or below it); only c and e are DFT-stable
ROWS = [
    _row("a", 0.00, 0.00, 0.001, 0.10),   # confident and wrong
    _row("b", 0.04, 0.04, 0.001, 0.08),   # confident, just inside, wrong
    _row("c", 0.06, 0.02, 0.050, 0.00),   # the primary says no, the committee is unsure: stable
    _row("d", 0.30, 0.30, 0.010, 0.50),
    _row("e", 0.10, 0.09, 0.080, 0.00),   # far out on the mean, very unsure: stable
]


def test_rule_orders_by_hand():
    # plain: primary a, b, c, e, d; mean: a, c, b, e, d; mean - 1 sigma: c (-0.03), a (-0.001), e (0.01), b (0.039)
    names = lambda order: "".join(ROWS[i]["id"] for i in order)  # noqa: E731
    assert names(rule_order(ROWS, "plain", 0.05)) == "abced"
    assert names(rule_order(ROWS, "mean_k_sigma", 0.05, 0.0)) == "acbed"
    assert names(rule_order(ROWS, "mean_k_sigma", 0.05, 1.0)) == "caebd"
    # P(within 0.05): a 1, b ~1 (10 sigma), c 0.73, e 0.45, d ~0
    assert names(rule_order(ROWS, "probability", 0.05)) == "abced"


def test_rule_order_is_the_gates_order():
    """The DFT gate with a budget of n sends exactly the first n of rule_order, for every rule."""
    docs = [{"label": r["id"], "converged": True, "error": None,
             "final_structure": fcc("Al", 4.0).get_primitive_structure().as_dict()} for r in ROWS]
    hull = HullDoc(rows=[{"entry_id": r["id"], "e_above_hull": r["e_above_hull"],
                          "e_above_hull_mean": r["e_above_hull_mean"], "e_above_hull_std": r["e_above_hull_std"]}
                         for r in ROWS])
    rows = [{**r, "n_sites": 1} for r in ROWS]
    for rule, k in [("plain", 1.0), ("mean", 1.0), ("mean_k_sigma", 1.0), ("mean_k_sigma", 0.0), ("budget", 1.0)]:
        order = rule_order(rows, "probability" if rule == "budget" else rule, 0.05, k)
        for n in range(1, 4):
            gate = DftGateMaker(engine="gpaw", threshold=5.0 if rule != "budget" else 0.05, max_candidates=n,
                                rule=rule, k=k)
            sent = {c for c, dec in gate.decisions(docs, hull).items() if dec == TO_DFT}
            if rule == "budget":  # the budget rule keeps P >= 1%: d is never sent
                assert sent == {rows[i]["id"] for i in order[:n]} - {"d"}
            else:
                assert sent == {rows[i]["id"] for i in order[:n]}, (rule, k, n)


def test_equal_budget_counts_by_hand():
    cal = committee_calibration(ROWS, threshold=0.05, stability_threshold=0.0, n_boot=200)
    eb = cal["equal_budget"]
    assert eb["budget"] == 2 and eb["n_stable"] == 2
    r = eb["rules"]
    assert (r["plain"]["found"], r["plain"]["misses"], r["plain"]["per_run"]) == (0, 2, 0.0)
    assert r["mean"]["found"] == 1                              # a, c
    assert r["mean_k_sigma(k=1)"]["found"] == 1                 # c, a
    assert r["mean_k_sigma(k=2)"]["found"] == 2                 # c (-0.08), e (-0.07)
    assert r["mean_k_sigma(k=2)"]["per_run"] == 1.0 and r["mean_k_sigma(k=2)"]["misses"] == 0
    assert r["probability"]["found"] == 0
    assert r["plain"]["curve"] == [0, 0, 1, 2, 2] and r["plain"]["runs_to_find_all"] == 4
    assert r["mean_k_sigma(k=2)"]["runs_to_find_all"] == 2
    # budgets of n_stable (2) and 2*n_stable (4) runs
    assert (r["plain"]["found_at_n_stable"], r["plain"]["found_at_2n_stable"]) == (0, 2)
    assert (r["mean"]["found_at_n_stable"], r["mean"]["found_at_2n_stable"]) == (1, 2)  # a, c | b, e
    # at the threshold alone: plain sends a, b (0 found); mean a, c, b (1); mean - 2 sigma a, b, c, e (2);
    # probability P >= 0.5: a, b, c (e: P = 0.45)
    own = cal["at_threshold"]
    assert (own["plain"]["sent"], own["plain"]["found"], own["plain"]["misses"]) == (2, 0, 2)
    assert (own["mean"]["sent"], own["mean"]["found"]) == (3, 1)
    assert (own["mean_k_sigma(k=2)"]["sent"], own["mean_k_sigma(k=2)"]["found"]) == (4, 2)
    assert own["mean_k_sigma(k=2)"]["per_run"] == 0.5
    assert (own["probability"]["sent"], own["probability"]["found"]) == (3, 1)
    assert set(cal["vs_plain"]) == set(BUDGET_RULES) - {"plain"}
    lo, hi = cal["vs_plain"]["mean_k_sigma(k=2)"]["ci95"]
    assert lo <= cal["vs_plain"]["mean_k_sigma(k=2)"]["mean"] <= hi


def test_spread_against_error_by_hand():
    rng = np.random.default_rng(7)
    n = 40
    sigma = rng.uniform(0.005, 0.08, n)
    err = sigma * rng.choice([-0.5, 0.5, 1.5, -1.5], n)   # |err| = 0.5 or 1.5 sigma
    dft = rng.uniform(0.0, 0.3, n)
    rows = [_row(f"x{i}", float(dft[i] + err[i]), float(dft[i] + err[i]), float(sigma[i]), float(dft[i]))
            for i in range(n)]
    cal = committee_calibration(rows, n_boot=300)
    s = cal["spread_vs_error"]
    assert s["spearman"] == pytest.approx(spearmanr(sigma, np.abs(err)).statistic, abs=1e-3)
    assert s["within_1_sigma"] == pytest.approx(np.mean(np.abs(err) <= sigma + 1e-12), abs=1e-3)
    assert s["within_2_sigma"] == 1.0
    assert s["z_rms"] == pytest.approx(math.sqrt(np.mean((err / sigma) ** 2)), abs=1e-3)
    assert s["mae_mean"] == pytest.approx(np.abs(err).mean(), abs=1e-4)
    assert s["spearman_ci95"][0] <= s["spearman"] <= s["spearman_ci95"][1]
    assert [b["n"] for b in s["bins"]] == [14, 13, 13]
    assert s["bins"][0]["mean_sigma"] < s["bins"][1]["mean_sigma"] < s["bins"][2]["mean_sigma"]


def test_gate_metrics_reports_the_committee_only_for_a_committee():
    rows = [*ROWS, _row("f", 0.5, 0.5, 0.02, None)]  # no DFT: left out
    gm = gate_metrics(rows, threshold=0.05)
    assert gm["committee"]["n"] == 5 and gm["n_with_dft"] == 5
    plain = [{k: v for k, v in r.items() if not k.startswith("e_above_hull_")} for r in rows]
    assert "committee" not in gate_metrics(plain)
    assert committee_calibration(ROWS[:2]) is None  # fewer than three rows with DFT
    text = format_scoring({"gate_metrics": gm})
    assert "5 candidates with DFT, 2 DFT-stable" in text and "Spearman(sigma, |mean - DFT|)" in text
    assert "mean_k_sigma(k=2) 2" in text
    assert format_scoring({"gate_metrics": gate_metrics([])}) == ""


def test_joint_dft_hull_of_the_calibration_script():
    from gate_calibration import joint_dft_hull

    comp = [{"label": "A", "composition": {"Al": 1}, "energy_per_atom": -3.0},
            {"label": "B", "composition": {"Li": 1}, "energy_per_atom": -2.0}]
    cand = [{"label": "c1", "composition": {"Li": 1, "Al": 1}, "energy_per_atom": -2.7},   # 0.2 below the tie line
            {"label": "c2", "composition": {"Li": 1, "Al": 1}, "energy_per_atom": -2.65},  # 0.05 above c1
            {"label": "c3", "composition": {"Li": 1, "Al": 1}, "energy_per_atom": None, "error": "failed"}]
    e = joint_dft_hull(cand, comp)
    assert set(e) == {"c1", "c2"}
    assert e["c1"] == pytest.approx(0.0, abs=1e-9) and e["c2"] == pytest.approx(0.05, abs=1e-9)
