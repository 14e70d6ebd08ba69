"""Turn a scored Matbench Discovery run into a markdown table and figures.

    python analysis/matbench_discovery_report.py RUN_DIR [--out DIR] [--subset unique_prototypes]

RUN_DIR is the output folder of ``matfunnel benchmark matbench-discovery`` (it reads
``metrics-<model>.json`` and ``scored-<model>.csv.gz``). Writes into ``--out`` (default RUN_DIR):

* ``report.md``            this run's metrics on the three subsets beside the published numbers
                           of a few models (analysis/matbench_discovery_published.json, with source)
* ``hull-parity.png``      predicted vs DFT hull distance
* ``hull-histogram.png``   histogram of the DFT hull distance coloured by TP/FP/TN/FN
* ``cumulative-precision-recall.png``  precision/recall when screening most-stable-first
* ``roc.png``              ROC curve (threshold swept on the predicted hull distance)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PUBLISHED = Path(__file__).with_name("matbench_discovery_published.json")
COLS = ["F1", "DAF", "Precision", "Recall", "Accuracy", "TPR", "TNR", "MAE", "RMSE", "R2"]
SUBSET_TITLES = {"unique_prototypes": "Unique prototypes (leaderboard)", "full_test_set": "Full test set",
                 "most_stable_10k": "10k most stable predictions"}


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown_report(metrics: dict, published: dict) -> str:
    model = metrics["model"]
    info = metrics.get("info", {})
    lines = [f"# Matbench Discovery (IS2RE): {model}", ""]
    scope = (f"{info.get('n_materials')} materials"
             + (" (restricted to the predicted materials: a subset run, not comparable to the leaderboard)"
                if info.get("restricted_to_predictions") else " (every material of the WBM summary)"))
    proto = metrics.get("protocol", {})
    lines += [f"Scope: {scope}; {info.get('n_missing', 0)} without prediction, {info.get('n_outliers', 0)} "
              f"outliers (> 5 eV/atom) dropped.",
              f"Protocol: {proto.get('optimizer')} + {proto.get('cell_filter')}, fmax {proto.get('fmax')} eV/Å, "
              f"≤ {proto.get('max_steps')} steps; {metrics.get('n_converged')}/{metrics.get('n_relaxed')} converged.",
              ""]
    for subset, title in SUBSET_TITLES.items():
        if subset not in metrics.get("published", {}):
            continue
        lines += [f"## {title}", "", "| Model | " + " | ".join(COLS) + " |",
                  "|---|" + "---:|" * len(COLS)]
        ours = metrics["published"][subset]
        lines.append(f"| **{model} (this run)** | " + " | ".join(_fmt(ours.get(c)) for c in COLS) + " |")
        for name, subs in published["models"].items():
            row = subs.get(subset, {})
            lines.append(f"| {name} (published) | " + " | ".join(_fmt(row.get(c)) for c in COLS) + " |")
        lines.append("")
    geo = metrics.get("geometry")
    if geo:
        lines += ["## Geometry (symprec 1e-5)", "", "| Model | RMSD | sym. match | sym. decrease | sym. increase |",
                  "|---|---:|---:|---:|---:|",
                  f"| **{model} (this run)** | {geo['rmsd']:.4f} | {geo['symmetry_match']:.4f} | "
                  f"{geo['symmetry_decrease']:.4f} | {geo['symmetry_increase']:.4f} |"]
        for name, subs in published["models"].items():
            g = subs.get("geometry_symprec_1e-5")
            if g:
                lines.append(f"| {name} (published) | {g['rmsd']:.4f} | {g['symmetry_match']:.4f} | "
                             f"{g['symmetry_decrease']:.4f} | {g['symmetry_increase']:.4f} |")
        lines.append("")
    lines += [f"Published numbers: {published['_source']}", ""]
    return "\n".join(lines)


def figures(scored, model: str, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = scored.dropna(subset=["each_true", "each_pred"])
    t, p = ok["each_true"].to_numpy(float), ok["each_pred"].to_numpy(float)
    paths = {"parity": out / "hull-parity.png", "histogram": out / "hull-histogram.png",
             "cumulative": out / "cumulative-precision-recall.png", "roc": out / "roc.png"}

    fig, ax = plt.subplots(figsize=(5, 5))
    if len(t) > 5000:
        hb = ax.hexbin(t, p, gridsize=120, bins="log", mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=ax, label="materials")
    else:
        ax.scatter(t, p, s=12, alpha=0.7)
    lo = float(min(t.min(initial=0), p.min(initial=0))) - 0.05
    hi = float(max(t.max(initial=0), p.max(initial=0))) + 0.05
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="DFT hull distance (eV/atom)",
           ylabel=f"{model} hull distance (eV/atom)", title=f"{model}: MAE {np.abs(t - p).mean():.3f} eV/atom")
    fig.savefig(paths["parity"], dpi=150, bbox_inches="tight")
    plt.close(fig)

    # histogram of the DFT hull distance, stacked by classification outcome
    stable_t, stable_p = t <= 0, p <= 0
    classes = {"TP": stable_t & stable_p, "FN": stable_t & ~stable_p, "FP": ~stable_t & stable_p,
               "TN": ~stable_t & ~stable_p}
    colors = {"TP": "tab:green", "FN": "tab:orange", "FP": "tab:red", "TN": "tab:blue"}
    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = max(lo, -1.0), min(hi, 1.0)
    bins = np.linspace(lo, hi, 80 if len(t) > 1000 else 20)
    ax.hist([np.clip(t[m], lo, hi) for m in classes.values()], bins=bins, stacked=True,
            color=list(colors.values()), label=[f"{k} {int(m.sum())}" for k, m in classes.items()])
    ax.axvline(0, color="k", lw=1)
    ax.set(xlabel="DFT hull distance (eV/atom)", ylabel="materials",
           title=f"{model}: classification by predicted hull distance")
    ax.legend()
    fig.savefig(paths["histogram"], dpi=150, bbox_inches="tight")
    plt.close(fig)

    # cumulative precision and recall when screening in order of predicted hull distance
    order = np.argsort(p, kind="stable")
    hits = np.cumsum(stable_t[order])
    n = np.arange(1, len(order) + 1)
    n_stable = max(int(stable_t.sum()), 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, hits / n, label="precision")
    ax.plot(n, hits / n_stable, label="recall")
    n_pred_stable = int(stable_p.sum())
    if n_pred_stable:
        ax.axvline(n_pred_stable, color="gray", ls=":", lw=1, label="predicted-stable cut")
    ax.set(xlabel="materials screened (most stable predictions first)", ylabel="cumulative metric",
           ylim=(0, 1.02), title=f"{model}: cumulative precision and recall")
    ax.legend()
    fig.savefig(paths["cumulative"], dpi=150, bbox_inches="tight")
    plt.close(fig)

    # ROC: sweep the stability threshold applied to the predicted hull distance
    thresholds = np.unique(np.concatenate([[-np.inf], np.sort(p), [np.inf]]))
    n_neg = max(int((~stable_t).sum()), 1)
    tpr = np.array([(stable_t & (p <= th)).sum() / n_stable for th in thresholds])
    fpr = np.array([(~stable_t & (p <= th)).sum() / n_neg for th in thresholds])
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{model}: ROC (threshold on predicted hull distance)")
    ax.legend(loc="lower right")
    fig.savefig(paths["roc"], dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def make_report(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    import pandas as pd

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    mfiles = sorted(run_dir.glob("metrics-*.json"))
    if not mfiles:
        raise FileNotFoundError(f"no metrics-*.json in {run_dir} (run `matfunnel benchmark matbench-discovery` first)")
    metrics = json.loads(mfiles[-1].read_text())
    published = json.loads(PUBLISHED.read_text())
    md = out / "report.md"
    md.write_text(markdown_report(metrics, published))
    scored = pd.read_csv(metrics["files"]["scored"], index_col=0)
    return {"markdown": md, **figures(scored, metrics["model"], out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    paths = make_report(args.run_dir, args.out)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
