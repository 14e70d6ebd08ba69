"""The funnel scores itself: its MLIP hull distances against the DFT ones it paid for."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from matfunnel.benchmark.metrics import discovery_metrics, round_metrics
from matfunnel.dft.gate import SIGMA_FLOOR, gate_order, gate_score

__all__ = ["BUDGET_RULES", "committee_calibration", "gate_metrics", "rule_order"]


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def gate_metrics(report_rows: Iterable[Mapping], stability_threshold: float = 0.0, threshold: float = 0.05,
                 n_boot: int = 500) -> dict:
    """Matbench-Discovery-style metrics of a campaign's gate, from its report rows.

    Uses the rows that have both an MLIP ``e_above_hull`` and a ``dft_e_above_hull`` (i.e. the
    candidates the gate sent to DFT and whose calculation finished): the MLIP value is the
    prediction, the DFT value the truth, ``stability_threshold`` (eV/atom) the stability cut.
    Since only gated candidates get DFT, recall/FNR describe the gated set, not the whole
    candidate pool. Returns ``n_candidates``, ``n_to_dft`` (gate == "to DFT"), ``n_with_dft``,
    ``n_dft_stable`` (confirmed), ``hit_rate`` (confirmed / with DFT) and ``metrics`` (the
    :func:`~matfunnel.benchmark.discovery_metrics` keys, rounded to 3 decimals; None if no row has
    DFT). A committee campaign (rows with ``e_above_hull_std``) also gets ``committee``:
    :func:`committee_calibration` of the DFT-checked rows at the gate's ``threshold`` (None with fewer than three);
    only the candidates the gate sent have DFT, so its equal-budget figures re-rank that set, and the unbiased
    comparison needs every candidate through DFT (``analysis/gate_calibration.py``).
    """
    rows = list(report_rows)
    cands = [r for r in rows if r.get("status") != "rejected"]
    to_dft = [r for r in cands if r.get("gate") == "to DFT"]
    pairs = [(_num(r.get("dft_e_above_hull")), _num(r.get("e_above_hull"))) for r in cands]
    pairs = [(t, p) for t, p in pairs if not math.isnan(t)]
    out: dict[str, Any] = {
        "n_candidates": len(cands),
        "n_to_dft": len(to_dft),
        "n_with_dft": len(pairs),
        "stability_threshold": stability_threshold,
        "n_dft_stable": sum(t <= stability_threshold for t, _ in pairs),
        "hit_rate": None,
        "metrics": None,
    }
    if pairs:
        out["hit_rate"] = round(out["n_dft_stable"] / len(pairs), 3)
        true, pred = zip(*pairs, strict=False)
        m = round_metrics(discovery_metrics(list(true), list(pred), stability_threshold))
        out["metrics"] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
    if any(_num(r.get("e_above_hull_std")) == _num(r.get("e_above_hull_std")) for r in cands):
        out["committee"] = committee_calibration(cands, threshold, stability_threshold, n_boot=n_boot)
    return out


#: the committee rules compared at equal budget: name -> (gate rule, k)
BUDGET_RULES: dict[str, tuple[str, float]] = {
    "plain": ("plain", 0.0),
    "mean": ("mean", 0.0),
    "mean_k_sigma(k=0.5)": ("mean_k_sigma", 0.5),
    "mean_k_sigma(k=1)": ("mean_k_sigma", 1.0),
    "mean_k_sigma(k=2)": ("mean_k_sigma", 2.0),
    "probability": ("probability", 0.0),
}


def _committee_rows(rows: Iterable[Mapping]) -> list[dict]:
    """The rows with a primary, a committee mean and spread and a DFT energy above hull (as floats)."""
    out = []
    for r in rows:
        vals = {k: _num(r.get(k)) for k in ("e_above_hull", "e_above_hull_mean", "e_above_hull_std",
                                              "dft_e_above_hull")}
        if r.get("status") == "rejected" or any(math.isnan(v) for v in vals.values()):
            continue
        n_sites = _num(r.get("n_sites"))
        out.append({**vals, "id": str(r.get("id")), "n_sites": 0.0 if math.isnan(n_sites) else n_sites})
    return out


def rule_order(rows: Sequence[Mapping], rule: str, threshold: float, k: float = 1.0) -> list[int]:
    """Indices of ``rows`` in the order the DFT gate's ``rule`` sends them to DFT (its ties: fewer sites, id)."""
    keys: list[tuple[tuple[float, ...], float, str, int]] = []
    for i, r in enumerate(rows):
        score = gate_score(dict(r), rule, threshold, k)
        keys.append((gate_order(score), float(r.get("n_sites") or 0), str(r.get("id")), i))
    return [key[-1] for key in sorted(keys)]


