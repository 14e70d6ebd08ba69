"""The funnel scores itself: its MLIP hull distances against the DFT ones it paid for."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from matfunnel.benchmark.metrics import discovery_metrics, round_metrics

__all__ = ["gate_metrics"]


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def gate_metrics(report_rows: Iterable[Mapping], stability_threshold: float = 0.0) -> dict:
    """Matbench-Discovery-style metrics of a campaign's gate, from its report rows.

    Uses the rows that have both an MLIP ``e_above_hull`` and a ``dft_e_above_hull`` (i.e. the
    candidates the gate sent to DFT and whose calculation finished): the MLIP value is the
    prediction, the DFT value the truth, ``stability_threshold`` (eV/atom) the stability cut.
    Since only gated candidates get DFT, recall/FNR describe the gated set, not the whole
    candidate pool. Returns ``n_candidates``, ``n_to_dft`` (gate == "to DFT"), ``n_with_dft``,
    ``n_dft_stable`` (confirmed), ``hit_rate`` (confirmed / with DFT) and ``metrics`` (the
    :func:`~matfunnel.benchmark.discovery_metrics` keys, rounded to 3 decimals; None if no row has
    DFT).
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
    return out
