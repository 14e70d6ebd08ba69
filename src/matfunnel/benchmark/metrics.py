"""Matbench Discovery's stability-classification and regression metrics, and its three test subsets.

Semantics follow the official implementation (``matbench_discovery.metrics.discovery`` on the
project's main branch; written independently here):

* a material is *stable* when its hull distance is ``<= stability_threshold`` (default 0);
* a NaN prediction counts as *predicted unstable*; a NaN true value counts in no class;
* MAE, RMSE and R2 use only pairs where both values are finite; R2 is NaN for fewer than 2
  pairs and, like scikit-learn's ``r2_score``, 1.0/0.0 when the true values are constant;
* ``Accuracy = (TP + TN) / (TP + TN + FP + FN)`` (matbench-discovery <= 1.3.1 divided by the
  number of finite pairs instead: ``accuracy_over="finite_pairs"``);
* ratios with a zero denominator are NaN.

Preparing a prediction file for scoring (:func:`prepare_predictions`) is done as the leaderboard
does: predictions are aligned to the WBM summary (missing ones become NaN), those more than
``max_error`` = 5 eV/atom from the DFT formation energy are set to NaN, and predictions plus the
reference columns are rounded to 3 decimals. The predicted hull distance is
``e_above_hull_dft + e_form_pred - e_form_dft`` (the DFT hull is fixed). Subsets: the full test
set, the unique prototypes (``unique_prototype``), and the 10k unique-prototype materials with the
lowest predicted hull distance. DAF on the latter two is normalised by the stable fraction of the
unique prototypes computed from the *unrounded* hull distances, as the leaderboard does.
Published numbers are rounded to 3 decimals (:func:`round_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

STABILITY_THRESHOLD = 0.0
MAX_ERROR = 5.0  # eV/atom: predictions farther than this from DFT E_form are dropped
DECIMALS = 3
N_MOST_STABLE = 10_000

EACH_TRUE = "e_above_hull_mp2020_corrected_ppd_mp"
E_FORM_DFT = "e_form_per_atom_mp2020_corrected"
UNIQ_PROTO = "unique_prototype"

SUBSETS = ("full_test_set", "unique_prototypes", "most_stable_10k")

METRIC_KEYS = ("F1", "DAF", "Precision", "Recall", "Accuracy", "TPR", "FPR", "TNR", "FNR",
               "TP", "FP", "TN", "FN", "MAE", "RMSE", "R2")

__all__ = [
    "DECIMALS", "EACH_TRUE", "E_FORM_DFT", "MAX_ERROR", "METRIC_KEYS", "N_MOST_STABLE",
    "STABILITY_THRESHOLD", "SUBSETS", "UNIQ_PROTO", "classify_stable", "discovery_metrics",
    "prepare_predictions", "round_metrics", "score_predictions", "subset_indices",
]


def _as_float_array(x) -> np.ndarray:
    """Values as float64; None / non-numeric entries become NaN."""
    import pandas as pd

    if isinstance(x, pd.Series):
        x = x.to_numpy()
    arr = np.asarray(x)
    if arr.dtype.kind in "fiub":
        return arr.astype(float).ravel()
    return pd.to_numeric(pd.Series(arr.ravel(), dtype=object), errors="coerce").to_numpy(dtype=float)


def classify_stable(e_above_hull_true, e_above_hull_pred, stability_threshold: float = STABILITY_THRESHOLD,
                    fillna: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks ``(TP, FN, FP, TN)``; NaN predictions count as predicted unstable."""
    true = _as_float_array(e_above_hull_true)
    pred = _as_float_array(e_above_hull_pred)
    if len(true) != len(pred):
        raise ValueError(f"{len(true)=} != {len(pred)=}")
    if stability_threshold is None or not math.isfinite(stability_threshold):
        raise ValueError("stability_threshold must be a real number")
    with np.errstate(invalid="ignore"):
        actual_pos = true <= stability_threshold
        actual_neg = true > stability_threshold
        model_pos = pred <= stability_threshold
        model_neg = pred > stability_threshold
    if fillna:
        model_neg = model_neg | np.isnan(pred)
    return actual_pos & model_pos, actual_pos & model_neg, actual_neg & model_pos, actual_neg & model_neg


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _r2(true: np.ndarray, pred: np.ndarray) -> float:
    if len(true) < 2:
        return float("nan")
    ss_res = float(((true - pred) ** 2).sum())
    ss_tot = float(((true - true.mean()) ** 2).sum())
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return 1.0 - ss_res / ss_tot


