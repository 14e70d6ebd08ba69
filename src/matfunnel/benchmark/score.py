"""Score prediction files and finished runs; write the run's outputs."""

from __future__ import annotations

import gzip
import json
import math
import time
from pathlib import Path

from matfunnel.benchmark import data as mbd_data
from matfunnel.benchmark.metrics import (
    E_FORM_DFT,
    EACH_TRUE,
    SUBSETS,
    score_predictions,
)

__all__ = ["format_metrics", "read_predictions", "score_file", "score_run"]

_DFT_E_FORM_COLS = {E_FORM_DFT, "e_form_per_atom_uncorrected", "e_form_per_atom_wbm"}


def read_predictions(path: str | Path, pred_col: str | None = None):
    """Predicted formation energies of a CSV/JSON file as a Series indexed by material_id.

    ``pred_col`` defaults to the one ``e_form_per_atom_*`` column that is not a DFT column.
    """
    import pandas as pd

    path = str(path)
    stem = path.removesuffix(".gz").removesuffix(".bz2")
    df = pd.read_json(path) if stem.endswith(".json") else pd.read_csv(path)
    id_col = "material_id" if "material_id" in df else df.columns[0]
    if pred_col is None:
        cands = [c for c in df.columns if str(c).startswith("e_form_per_atom_") and c not in _DFT_E_FORM_COLS]
        if len(cands) != 1:
            raise ValueError(f"{path}: cannot tell the prediction column among {list(df.columns)}; "
                             f"pass --pred-col")
        pred_col = cands[0]
    if pred_col not in df:
        raise ValueError(f"{path}: no column {pred_col!r} (columns: {list(df.columns)})")
    s = df.set_index(id_col)[pred_col]
    s.index = s.index.map(str)
    s.name = pred_col
    return s


def _clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def score_file(path: str | Path, *, pred_col: str | None = None, data_dir=None, summary_path=None,
               restrict: bool = False, download: bool = True, stability_threshold: float = 0.0,
               max_error: float | None = 5.0, check_md5: bool = True) -> dict:
    """Score a predictions file against the WBM summary; returns the JSON-able result."""
    preds = read_predictions(path, pred_col)
    spath = summary_path or mbd_data.fetch("wbm_summary", data_dir, download_missing=download, check=check_md5)
    summary = mbd_data.load_wbm_summary(spath)
    res = score_predictions(summary, preds, restrict=restrict, stability_threshold=stability_threshold,
                            max_error=max_error)
    res.pop("frame")
    res["info"].update(predictions=str(path), pred_col=preds.name, summary=str(spath))
    return _clean(res)


def format_metrics(result: dict) -> str:
    """A text table of the rounded metrics of the three subsets."""
    pub = result["published"]
    keys = ["F1", "DAF", "Precision", "Recall", "Accuracy", "TPR", "TNR", "MAE", "RMSE", "R2",
            "TP", "FP", "TN", "FN", "missing_preds"]
    subsets = [s for s in SUBSETS if s in pub]
    head = ["metric", *subsets]
    rows = [head] + [[k, *("-" if pub[s].get(k) is None else f"{pub[s][k]:g}" for s in subsets)] for k in keys]
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(wi) for c, wi in zip(r, w, strict=False)) for r in rows]
    lines.insert(1, "  ".join("-" * wi for wi in w))
    info = result.get("info", {})
    extra = (f"\n{info.get('n_materials')} materials scored, {info.get('n_missing')} without prediction, "
             f"{info.get('n_outliers')} outliers (|error| > 5 eV/atom) dropped"
             + (" (restricted to predicted materials)" if info.get("restricted_to_predictions") else ""))
    geo = result.get("geometry")
    if geo:
        extra += (f"\ngeometry (symprec={geo['symprec']:g}): RMSD {geo['rmsd']:.4f}, symmetry match "
                  f"{geo['symmetry_match']:.4f}, decrease {geo['symmetry_decrease']:.4f}, increase "
                  f"{geo['symmetry_increase']:.4f}, n={geo['n_structures']}")
    return "\n".join(lines) + extra


