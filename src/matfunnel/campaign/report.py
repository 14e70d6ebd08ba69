"""The campaign report: one row per candidate, written as CSV + JSON with a hull plot."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from jobflow import Maker, job
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matfunnel.benchmark.gate_metrics import gate_metrics
from matfunnel.common.documents import CandidatesDoc, DftDoc, HullDoc, PhononGateDoc, as_doc
from matfunnel.common.structures import as_structure

COLUMNS = [
    "id", "formula", "spacegroup", "n_sites", "source", "mlip_e_per_atom", "e_form_per_atom",
    "e_above_hull", "hull_distance", "reference", "phonons", "omega_max_thz", "gate", "dft_e_above_hull",
    "dft_e_form_per_atom",
    "status", "error",
]
#: the columns of a committee campaign (``potential: committee:...``), after :data:`COLUMNS`: only where a row has
#: them, so a single potential's report.csv keeps exactly :data:`COLUMNS`
COMMITTEE_COLUMNS = ["e_above_hull_mean", "e_above_hull_std", "gate_probability"]


def _spacegroup(struct) -> str | None:
    if struct is None:
        return None
    try:
        return SpacegroupAnalyzer(as_structure(struct), symprec=0.1).get_space_group_symbol()
    except Exception:  # noqa: BLE001 - spglib can fail on odd cells; the row stays
        return None


def _round(x, n=4):
    return None if x is None else round(float(x), n)


@dataclass
class ReportMaker(Maker):
    """The campaign's table (``report.csv``, ``report.json``) and hull plot (``hull.png``).

    Parameters
    ----------
    name
        The job's name.
    campaign
        The campaign's name (the report's title).
    potential
        The potential's name (shown in the title).
    out_dir
        Folder of the report files (None: the job's working folder).
    run_id
        The run that produces this report (``matfunnel run`` sets it; a report of another run is never shown).
    reference_note
        Why the hull has the references it has (e.g. ``"MP query failed: ..."``), shown in the header.
    """

    name: str = "report"
    campaign: str = "campaign"
    potential: str = ""
    out_dir: str | None = None
    run_id: str = ""
    reference_note: str = ""

    @job
    def make(self, candidates: CandidatesDoc, candidate_docs: list, hull: HullDoc, dft: DftDoc,
             phonons: PhononGateDoc | None = None) -> dict:
        """The report of the stages' documents, also written to ``out_dir``."""
        hull = as_doc(HullDoc, hull)
        report = build_report(as_doc(CandidatesDoc, candidates), candidate_docs, hull, as_doc(DftDoc, dft),
                              self.campaign, self.potential, as_doc(PhononGateDoc, phonons) if phonons else None,
                              run_id=self.run_id, reference_note=self.reference_note)
        write_report(report, hull, Path(self.out_dir or os.getcwd()))
        return report


def build_report(candidates: CandidatesDoc, candidate_docs: list, hull: HullDoc, dft: DftDoc, campaign: str,
                 potential: str, phonons: PhononGateDoc | None = None, run_id: str = "",
                 reference_note: str = "") -> dict:
    """One row per candidate (and per rejected input), sorted: ok first, lowest ``e_above_hull`` first.

    ``run_id`` identifies the run that produced the report; ``reference_note`` says why the hull has its
    references (both go into the report's header).
    """
    hull_rows = hull.row_by_id()
    phonons = phonons or PhononGateDoc()
    ph_docs = {r.get("label"): r for r in phonons.results}
    dft_rows = {r.get("id"): r for r in dft.results}
    provenance = {p.get("candidate_id"): p for p in candidates.provenance}
    scores = getattr(dft, "scores", {}) or {}
    rows = []
    for d in candidate_docs:
        cid = d["label"]
        h = hull_rows.get(cid, {})
        x = dft_rows.get(cid, {})
        prov = provenance.get(cid, {})
        error = d.get("error") or h.get("error") or x.get("error")
        if d.get("energy") is None:
            status = "failed"
        elif not d.get("converged"):
            status = "unconverged"
        elif h.get("error"):
            status = "failed"
        else:
            status = "ok"
        committee = {}
        if h.get("e_above_hull_members") is not None:  # a committee's hull row: the members' mean and spread
            committee = {"e_above_hull_mean": _round(h.get("e_above_hull_mean")),
                         "e_above_hull_std": _round(h.get("e_above_hull_std")),
                         "e_above_hull_members": {m: _round(v) for m, v in h["e_above_hull_members"].items()},
                         "gate_probability": _round(scores.get(cid, {}).get("probability"))}
            if h.get("committee_errors"):
                committee["committee_errors"] = h["committee_errors"]
        rows.append({
            "id": cid,
            "formula": d.get("formula"),
            "spacegroup": _spacegroup(d.get("final_structure")),
            "n_sites": len(as_structure(d["final_structure"])) if d.get("final_structure") else None,
            "source": prov.get("source_id") or prov.get("source"),
            "mlip_e_per_atom": _round(d.get("e_per_atom")),
            "e_form_per_atom": _round(h.get("e_form_per_atom")),
            "e_above_hull": _round(h.get("e_above_hull")),
            "hull_distance": _round(h.get("hull_distance")),
            "reference": hull.reference_label,
            "phonons": phonons.decisions.get(cid) if phonons.enabled else None,
            "omega_max_thz": _round(ph_docs.get(cid, {}).get("omega_max_thz"), 3),
            "gate": dft.decisions.get(cid, "n/a"),
            "dft_e_above_hull": _round(x.get("dft_e_above_hull")),
            "dft_e_form_per_atom": _round(x.get("dft_e_form_per_atom")),
            "status": status,
            "error": error,
            **committee,
        })
    for err in candidates.errors:  # inputs rejected before any GPU time
        label = err.get("label") or err.get("file") or "input"
        rows.append({**dict.fromkeys(COLUMNS), "id": str(label), "status": "rejected", "gate": "n/a",
                     "error": err.get("error")})
    rows.sort(key=lambda r: (r["status"] != "ok", r["e_above_hull"] if r["e_above_hull"] is not None else 1e9, r["id"]))
    return {
        "name": campaign,
        "run_id": run_id,
        "chemsys": candidates.chemsys,
        "potential": potential,
        "reference": hull.reference_label,
        "reference_details": hull.reference_details,
        "reference_note": reference_note,
        "dft_engine": dft.engine,
        "dft_threshold": dft.threshold,
        **({"dft_rule": dft.rule, "dft_rule_parameters": dft.rule_parameters} if dft.rule != "plain" else {}),
        "candidate_stats": candidates.stats,
        "rows": rows,
        # the funnel scores itself: MLIP-predicted stable vs DFT stable for the DFT-checked rows
        "gate_metrics": gate_metrics(rows, threshold=dft.threshold if dft.threshold is not None else 0.05),
        "dft_runs": [
            {k: r.get(k) for k in ("label", "formula", "energy_per_atom", "converged", "wall_time_s", "error")}
            for r in dft.runs
        ],
    }


def write_report(report: dict, hull: HullDoc, out_dir: Path) -> dict[str, Path]:
    """Write report.csv, report.json and hull.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "report.csv", "json": out_dir / "report.json", "png": out_dir / "hull.png"}
    with paths["csv"].open("w", newline="") as fh:
        # a loop's rounds, a committee's spread: only where present (a plain campaign's columns stay COLUMNS)
        extra = [c for c in ("dft_round", *COMMITTEE_COLUMNS) if any(c in r for r in report["rows"])]
        w = csv.DictWriter(fh, fieldnames=COLUMNS + extra, extrasaction="ignore")
        w.writeheader()
        w.writerows(report["rows"])
    tmp = paths["json"].with_name(paths["json"].name + ".part")  # never a half-written report.json
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(paths["json"])
    try:
        _plot(hull, paths["png"], report)
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the table
        report.setdefault("warnings", []).append(f"hull plot failed: {exc}")
        paths.pop("png")
    return paths


def _plot(hull: HullDoc, path: Path, report: dict) -> None:
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    from matfunnel.hull import plot_hull, process_entries

    def load(d):
        if not isinstance(d, dict):
            return d
        return ComputedStructureEntry.from_dict(d) if "structure" in d else ComputedEntry.from_dict(d)

    refs = [load(d) for d in hull.reference_entries]
    cands = process_entries([load(d) for d in hull.candidate_entries]).entries
    if not refs:
        return
    plot_hull(PhaseDiagram(refs + list(cands)), path, title=f"{report['chemsys']}: {report['reference']}")


def format_table(report: dict, max_rows: int | None = None) -> str:
    """A fixed-width text table of the report for the terminal."""
    rows = report["rows"][:max_rows] if max_rows else report["rows"]
    cols = ["id", "formula", "spacegroup", "mlip_e_per_atom", "e_form_per_atom", "e_above_hull"]
    if any(r.get("e_above_hull_std") is not None for r in rows):  # a committee: the members' mean and spread
        cols += ["e_above_hull_mean", "e_above_hull_std"]
    if any(r.get("phonons") for r in rows):  # the phonon gate ran
        cols += ["phonons", "omega_max_thz"]
    cols += ["gate", "dft_e_above_hull", "status"]

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    table = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [min(max(len(row[i]) for row in table), 48) for i in range(len(cols))]
    lines = ["  ".join(cell[:w].ljust(w) for cell, w in zip(row, widths, strict=False)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (f"campaign {report['name']} ({report['chemsys']}), potential {report['potential']}\n"
            f"hull reference: {report['reference']}"
            + (f" ({report['reference_note']})" if report.get("reference_note") else "") + "\n"
            + gate_line(report) + "\n")
    errors = [f"  {r['id']}: {r['error']}" for r in rows if r.get("error")]
    tail = ("\nproblems:\n" + "\n".join(errors)) if errors else ""
    return head + "\n".join(lines) + tail + format_scoring(report) + format_loop(report)


def format_scoring(report: dict) -> str:
    """The gate's self-scoring (``report["gate_metrics"]``) as text lines; empty without DFT results."""
    gm = report.get("gate_metrics") or {}
    if not gm.get("n_with_dft"):
        return ""
    out = [f"\nself-scoring: {gm['n_with_dft']} candidates with DFT, {gm['n_dft_stable']} DFT-stable "
           f"(hit rate {gm.get('hit_rate')})"]
    cal = gm.get("committee")
    if cal:
        s, eb = cal["spread_vs_error"], cal["equal_budget"]
        out.append(f"committee: Spearman(sigma, |mean - DFT|) = {s['spearman']} {s['spearman_ci95']}; "
                   f"|error| <= sigma for {s['within_1_sigma']:.0%}, <= 2 sigma for {s['within_2_sigma']:.0%}; "
                   f"MAE {s['mae_mean']:.3f} eV/atom (n = {cal['n']})")
        found = ", ".join(f"{rule} {r['found']}" for rule, r in eb["rules"].items())
        out.append(f"stable found in the first {eb['budget']} of the DFT-checked candidates, by rule: {found} "
                   f"(of {eb['n_stable']}; a re-ranking of the gated set only)")
    return "\n".join(out)


def gate_line(report: dict) -> str:
    """The header line that says which candidates the DFT gate sends (its rule and numbers)."""
    engine, t = report["dft_engine"], report["dft_threshold"]
    rule, p = report.get("dft_rule", "plain"), report.get("dft_rule_parameters") or {}
    if rule == "mean":
        return f"DFT: {engine} for e_above_hull_mean <= {t} eV/atom (rule mean: the committee's mean)"
    if rule == "mean_k_sigma":
        return (f"DFT: {engine} for e_above_hull_mean - {p.get('k')}*e_above_hull_std <= {t} eV/atom "
                f"(rule mean_k_sigma)")
    if rule == "probability":
        return f"DFT: {engine} for P(e_above_hull <= {t} eV/atom) >= {p.get('min_probability')} (rule probability)"
    if rule == "budget":
        return (f"DFT: {engine} for the most likely within {t} eV/atom, in order of P (rule budget, "
                f"P >= {p.get('budget_min_probability')})")
    return f"DFT: {engine} for e_above_hull <= {t} eV/atom"


def format_loop(report: dict) -> str:
    """The loop's rounds (``report["loop"]``) as text lines; empty without a loop."""
    loop = report.get("loop")
    if not loop:
        return ""

    def pair(r: dict, key: str, unit: str) -> str:
        b, a = r.get(f"{key}_before"), r.get(f"{key}_after")
        return f"{'-' if b is None else b} -> {'-' if a is None else a} {unit}"

    out = [f"\nloop: {len(loop['rounds'])} round(s) after the first pass ({loop.get('stopped', '')})"]
    for r in loop["rounds"]:
        sent = [cid for cid, dec in r.get("decisions", {}).items() if dec == "to DFT"]
        out.append(f"  round {r['round']}: fine-tuned on {r['n_frames']} DFT frames -> {r['checkpoint']}")
        out.append(f"    MLIP vs DFT before -> after: forces {pair(r, 'forces_mae', 'meV/A')}, stress "
                   f"{pair(r, 'stress_mae', 'GPa')}, e_above_hull {pair(r, 'e_hull_mae', 'eV/atom')} "
                   f"({r.get('n_dft_checked', 0)} DFT-checked)")
        out.append(f"    gate: {len(sent)} to DFT ({', '.join(sent) or 'none'}), budget left {r.get('budget_left')}, "
                   f"hit rate {r.get('hit_rate')}")
    return "\n".join(out)
