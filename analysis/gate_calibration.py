"""Calibrate the uncertainty-aware DFT gate on real DFT: every candidate of committee campaigns through GPAW.

For each run folder of a committee campaign (``potential: committee:...``; ``dft.engine: none`` is enough, e.g.
``flows/calibration/*.yaml``) this script

1. runs GPAW (PAW-PBE, one static calculation on each MLIP-relaxed structure) on every converged candidate and on
   every offline competing phase of the hull, identical structures once (``plan_dft_runs``); finished
   calculations are kept in ``--cache`` (SQLite) and never recomputed, so a killed run resumes;
2. builds the self-consistent DFT hull of all of them, candidates included (the same joint hull that gives the
   MLIP ``e_above_hull``), and each candidate's DFT energy above it;
3. scores the committee: its spread against its actual error, and the gate rules at equal DFT budget
   (:func:`matfunnel.benchmark.gate_metrics.committee_calibration`), per system and pooled.

Usage::

    python analysis/gate_calibration.py runs/calibration/al-li runs/calibration/li-mg-al \\
        --out benchmarks/results/gate_calibration --jobs 2

Outputs in ``--out``: ``candidates.csv`` (one row per candidate: the members' energies above hull, the mean,
the spread, the DFT value), ``calibration.json`` (the figures), ``calibration.md`` (the tables) and
``calibration.png`` (spread against error; stable found against DFT runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

#: the DFT settings of the calibration: the ``standard`` preset (4 k-points per 1/Å, 0.05 eV smearing) at 400 eV,
#: ample for Li, Mg and Al; the ``quick`` preset's k-mesh is 38 meV/atom off on B32 LiAl, more than the errors
#: being calibrated
SETTINGS = {"preset": "standard", "ecut": 400.0}


def _candidate_docs(store) -> list[dict]:
    docs = []
    for d in store.query({"name": {"$regex": "^candidates relax"}}, load=True):
        docs.extend(x for x in d.get("output") or [] if isinstance(x, dict))
    return docs


def load_run(run_dir: Path) -> dict[str, Any]:
    """The report, the relaxed candidates and the hull's competing phases of a finished run folder."""
    from matfunnel.campaign.local import load_report
    from matfunnel.common.store import embedded_store

    store = embedded_store(run_dir)
    report = load_report(run_dir, store)
    if report is None:
        raise SystemExit(f"{run_dir}: no finished report (run the campaign first)")
    if not any(r.get("e_above_hull_std") is not None for r in report["rows"]):
        raise SystemExit(f"{run_dir}: not a committee campaign (no e_above_hull_std in its report)")
    hull = store.query_one({"name": "hull"}, load=True)["output"]
    return {"report": report, "candidates": _candidate_docs(store), "phases": hull["phases"]}


def _run_one(structure: dict, settings: dict, label: str, cache: str, workdir: str) -> dict:
    """One GPAW calculation in its own folder (a worker process), through the gate's cached job."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from matfunnel.dft.gate import gpaw_job

    Path(workdir).mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    return gpaw_job.original(structure, settings, label, cache)


def run_dft(items: list[tuple[str, Any]], settings: dict, cache: Path, workdir: Path, jobs: int) -> dict[str, dict]:
    """GPAW records ``{id: record}`` of ``items`` (``(id, Structure)``), ``jobs`` at a time."""
    out: dict[str, dict] = {}
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, s.as_dict(), settings, sid, str(cache), str(workdir / sid)): sid
                   for sid, s in items}
        for n, fut in enumerate(as_completed(futures), 1):
            sid = futures[fut]
            try:
                out[sid] = fut.result()
            except Exception as exc:  # noqa: BLE001 - one failed calculation must not lose the others
                out[sid] = {"label": sid, "error": f"structure {sid!r}: {type(exc).__name__}: {exc}"}
            rec = out[sid]
            print(f"[{n}/{len(items)} {time.time() - t0:6.0f} s] {sid}: "
                  f"{rec.get('energy_per_atom')} eV/atom{' (cached)' if rec.get('cached') else ''}"
                  f"{' ERROR ' + str(rec.get('error')) if rec.get('error') else ''}", flush=True)
    return out


def joint_dft_hull(cand: list[dict], comp: list[dict]) -> dict[str, float]:
    """Each candidate's DFT energy above the joint hull of all candidates and competing phases (eV/atom)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    entries = {}
    for rec in [*comp, *cand]:
        epa = rec.get("energy_per_atom")
        if rec.get("error") or epa is None or not math.isfinite(float(epa)) or not rec.get("composition"):
            continue
        c = Composition(rec["composition"])
        entries[str(rec["label"])] = PDEntry(c, float(epa) * c.num_atoms, name=c.reduced_formula)
    pd = PhaseDiagram(list(entries.values()))
    return {str(r["label"]): float(pd.get_e_above_hull(entries[str(r["label"])]))  # type: ignore[arg-type]
            for r in cand if str(r["label"]) in entries}


