"""Geometry-optimisation metrics: MLIP-relaxed vs DFT-relaxed WBM structures.

As in Matbench Discovery's geo-opt task:

* RMSD from ``StructureMatcher(stol=1.0, scale=False).get_rms_dist(pred, dft)`` (normalised by
  (volume/atom)^(1/3), so unitless); structures the matcher cannot map get ``unmatched_rmsd``
  (1.0 = stol, the leaderboard's penalty) in the mean;
* symmetry of both structures at ``symprec`` (default 1e-5): space-group number and number of
  symmetry operations. A structure *matches* when its space-group number equals DFT's; otherwise
  its symmetry *decreased* / *increased* when it has fewer / more operations;
  ``n_sym_ops_mae`` is the mean |n_ops(pred) - n_ops(DFT)|. Fractions are over the structures
  with both symmetries known.

The leaderboard uses moyopy for symmetry; moyopy is used here when installed, else spglib (the
two agree on space groups of well-formed crystals at the same symprec, but may differ at the
edge of the tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from matfunnel.common.structures import as_structure

__all__ = ["geo_opt_metrics", "structure_rmsd", "symmetry_info"]

SYMPREC = 1e-5


def structure_rmsd(pred, ref) -> tuple[float, float]:
    """``(rmsd, max_dist)`` of ``pred`` vs ``ref`` (NaN, NaN when they do not match)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    out = StructureMatcher(stol=1.0, scale=False).get_rms_dist(as_structure(pred), as_structure(ref))
    return (float(out[0]), float(out[1])) if out else (math.nan, math.nan)


def symmetry_info(structure, symprec: float = SYMPREC) -> dict:
    """``{"spg_num", "n_sym_ops", "backend"}`` of a structure (NaN on failure)."""
    s = as_structure(structure)
    try:
        import moyopy
        from moyopy.interface import MoyoAdapter

        ds = moyopy.MoyoDataset(MoyoAdapter.from_structure(s), symprec=symprec)
        return {"spg_num": int(ds.number), "n_sym_ops": int(ds.operations.num_operations), "backend": "moyopy"}
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - odd cells: record as unknown symmetry
        return {"spg_num": math.nan, "n_sym_ops": math.nan, "backend": "moyopy"}
    import spglib

    cell = (s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers))
    try:
        # spglib annotates the cell as nested Sequences but documents and accepts numpy arrays
        ds = spglib.get_symmetry_dataset(cell, symprec=symprec)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001
        ds = None
    if ds is None:
        return {"spg_num": math.nan, "n_sym_ops": math.nan, "backend": "spglib"}
    return {"spg_num": int(ds.number), "n_sym_ops": len(ds.rotations), "backend": "spglib"}


def geo_opt_metrics(pred_structures: Mapping[str, object], ref_structures: Mapping[str, object], *,
                    symprec: float = SYMPREC, unmatched_rmsd: float | None = 1.0,
                    ref_symmetry: Mapping[str, dict] | None = None):
    """Geometry metrics over the materials in both mappings.

    Returns ``(metrics, frame)``: metrics ``rmsd``, ``n_sym_ops_mae``, ``symmetry_decrease``,
    ``symmetry_match``, ``symmetry_increase``, ``n_structures``, ``n_unmatched``; ``frame`` one
    row per material (rmsd, max_dist, spg numbers, n_sym_ops of both).
    ``ref_symmetry`` may supply precomputed DFT symmetries (id -> {"spg_num", "n_sym_ops"}).
    """
    import pandas as pd

    rows = []
    for mid in pred_structures:
        if mid not in ref_structures:
            continue
        pred, ref = as_structure(pred_structures[mid]), as_structure(ref_structures[mid])
        rmsd, max_dist = structure_rmsd(pred, ref)
        sp = symmetry_info(pred, symprec)
        sr = dict(ref_symmetry[mid]) if ref_symmetry and mid in ref_symmetry else symmetry_info(ref, symprec)
        rows.append({"material_id": mid, "rmsd": rmsd, "max_dist": max_dist,
                     "spg_num": sp["spg_num"], "spg_num_dft": sr["spg_num"],
                     "n_sym_ops": sp["n_sym_ops"], "n_sym_ops_dft": sr["n_sym_ops"]})
    frame = pd.DataFrame(rows, columns=["material_id", "rmsd", "max_dist", "spg_num", "spg_num_dft",
                                        "n_sym_ops", "n_sym_ops_dft"]).set_index("material_id")
    spg_diff = frame["spg_num"] - frame["spg_num_dft"]
    ops_diff = frame["n_sym_ops"] - frame["n_sym_ops_dft"]
    frame["spg_num_diff"], frame["n_sym_ops_diff"] = spg_diff, ops_diff
    known = spg_diff.notna()
    n = int(known.sum())
    changed = spg_diff[known] != 0
    rmsd = frame["rmsd"].fillna(unmatched_rmsd) if unmatched_rmsd is not None else frame["rmsd"]
    metrics = {
        "rmsd": float(rmsd.mean()) if len(rmsd.dropna()) else math.nan,
        "n_sym_ops_mae": float(ops_diff.abs().mean()) if n else math.nan,
        "symmetry_decrease": float(((ops_diff[known] < 0) & changed).sum() / n) if n else math.nan,
        "symmetry_match": float((~changed).sum() / n) if n else math.nan,
        "symmetry_increase": float(((ops_diff[known] > 0) & changed).sum() / n) if n else math.nan,
        "n_structures": n,
        "n_unmatched": int(frame["rmsd"].isna().sum()),
        "symprec": symprec,
        "unmatched_rmsd": unmatched_rmsd,
    }
    return metrics, frame