def score_run(rows: list[dict], cfg, out: Path, summary, *, wall_time: float = 0.0, n_shards_run: int = 0) -> dict:
    """Write predictions / structures / scored table / metrics of a finished run; return metrics."""
    import pandas as pd

    slug = cfg.slug
    col = f"e_form_per_atom_{slug}"
    preds = pd.DataFrame([{"material_id": r["material_id"], col: r["e_form_per_atom"]} for r in rows])
    preds = preds.set_index("material_id")[col].astype(float)
    res = score_predictions(summary, preds, restrict=cfg.subset is not None)
    frame = res.pop("frame")

    paths = {
        "predictions": out / f"predictions-{slug}.csv.gz",
        "structures": out / f"relaxed-structures-{slug}.jsonl.gz",
        "scored": out / f"scored-{slug}.csv.gz",
        "metrics": out / f"metrics-{slug}.json",
    }
    table = pd.DataFrame({
        "material_id": [r["material_id"] for r in rows],
        col: [r["e_form_per_atom"] for r in rows],
        f"e_above_hull_{slug}": [
            None if r["e_form_per_atom"] is None else float(
                summary.at[r["material_id"], EACH_TRUE] + r["e_form_per_atom"]
                - summary.at[r["material_id"], E_FORM_DFT])
            for r in rows],
        f"energy_{slug}": [r["energy"] for r in rows],
        "correction_per_atom": [r["correction_per_atom"] for r in rows],
        "n_sites": [r["n_sites"] for r in rows],
        "n_steps": [r["n_steps"] for r in rows],
        "converged": [r["converged"] for r in rows],
        "error": [r["error"] for r in rows],
    })
    table.to_csv(paths["predictions"], index=False)
    with gzip.open(paths["structures"], "wt", encoding="utf-8") as fh:
        for r in rows:
            if r.get("structure") is not None:
                fh.write(json.dumps({"material_id": r["material_id"], f"{slug}_structure": r["structure"]}) + "\n")
    frame.to_csv(paths["scored"])

    result = {
        "model": cfg.potential,
        "pred_col": col,
        "task": "IS2RE",
        "protocol": cfg.protocol(),
        "subset": cfg.subset,
        "sample": cfg.sample,
        "n_relaxed": len(rows),
        "n_converged": sum(bool(r["converged"]) for r in rows),
        "n_failed": sum(r["e_form_per_atom"] is None for r in rows),
        "wall_time_s": wall_time,
        "n_shards_run": n_shards_run,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **res,
        "files": {k: str(v) for k, v in paths.items()},
    }
    geo = _geometry(rows, cfg)
    if geo is not None:
        result["geometry"], geo_frame = geo
        gpath = out / f"geo-opt-{slug}.csv.gz"
        geo_frame.to_csv(gpath)
        result["files"]["geometry"] = str(gpath)
    result = _clean(result)
    paths["metrics"].write_text(json.dumps(result, indent=2))
    return result


def _geometry(rows: list[dict], cfg):
    if cfg.geometry == "off":
        return None
    if cfg.geometry == "auto":
        if mbd_data.locate("wbm_computed_structure_entries", cfg.data_dir) is None:
            return None
        path = mbd_data.fetch("wbm_computed_structure_entries", cfg.data_dir, download_missing=False,
                              check=cfg.check_md5)
    else:
        path = mbd_data.fetch("wbm_computed_structure_entries", cfg.data_dir, download_missing=cfg.download,
                              progress=cfg.progress, check=cfg.check_md5)
    from matfunnel.benchmark.geometry import geo_opt_metrics

    pred = {r["material_id"]: r["structure"] for r in rows if r.get("structure") is not None}
    ref = mbd_data.load_dft_structures(path, set(pred))
    return geo_opt_metrics(pred, ref)