def calibrate_run(run_dir: Path, args, settings: dict) -> list[dict]:
    """Report rows of ``run_dir`` with their DFT energy above the joint hull (``dft_e_above_hull``)."""
    from matfunnel.common.structures import as_structure
    from matfunnel.dft.dft_hull import expand_results, plan_dft_runs

    run = load_run(run_dir)
    ok = {r["id"] for r in run["report"]["rows"] if r.get("status") == "ok"}
    cands = [(d["label"], as_structure(d["final_structure"], d["label"])) for d in run["candidates"]
             if d["label"] in ok]
    comps = [(pid, as_structure(s, pid)) for pid, s in run["phases"].items()]
    plan = plan_dft_runs(cands, comps)
    print(f"{run_dir}: {len(cands)} candidates, {len(comps)} competing phases, {len(plan['runs'])} unique "
          "structures", flush=True)
    records = run_dft(plan["runs"], settings, args.cache, args.cache.parent / "gpaw" / run_dir.name, args.jobs)
    cand_rec, comp_rec = expand_results(records, plan)
    e_hull = joint_dft_hull(cand_rec, comp_rec)
    rows = []
    for r in run["report"]["rows"]:
        if r["id"] in e_hull:
            rows.append({**r, "system": run["report"]["chemsys"], "dft_e_above_hull": e_hull[r["id"]],
                         "dft_energy_per_atom": next(x["energy_per_atom"] for x in cand_rec if x["label"] == r["id"])})
    return rows