def _found_curve(rows: Sequence[Mapping], order: Sequence[int], stable: float) -> np.ndarray:
    """``curve[b]``: how many of the first ``b`` rows of ``order`` are DFT-stable (``curve[0] = 0``)."""
    hits = np.array([rows[i]["dft_e_above_hull"] <= stable for i in order], dtype=int)
    return np.concatenate([[0], np.cumsum(hits)])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def _ci(samples: Sequence[float]) -> list[float] | None:
    s = np.asarray([v for v in samples if not math.isnan(v)], dtype=float)
    return None if s.size == 0 else [round(float(np.percentile(s, 2.5)), 3), round(float(np.percentile(s, 97.5)), 3)]


def committee_calibration(report_rows: Iterable[Mapping], threshold: float = 0.05, stability_threshold: float = 0.0,
                          *, n_boot: int = 2000, seed: int = 0, n_bins: int = 3,
                          min_probability: float = 0.5) -> dict[str, Any] | None:
    """How well a committee's spread predicts its error, and the gates compared at equal DFT budget.

    Uses the rows with a committee mean and spread (``e_above_hull_mean``, ``e_above_hull_std``), the primary's
    ``e_above_hull`` and a DFT ``dft_e_above_hull``; None with fewer than three. The error is ``mean - DFT``.

    Returns
    -------
    dict or None
        ``n``; ``spread_vs_error``: ``spearman`` (spread against absolute error) with a bootstrap 95% interval
        ``spearman_ci95``, ``mae_mean``, ``mae_primary`` (``mae_primary_minus_mean_ci95``: the bootstrap 95%
        interval of their difference), ``bias_mean``, the fractions of errors within one and two spreads
        (a calibrated normal spread gives 0.68 and 0.95), ``z_rms`` (RMS of error / spread, the spread
        floored at :data:`~matfunnel.dft.gate.SIGMA_FLOOR`: 1 when calibrated, above 1 when the spread is too
        small), and ``bins`` (rows split by spread into ``n_bins`` equal groups: their spread and error);
        ``equal_budget``: ``budget`` (the plain gate's own: rows with ``e_above_hull <= threshold``, at least 1),
        ``n_stable`` (DFT ``<= stability_threshold``), and per rule of :data:`BUDGET_RULES` ``found``,
        ``per_run``, ``misses`` at that budget, ``runs_to_find_all``, ``found_at_n_stable`` and
        ``found_at_2n_stable`` (found within a budget of once and twice the number of stable rows: the tight
        budgets where the order matters) and ``curve`` (found after each DFT run);
        ``at_threshold``: per rule, the rows it sends with no budget cap (``probability``: P >= ``min_probability``)
        and of those ``found``, ``misses`` and ``per_run``; ``vs_plain``: per rule the paired bootstrap mean and
        95% interval of (found - plain's found) at the plain budget (rows resampled with replacement, the budget
        recounted in each sample).
    """
    rows = _committee_rows(report_rows)
    n = len(rows)
    if n < 3:
        return None
    mean = np.array([r["e_above_hull_mean"] for r in rows])
    sigma = np.array([r["e_above_hull_std"] for r in rows])
    dft = np.array([r["dft_e_above_hull"] for r in rows])
    primary = np.array([r["e_above_hull"] for r in rows])
    err = mean - dft
    z = err / np.maximum(sigma, SIGMA_FLOOR)
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, n, size=(n_boot, n))
    rho_samples = [_spearman(sigma[b], np.abs(err[b])) for b in boots]
    gain = np.abs(primary - dft) - np.abs(err)  # how much closer to DFT the mean is than the primary
    gain_samples = [float(gain[b].mean()) for b in boots]
    bins = []
    for part in np.array_split(np.argsort(sigma, kind="stable"), min(n_bins, n)):
        bins.append({"n": int(part.size), "sigma_min": round(float(sigma[part].min()), 4),
                     "sigma_max": round(float(sigma[part].max()), 4),
                     "mean_sigma": round(float(sigma[part].mean()), 4),
                     "mae_mean": round(float(np.abs(err[part]).mean()), 4),
                     "rmse_mean": round(float(np.sqrt((err[part] ** 2).mean())), 4)})
    spread = {"spearman": round(_spearman(sigma, np.abs(err)), 3), "spearman_ci95": _ci(rho_samples),
              "mae_mean": round(float(np.abs(err).mean()), 4),
              "mae_primary": round(float(np.abs(primary - dft).mean()), 4),
              "mae_primary_minus_mean_ci95": _ci(gain_samples),
              "bias_mean": round(float(err.mean()), 4),
              "within_1_sigma": round(float((np.abs(z) <= 1).mean()), 3),
              "within_2_sigma": round(float((np.abs(z) <= 2).mean()), 3),
              "z_rms": round(float(np.sqrt((z ** 2).mean())), 3), "bins": bins}

    def found_at(sample: Sequence[Mapping]) -> tuple[int, dict[str, np.ndarray]]:
        budget = max(1, sum(r["e_above_hull"] <= threshold for r in sample))
        curves = {name: _found_curve(sample, rule_order(sample, rule, threshold, k), stability_threshold)
                  for name, (rule, k) in BUDGET_RULES.items()}
        return budget, curves

    budget, curves = found_at(rows)
    n_stable = int((dft <= stability_threshold).sum())
    per_rule = {}
    for name, curve in curves.items():
        found = int(curve[budget])
        all_found = np.nonzero(curve >= n_stable)[0]
        per_rule[name] = {"found": found, "per_run": round(found / budget, 3), "misses": n_stable - found,
                          "runs_to_find_all": int(all_found[0]) if n_stable else 0,
                          "found_at_n_stable": int(curve[min(n_stable, n)]),
                          "found_at_2n_stable": int(curve[min(2 * n_stable, n)]), "curve": curve[1:].tolist()}
    own = {}
    for name, (rule, k) in BUDGET_RULES.items():  # each rule at the threshold alone, no budget cap
        scores = [gate_score(dict(r), rule, threshold, k) for r in rows]
        sent = [s["probability"] >= min_probability if rule == "probability" else s["value"] <= threshold
                for s in scores]
        hits = sum(bool(x) and r["dft_e_above_hull"] <= stability_threshold for x, r in zip(sent, rows, strict=True))
        own[name] = {"sent": int(sum(sent)), "found": int(hits), "misses": n_stable - int(hits),
                     "per_run": round(hits / sum(sent), 3) if sum(sent) else None}
    diffs: dict[str, list[float]] = {name: [] for name in BUDGET_RULES if name != "plain"}
    for b in boots[: max(n_boot // 4, 1)]:  # the orderings cost more than a rank correlation
        sample = [rows[i] for i in b]
        bud, cs = found_at(sample)
        for name in diffs:
            diffs[name].append(float(cs[name][bud] - cs["plain"][bud]))
    vs_plain = {name: {"mean": round(float(np.mean(d)), 3), "ci95": _ci(d)} for name, d in diffs.items()}
    return {"n": n, "threshold": threshold, "stability_threshold": stability_threshold, "n_boot": n_boot,
            "spread_vs_error": spread,
            "equal_budget": {"budget": budget, "n_stable": n_stable, "rules": per_rule},
            "at_threshold": own,
            "vs_plain": vs_plain}