def discovery_metrics(
    e_above_hull_true: Sequence[float],
    e_above_hull_pred: Sequence[float],
    stability_threshold: float = STABILITY_THRESHOLD,
    *,
    fillna: bool = True,
    accuracy_over: Literal["classified", "finite_pairs"] = "classified",
) -> dict[str, float]:
    """F1, DAF, Precision, Recall, Accuracy, TPR, FPR, TNR, FNR, TP, FP, TN, FN, MAE, RMSE, R2.

    ``e_above_hull_*`` in eV/atom (signed hull distances). DAF here is precision over the
    prevalence of stable materials *in the given set*; :func:`score_predictions` re-normalises
    it for the unique-prototype subsets as the leaderboard does. Values are unrounded.
    """
    tp_m, fn_m, fp_m, tn_m = classify_stable(e_above_hull_true, e_above_hull_pred, stability_threshold, fillna)
    tp, fn, fp, tn = (int(m.sum()) for m in (tp_m, fn_m, fp_m, tn_m))
    n_pos, n_neg = tp + fn, tn + fp
    prevalence = _ratio(n_pos, n_pos + n_neg)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, n_pos)
    f1 = float("nan") if precision + recall == 0 else 2 * precision * recall / (precision + recall)

    true = _as_float_array(e_above_hull_true)
    pred = _as_float_array(e_above_hull_pred)
    ok = ~(np.isnan(true) | np.isnan(pred))
    t, p = true[ok], pred[ok]
    acc_den = (n_pos + n_neg) if accuracy_over == "classified" else len(t)
    with np.errstate(invalid="ignore"):
        mae = float(np.abs(t - p).mean()) if len(t) else float("nan")
        rmse = float(((t - p) ** 2).mean() ** 0.5) if len(t) else float("nan")
    return {
        "F1": f1,
        "DAF": precision / prevalence if prevalence > 0 else float("nan"),
        "Precision": precision,
        "Recall": recall,
        "Accuracy": _ratio(tp + tn, acc_den),
        "TPR": recall,
        "FPR": _ratio(fp, n_neg),
        "TNR": _ratio(tn, n_neg),
        "FNR": _ratio(fn, n_pos),
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "MAE": mae,
        "RMSE": rmse,
        "R2": _r2(t, p),
    }