def _fmt(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def tables(results: dict[str, dict]) -> str:
    """The calibration (spread vs error) and equal-budget tables in markdown."""
    lines = ["## Spread against actual error (error = committee mean - DFT, eV/atom)", "",
             "| set | n | Spearman(σ, \\|err\\|) [95% CI] | MAE mean | MAE primary | bias | \\|err\\|≤σ | \\|err\\|≤2σ "
             "| RMS(err/σ) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        if res is None:
            continue
        s = res["spread_vs_error"]
        lines.append(f"| {name} | {res['n']} | {_fmt(s['spearman'])} {s['spearman_ci95']} | {_fmt(s['mae_mean'])} | "
                     f"{_fmt(s['mae_primary'])} | {_fmt(s['bias_mean'])} | {_fmt(s['within_1_sigma'], 2)} | "
                     f"{_fmt(s['within_2_sigma'], 2)} | {_fmt(s['z_rms'], 2)} |")
    lines += ["", "### By spread (equal thirds)", "", "| set | σ range | n | mean σ | MAE | RMSE |",
              "|---|---|---|---|---|---|"]
    for name, res in results.items():
        for b in (res or {}).get("spread_vs_error", {}).get("bins", []):
            lines.append(f"| {name} | {b['sigma_min']:.3f}–{b['sigma_max']:.3f} | {b['n']} | {b['mean_sigma']:.3f} | "
                         f"{b['mae_mean']:.3f} | {b['rmse_mean']:.3f} |")
    lines += ["", "## Gates at equal DFT budget (the plain gate's own budget)", ""]
    for name, res in results.items():
        if res is None:
            continue
        eb = res["equal_budget"]
        lines += [f"**{name}**: budget {eb['budget']} DFT runs, {eb['n_stable']} DFT-stable candidates "
                  f"(DFT e_above_hull ≤ {res['stability_threshold']} eV/atom) among {res['n']}", "",
                  "| rule | found | per DFT run | misses | runs to find all | found in n_stable runs "
                  "| in 2·n_stable | found − plain (bootstrap mean [95% CI]) |",
                  "|---|---|---|---|---|---|---|---|"]
        for rule, r in eb["rules"].items():
            d = res["vs_plain"].get(rule)
            diff = "-" if d is None else f"{d['mean']:+.2f} {d['ci95']}"
            lines.append(f"| {rule} | {r['found']} | {r['per_run']:.2f} | {r['misses']} | {r['runs_to_find_all']} "
                         f"| {r['found_at_n_stable']} | {r['found_at_2n_stable']} | {diff} |")
        lines.append("")
        lines += [f"each rule at the threshold {res['threshold']} eV/atom alone (no budget cap; probability: P ≥ 0.5)",
                  "", "| rule | DFT runs | found | misses | found per run |", "|---|---|---|---|---|"]
        for rule, r in res["at_threshold"].items():
            lines.append(f"| {rule} | {r['sent']} | {r['found']} | {r['misses']} | {_fmt(r['per_run'], 2)} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for system in sorted({r["system"] for r in rows}):
        sub = [r for r in rows if r["system"] == system]
        ax1.scatter([r["e_above_hull_std"] for r in sub],
                    [abs(r["e_above_hull_mean"] - r["dft_e_above_hull"]) for r in sub], s=14, label=system)
    lim = max(r["e_above_hull_std"] for r in rows) * 1.05
    ax1.plot([0, lim], [0, lim], "k--", lw=0.8, label="|err| = σ")
    ax1.set(xlabel="committee σ (eV/atom)", ylabel="|mean − DFT| (eV/atom)", title="spread vs error")
    ax1.legend(fontsize=8)
    pooled = results.get("pooled")
    if pooled:
        for rule, r in pooled["equal_budget"]["rules"].items():
            ax2.plot(range(1, len(r["curve"]) + 1), r["curve"], label=rule, lw=1)
        ax2.axvline(pooled["equal_budget"]["budget"], color="k", lw=0.6, ls=":")
        ax2.set(xlabel="DFT runs (in the rule's order)", ylabel="DFT-stable found", title="pooled")
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gate_calibration"))
    ap.add_argument("--cache", type=Path, default=None, help="GPAW result cache (default OUT/gpaw-cache.sqlite; "
                    "the GPAW folders go beside it)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stability-threshold", type=float, default=0.0)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--variant", action="append", default=[], metavar="RUN_DIR=BASE_DIR",
                    help="a rerun of BASE_DIR's campaign with other committee settings (e.g. relax.committee_relax: "
                         "all): scored against BASE_DIR's DFT, candidate by candidate id (repeatable)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # absolute: each GPAW run works in its own folder
    args.out = args.out.resolve()
    args.cache = (args.cache or args.out / "gpaw-cache.sqlite").resolve()
    from matfunnel.benchmark.gate_metrics import committee_calibration
    from matfunnel.dft.settings import GpawSettings

    settings = GpawSettings.preset(SETTINGS["preset"], ecut=SETTINGS["ecut"]).as_dict()
    rows, results = [], {}
    thresholds = set()
    for run_dir in args.run_dirs:
        got = calibrate_run(run_dir, args, settings)
        threshold = float(load_run(run_dir)["report"]["dft_threshold"])
        thresholds.add(threshold)
        rows += got
        results[got[0]["system"] if got else str(run_dir)] = committee_calibration(
            got, threshold, args.stability_threshold, n_boot=args.n_boot)
    if len(args.run_dirs) > 1:
        results["pooled"] = committee_calibration(rows, min(thresholds), args.stability_threshold, n_boot=args.n_boot)
    variant_rows = []
    for spec in args.variant:
        run_dir, base = (Path(p) for p in spec.split("=", 1))
        truth = {r["id"]: r for r in rows if r["system"] == load_run(base)["report"]["chemsys"]}
        report = load_run(run_dir)["report"]
        got = [{**r, "system": f"{report['chemsys']} ({run_dir.name})",
                "dft_e_above_hull": truth[r["id"]]["dft_e_above_hull"],
                "dft_energy_per_atom": truth[r["id"]]["dft_energy_per_atom"]}
               for r in report["rows"] if r["id"] in truth and r.get("status") == "ok"]
        variant_rows += got
        results[f"{report['chemsys']} ({run_dir.name})"] = committee_calibration(
            got, float(report["dft_threshold"]), args.stability_threshold, n_boot=args.n_boot)
    if len(args.variant) > 1:
        results["pooled variants"] = committee_calibration(variant_rows, min(thresholds), args.stability_threshold,
                                                           n_boot=args.n_boot)
    rows += variant_rows
    members = sorted({m for r in rows for m in r.get("e_above_hull_members") or {}})
    with (args.out / "candidates.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["system", "id", "formula", "n_sites", *[f"e_hull {m}" for m in members], "e_hull primary",
                    "mean", "sigma", "dft_e_above_hull", "dft_energy_per_atom"])
        for r in rows:
            w.writerow([r["system"], r["id"], r["formula"], r.get("n_sites"),
                        *[_fmt((r.get("e_above_hull_members") or {}).get(m), 4) for m in members],
                        _fmt(r["e_above_hull"], 4), _fmt(r["e_above_hull_mean"], 4), _fmt(r["e_above_hull_std"], 4),
                        _fmt(r["dft_e_above_hull"], 4), _fmt(r["dft_energy_per_atom"], 5)])
    (args.out / "calibration.json").write_text(json.dumps({"gpaw_settings": settings, "results": results}, indent=1))
    text = tables(results)
    (args.out / "calibration.md").write_text(text + "\n")
    plot(rows, results, args.out / "calibration.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
