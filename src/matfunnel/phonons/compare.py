"""Our phonons against DFT references (``matfunnel phonons compare``).

For every reference folder: take the reference's own unit cell, supercell and primitive matrices
and displacement distance (optionally relax the cell with our potential first, symmetry fixed),
compute our force constants, then evaluate both on the *same* q-points: the reference's
irreducible mesh (weighted frequency MAE, thermal properties, ω_max) and the same standard band
path (band frequency MAE). Without ``relax`` the perfect supercell's forces are subtracted, since
the DFT-relaxed cell is not exactly a minimum of the potential.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from matfunnel.phonons.bandpath import band_path
from matfunnel.phonons.calculate import build_phonopy, produce_force_constants
from matfunnel.phonons.dft_reference import (
    PhononReferenceError,
    find_references,
    load_reference,
)
from matfunnel.phonons.properties import (
    DEFAULT_MESH,
    DEFAULT_TEMPERATURES,
    harmonic_summary,
    primitive_structure,
)
from matfunnel.phonons.stability import IMAGINARY_TOL
from matfunnel.phonons.symmetric_relax import TIGHT_FMAX, relax_symmetric_many

log = logging.getLogger(__name__)

COLUMNS = [
    "material_id", "formula", "n_primitive", "n_supercell", "n_displacements", "relaxed", "relax_converged",
    "volume_change_pct",
    "omega_max_thz_ours", "omega_max_thz_ref", "omega_max_k_ours", "omega_max_k_ref",
    "entropy_300k_ours", "entropy_300k_ref", "free_energy_300k_ours", "free_energy_300k_ref",
    "heat_capacity_300k_ours", "heat_capacity_300k_ref",
    "mesh_mae_thz", "band_mae_thz", "min_frequency_thz_ours", "min_frequency_thz_ref",
    "stable_ours", "stable_ref", "wall_time_s", "error",
]


def _mesh_mae(ours, ref_mesh: dict) -> float:
    ours.run_qpoints(ref_mesh["qpoints"])
    f_ours = np.asarray(ours.qpoints.frequencies)
    w = np.asarray(ref_mesh["weights"], dtype=float)
    err = np.abs(f_ours - ref_mesh["frequencies"]).mean(axis=1)
    return float((err * w).sum() / w.sum())


def relax_references(refs: list, potential, *, fmax: float = TIGHT_FMAX, max_steps: int = 1000) -> list:
    """The symmetric relaxations of the references' cells, all together on the batched engine.

    See :func:`~matfunnel.phonons.symmetric_relax.relax_symmetric_many`.
    """
    return relax_symmetric_many([r.structure for r in refs], potential, labels=[r.material_id for r in refs],
                                fmax=fmax, max_steps=max_steps)


def compare_with_reference(ref, potential, *, relax: bool = False, relax_fmax: float = TIGHT_FMAX,
                           relaxed=None, mesh=DEFAULT_MESH, band_npoints: int = 31,
                           temperatures=DEFAULT_TEMPERATURES, imaginary_tol: float = IMAGINARY_TOL
                           ) -> tuple[dict, dict]:
    """One comparison row, plus ``{"ours": summary, "ref": summary}`` (band/DOS data for plots).

    With ``relax`` the cell is relaxed first with its symmetry kept (``relaxed``: that relaxation, done already
    for many references at once by :func:`relax_references`).
    """
    t0 = time.perf_counter()
    structure = ref.structure
    row = {"material_id": ref.material_id, "formula": ref.formula, "n_primitive": len(ref.phonopy.primitive),
           "n_supercell": ref.n_supercell_atoms, "n_displacements": ref.n_displacements, "relaxed": relax}
    if relax:
        if relaxed is None:
            (relaxed,) = relax_references([ref], potential, fmax=relax_fmax)
        if isinstance(relaxed, str):
            raise PhononReferenceError(ref.material_id, f"relaxation failed: {relaxed}")
        final = relaxed.structure
        row["relax_converged"] = relaxed.converged
        row["volume_change_pct"] = 100.0 * (final.volume / structure.volume - 1.0)
        structure = final
    ours = build_phonopy(structure, ref.supercell_matrix, primitive_matrix=ref.primitive_matrix,
                         displacement=ref.displacement)
    produce_force_constants(ours, potential, subtract_residual=not relax, label=ref.material_id)
    path = band_path(primitive_structure(ref.phonopy))
    h_ref = harmonic_summary(ref.phonopy, mesh=mesh, temperatures=temperatures, band_npoints=band_npoints,
                             imaginary_tol=imaginary_tol, path=path)
    h_ours = harmonic_summary(ours, mesh=h_ref["mesh"]["mesh"], temperatures=temperatures,
                              band_npoints=band_npoints, imaginary_tol=imaginary_tol, path=path)
    band_ref = np.concatenate(h_ref["band"]["frequencies"])
    band_ours = np.concatenate(h_ours["band"]["frequencies"])
    for key in ("omega_max_thz", "omega_max_k", "entropy_300k", "free_energy_300k", "heat_capacity_300k"):
        row[f"{key}_ours"], row[f"{key}_ref"] = h_ours[key], h_ref[key]
    row.update(
        mesh_mae_thz=_mesh_mae(ours, h_ref["mesh"]),
        band_mae_thz=float(np.abs(band_ours - band_ref).mean()),
        min_frequency_thz_ours=h_ours["stability"].min_frequency,
        min_frequency_thz_ref=h_ref["stability"].min_frequency,
        stable_ours=h_ours["stability"].stable,
        stable_ref=h_ref["stability"].stable,
        wall_time_s=time.perf_counter() - t0,
        error=None,
    )
    return row, {"ours": h_ours, "ref": h_ref}


def _mae(rows, key):
    vals = [abs(r[f"{key}_ours"] - r[f"{key}_ref"]) for r in rows]
    return float(np.mean(vals)) if vals else None


def summarize(rows: list[dict]) -> dict:
    """MAEs over the materials that worked and the stability-classification accuracy."""
    ok = [r for r in rows if not r.get("error")]
    s = {"n_references": len(rows), "n_compared": len(ok), "n_failed": len(rows) - len(ok),
         "errors": {r["material_id"]: r["error"] for r in rows if r.get("error")}}
    for key in ("omega_max_thz", "entropy_300k", "free_energy_300k", "heat_capacity_300k"):
        s[f"mae_{key}"] = _mae(ok, key)
    s["mape_omega_max_pct"] = float(np.mean([100 * abs(r["omega_max_thz_ours"] / r["omega_max_thz_ref"] - 1)
                                             for r in ok])) if ok else None
    s["mean_mesh_mae_thz"] = float(np.mean([r["mesh_mae_thz"] for r in ok])) if ok else None
    s["mean_band_mae_thz"] = float(np.mean([r["band_mae_thz"] for r in ok])) if ok else None
    agree = [r["stable_ours"] == r["stable_ref"] for r in ok]
    s["stability_accuracy"] = float(np.mean(agree)) if ok else None
    s["stability_confusion"] = {
        "stable_both": sum(r["stable_ours"] and r["stable_ref"] for r in ok),
        "unstable_both": sum(not r["stable_ours"] and not r["stable_ref"] for r in ok),
        "false_stable": sum(r["stable_ours"] and not r["stable_ref"] for r in ok),
        "false_unstable": sum(not r["stable_ours"] and r["stable_ref"] for r in ok),
    }
    return s


def cheapest_references(root, n: int | None = None) -> list[str]:
    """Ids of the references in ``root/index.csv`` ordered by cost (supercell atoms x displacements)."""
    index = Path(root) / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{str(index)!r} not found (needed to order references by cost)")
    with open(index) as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: (int(r["n_supercell"]) * int(r["n_displacements"]), int(r["n_supercell"]),
                             r["material_id"]))
    ids = [r["material_id"] for r in rows]
    return ids[:n] if n else ids


def write_csv(rows: list[dict], path) -> None:
    """Write the comparison ``rows`` to the CSV file ``path`` (finite floats rounded to 6 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()})