def round_metrics(metrics: Mapping[str, Any], decimals: int = DECIMALS) -> dict[str, Any]:
    """Metrics rounded as published (``round(float(v), 3)``; counts stay integers)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, np.bool_)) or v is None or isinstance(v, str):
            out[k] = v
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        else:
            out[k] = round(float(v), decimals)
    return out


# ----------------------------------------------------------------------------------- scoring a file
def prepare_predictions(summary, e_form_pred, *, max_error: float | None = MAX_ERROR,
                        decimals: int | None = DECIMALS, restrict: bool = False):
    """Align predicted formation energies with the WBM summary as the leaderboard does.

    Args:
        summary: WBM summary DataFrame indexed by material_id with the DFT columns
            (``e_form_per_atom_mp2020_corrected``, ``e_above_hull_mp2020_corrected_ppd_mp``,
            ``unique_prototype``).
        e_form_pred: predicted formation energies (eV/atom), a Series indexed by material_id.
        max_error: predictions farther than this from the DFT value become NaN (None: keep all).
        decimals: rounding of predictions and reference columns (None: no rounding).
        restrict: score only the predicted materials (default: the whole summary, missing
            predictions counting as predicted unstable).

    Returns ``(frame, info)``: ``frame`` has columns e_form_dft, each_true, each_true_raw
    (unrounded), e_form_pred, each_pred, unique_prototype; ``info`` counts missing/outliers.
    """
    import pandas as pd

    preds = pd.to_numeric(pd.Series(e_form_pred), errors="coerce")
    if preds.index.has_duplicates:
        dup = preds.index[preds.index.duplicated()].unique().tolist()[:5]
        raise ValueError(f"duplicate material ids in predictions, e.g. {dup}")
    unknown = preds.index.difference(summary.index)
    if len(unknown):
        raise ValueError(f"{len(unknown)} predictions for materials not in the WBM summary, e.g. "
                         f"{sorted(map(str, unknown))[:5]}")
    ref = summary.loc[preds.index] if restrict else summary
    preds = preds.reindex(ref.index)
    e_form = pd.to_numeric(ref[E_FORM_DFT], errors="coerce")
    each_true_raw = pd.to_numeric(ref[EACH_TRUE], errors="coerce")
    n_missing = int(preds.isna().sum())
    n_outliers = 0
    if max_error is not None:
        if max_error < 0:
            raise ValueError("max_error must be non-negative")
        bad = (preds - e_form).abs() > max_error
        n_outliers = int(bad.sum())
        preds = preds.mask(bad)
    if decimals is not None:
        preds = preds.round(decimals)
        e_form_r = e_form.round(decimals)
        each_true = each_true_raw.round(decimals)
    else:
        e_form_r, each_true = e_form, each_true_raw
    frame = pd.DataFrame({
        "e_form_dft": e_form_r,
        "each_true": each_true,
        "each_true_raw": each_true_raw,
        "e_form_pred": preds,
        "each_pred": each_true + preds - e_form_r,
        "unique_prototype": ref[UNIQ_PROTO].astype(bool) if UNIQ_PROTO in ref else True,
    }, index=ref.index)
    info = {"n_materials": len(frame), "n_missing": n_missing, "n_outliers": n_outliers,
            "restricted_to_predictions": bool(restrict)}
    return frame, info


def subset_indices(frame, n_most_stable: int = N_MOST_STABLE) -> dict:
    """Material ids of the three subsets (most stable: stable sort by predicted hull distance, NaN last)."""
    uniq = frame.index[frame["unique_prototype"].to_numpy(dtype=bool)]
    order = frame.loc[uniq, "each_pred"].sort_values(na_position="last", kind="stable")
    return {"full_test_set": frame.index, "unique_prototypes": uniq,
            "most_stable_10k": order.head(n_most_stable).index}


def score_predictions(summary, e_form_pred, *, stability_threshold: float = STABILITY_THRESHOLD,
                      max_error: float | None = MAX_ERROR, decimals: int | None = DECIMALS,
                      restrict: bool = False, n_most_stable: int = N_MOST_STABLE,
                      uniq_proto_prevalence: float | None = None) -> dict:
    """Score formation-energy predictions on the three subsets.

    Returns ``{"metrics": {subset: unrounded metrics}, "published": {subset: rounded},
    "info": {...}, "frame": DataFrame}`` with ``missing_preds`` per subset.
    ``uniq_proto_prevalence`` defaults to the stable fraction (unrounded hull distances) of the
    unique prototypes of the scored set (= the canonical value when scoring the whole summary).
    """
    frame, info = prepare_predictions(summary, e_form_pred, max_error=max_error, decimals=decimals,
                                      restrict=restrict)
    idx = subset_indices(frame, n_most_stable)
    if uniq_proto_prevalence is None:
        raw = frame.loc[idx["unique_prototypes"], "each_true_raw"]
        uniq_proto_prevalence = float((raw <= stability_threshold).mean()) if len(raw) else float("nan")
    metrics = {}
    for name, ids in idx.items():
        sub = frame.loc[ids]
        m = discovery_metrics(sub["each_true"].to_numpy(), sub["each_pred"].to_numpy(), stability_threshold)
        if name != "full_test_set":
            m["DAF"] = (m["Precision"] / uniq_proto_prevalence
                        if uniq_proto_prevalence and uniq_proto_prevalence > 0 else float("nan"))
        m["missing_preds"] = int(sub["e_form_pred"].isna().sum())
        m["n_materials"] = len(sub)
        metrics[name] = m
    info["uniq_proto_prevalence"] = uniq_proto_prevalence
    info["stability_threshold"] = stability_threshold
    return {"metrics": metrics, "published": {k: round_metrics(v) for k, v in metrics.items()},
            "info": info, "frame": frame}
