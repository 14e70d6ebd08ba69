"""The campaign report: one row per candidate, written as CSV + JSON with a hull plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matfunnel.campaign.spec import CampaignSpec

COLUMNS = [
    "id", "formula", "spacegroup", "n_sites", "source", "mlip_e_per_atom", "e_form_per_atom",
    "e_above_hull", "hull_distance", "reference", "phonons", "omega_max_thz", "gate", "dft_e_above_hull", "dft_e_form_per_atom",
    "status", "error",
]


def _structure(s) -> Structure | None:
    if s is None or isinstance(s, Structure):
        return s
    return Structure.from_dict(s)


def _spacegroup(struct) -> str | None:
    if struct is None:
        return None
    try:
        return SpacegroupAnalyzer(_structure(struct), symprec=0.1).get_space_group_symbol()
    except Exception:  # noqa: BLE001 - spglib can fail on odd cells; the row stays
        return None


def _round(x, n=4):
    return None if x is None else round(float(x), n)


def build_report(candidates: dict, candidate_docs: list, hull: dict, dft: dict, spec: CampaignSpec,
                 phonons: dict | None = None) -> dict:
    hull_rows = {r["entry_id"]: r for r in hull["rows"]}
    phonons = phonons or {}
    ph_decisions = phonons.get("decisions", {})
    ph_docs = {r.get("label"): r for r in phonons.get("results", [])}
    dft_rows = {r.get("id"): r for r in (dft or {}).get("results", [])}
    decisions = (dft or {}).get("decisions", {})
    provenance = {p.get("candidate_id"): p for p in candidates.get("provenance", [])}
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
        rows.append({
            "id": cid,
            "formula": d.get("formula"),
            "spacegroup": _spacegroup(d.get("final_structure")),
            "n_sites": len(_structure(d["final_structure"])) if d.get("final_structure") else None,
            "source": prov.get("source_id") or prov.get("source"),
            "mlip_e_per_atom": _round(d.get("e_per_atom")),
            "e_form_per_atom": _round(h.get("e_form_per_atom")),
            "e_above_hull": _round(h.get("e_above_hull")),
            "hull_distance": _round(h.get("hull_distance")),
            "reference": hull.get("reference_label"),
            "phonons": ph_decisions.get(cid) if phonons.get("enabled") else None,
            "omega_max_thz": _round(ph_docs.get(cid, {}).get("omega_max_thz"), 3),
            "gate": decisions.get(cid, "n/a"),
            "dft_e_above_hull": _round(x.get("dft_e_above_hull")),
            "dft_e_form_per_atom": _round(x.get("dft_e_form_per_atom")),
            "status": status,
            "error": error,
        })
    for err in candidates.get("errors", []):  # inputs rejected before any GPU time
        label = err.get("label") or err.get("file") or "input"
        rows.append({**dict.fromkeys(COLUMNS), "id": str(label), "status": "rejected", "gate": "n/a",
                     "error": err.get("error")})
    rows.sort(key=lambda r: (r["status"] != "ok", r["e_above_hull"] if r["e_above_hull"] is not None else 1e9, r["id"]))
    from matfunnel.benchmark import gate_metrics

    return {
        "name": spec.name,
        "chemsys": spec.chemsys,
        "potential": spec.potential.name,
        "reference": hull.get("reference_label"),
        "reference_details": hull.get("reference_details", {}),
        "dft_engine": (dft or {}).get("engine", spec.dft.engine),
        "dft_threshold": spec.dft.threshold,
        "candidate_stats": candidates.get("stats", {}),
        "rows": rows,
        # the funnel scores itself: MLIP-predicted stable vs DFT stable for the DFT-checked rows
        "gate_metrics": gate_metrics(rows),
        "dft_runs": [
            {k: r.get(k) for k in ("label", "formula", "energy_per_atom", "converged", "wall_time_s", "error")}
            for r in (dft or {}).get("runs", [])
        ],
    }


def write_report(report: dict, hull: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.csv, report.json and hull.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "report.csv", "json": out_dir / "report.json", "png": out_dir / "hull.png"}
    with paths["csv"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(report["rows"])
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    try:
        _plot(hull, paths["png"], report)
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the table
        report.setdefault("warnings", []).append(f"hull plot failed: {exc}")
        paths.pop("png")
    return paths


def _plot(hull: dict, path: Path, report: dict) -> None:
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    from matfunnel.hull import plot_hull, process_entries

    def load(d):
        if not isinstance(d, dict):
            return d
        return ComputedStructureEntry.from_dict(d) if "structure" in d else ComputedEntry.from_dict(d)

    refs = [load(d) for d in hull["reference_entries"]]
    cands = process_entries([load(d) for d in hull["candidate_entries"]]).entries
    if not refs:
        return
    plot_hull(PhaseDiagram(refs + list(cands)), path, title=f"{report['chemsys']}: {report['reference']}")


def format_table(report: dict, max_rows: int | None = None) -> str:
    """A fixed-width text table of the report for the terminal."""
    rows = report["rows"][:max_rows] if max_rows else report["rows"]
    cols = ["id", "formula", "spacegroup", "mlip_e_per_atom", "e_form_per_atom", "e_above_hull"]
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
    lines = ["  ".join(cell[:w].ljust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = (f"campaign {report['name']} ({report['chemsys']}), potential {report['potential']}\n"
            f"hull reference: {report['reference']}\n"
            f"DFT: {report['dft_engine']} for e_above_hull <= {report['dft_threshold']} eV/atom\n")
    errors = [f"  {r['id']}: {r['error']}" for r in rows if r.get("error")]
    tail = ("\nproblems:\n" + "\n".join(errors)) if errors else ""
    return head + "\n".join(lines) + tail