def _finished_rows(journal: Path | None, settings: dict) -> dict[str, dict]:
    """Rows of an earlier run with the same settings, by material id (unreadable lines are skipped)."""
    if journal is None or not journal.exists():
        return {}
    out = {}
    for line in journal.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if rec.get("settings") == settings and not rec["row"].get("error"):
            out[rec["row"]["material_id"]] = rec["row"]
    return out


def _append_row(journal: Path, settings: dict, row: dict) -> None:
    journal.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"settings": settings, "row": row}, default=_json_value)
    with open(journal, "a") as fh:  # one write per row: a kill loses at most the row in progress
        fh.write(line + "\n")
        fh.flush()


def _json_value(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def compare_references(root, potential, out=None, *, ids=None, limit: int | None = None, cheapest: bool = False,
                       relax: bool = False, mesh=DEFAULT_MESH, band_npoints: int = 31,
                       imaginary_tol: float = IMAGINARY_TOL, progress=None) -> tuple[list[dict], dict]:
    """Compare every reference folder under ``root`` (or ``ids``; the first ``limit``).

    A bad folder becomes a row with ``error`` set (the message names the folder); the others go on.
    With ``out`` the rows go to that CSV and the summary to ``<out stem>.summary.json``; every finished
    row is also appended to ``<out stem>.rows.jsonl`` as soon as it is done, and a rerun with the same
    potential and settings reuses those rows (failed ones are tried again), so a killed comparison
    resumes where it stopped. ``progress(i, n, material_id)`` is called before each material.
    """
    if cheapest and not ids:
        ids = cheapest_references(root)
    folders = find_references(root, ids)
    if limit:
        folders = folders[:limit]
    refs, relaxed = {}, {}
    if relax:  # all cells relaxed together first (the references are loaded up front for it)
        for folder in folders:
            with contextlib.suppress(Exception):  # reported below, when its row is made
                refs[folder] = load_reference(folder)
        good = list(refs)
        relaxed = dict(zip(good, relax_references([refs[f] for f in good], potential), strict=False))
    name = getattr(potential, "name", str(potential))
    model = potential.model_info() if hasattr(potential, "model_info") else {"name": name}
    settings = {"model": model, "relax": relax,
                "mesh": mesh, "band_npoints": band_npoints, "imaginary_tol": imaginary_tol}
    journal = Path(out).with_suffix(".rows.jsonl") if out else None
    done = _finished_rows(journal, settings)
    rows = []
    for i, folder in enumerate(folders):
        if folder.name in done:
            rows.append(done[folder.name])
            continue
        if progress:
            progress(i, len(folders), folder.name)
        t0 = time.perf_counter()
        try:
            ref = refs.pop(folder, None) or load_reference(folder)
            row, _ = compare_with_reference(ref, potential, relax=relax, relaxed=relaxed.get(folder), mesh=mesh,
                                            band_npoints=band_npoints, imaginary_tol=imaginary_tol)
        except PhononReferenceError as exc:
            row = {"material_id": folder.name, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one material must not stop the comparison
            row = {"material_id": folder.name,
                   "error": f"phonon reference {str(folder)!r}: {type(exc).__name__}: {exc}"}
        row.setdefault("wall_time_s", time.perf_counter() - t0)
        if row.get("error"):
            log.warning("%s", row["error"])
        elif journal is not None:
            _append_row(journal, settings, row)
        rows.append(row)
    summary = summarize(rows)
    summary["potential"] = name
    summary["relax"] = relax
    if out:
        write_csv(rows, out)
        Path(out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return rows, summary
