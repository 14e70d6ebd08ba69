"""A tiny data set in the format of the Matbench Discovery WBM files, for tests and demos.

``make_synthetic_wbm(data_dir)`` writes ``wbm/2023-12-13-wbm-summary.csv.gz``,
``wbm/2022-10-19-wbm-init-structs.jsonl.gz`` and
``wbm/2022-10-19-wbm-computed-structure-entries.jsonl.gz`` (the registry's relative paths) for a
handful of small crystals: the "DFT-relaxed" structures are ideal ones, the initial structures
are strained and rattled copies, and the DFT energies are made-up numbers with the real column
names. The md5 sums of course differ from the registry's: run with ``check_md5=False``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from matfunnel.benchmark.data import DATA_FILES


def _crystals() -> list[tuple[str, Structure, float, float, bool]]:
    """(id, ideal structure, DFT E_form eV/atom, DFT hull distance eV/atom, unique prototype)."""
    rs = lambda a, x, y: Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [x, y],  # noqa: E731
                                                   [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    b32 = Structure.from_spacegroup("Fd-3m", Lattice.cubic(6.37), ["Li", "Al"],
                                    [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    cscl = Structure(Lattice.cubic(3.15), ["Li", "Al"], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    return [
        ("wbm-1-1", rs(5.69, "Na", "Cl"), -2.10, 0.000, True),
        ("wbm-1-2", rs(4.21, "Mg", "O"), -3.05, -0.010, True),
        ("wbm-2-1", b32, -0.17, 0.000, True),
        ("wbm-2-2", cscl, -0.10, 0.070, True),
        ("wbm-3-1", rs(4.02, "Li", "F"), -3.20, 0.020, False),
        ("wbm-3-2", rs(5.64, "K", "F"), -2.90, 0.150, True),
    ]


def make_synthetic_wbm(data_dir: str | Path, *, seed: int = 0, rattle: float = 0.03,
                       strain: float = 0.03) -> dict[str, Path]:
    """Write the synthetic WBM files under ``data_dir``; return key -> path."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    data_dir = Path(data_dir)
    (data_dir / "wbm").mkdir(parents=True, exist_ok=True)
    rows, inits, cses = [], [], []
    for mid, ideal, e_form, e_hull, uniq in _crystals():
        init = ideal.copy()
        init.apply_strain(float(strain) * (1 if rng.random() < 0.5 else -1))
        init.perturb(rattle, min_distance=rattle / 2)
        n = len(ideal)
        energy = -4.0 * n  # made-up "VASP" energy
        rows.append({
            "material_id": mid, "formula": ideal.composition.reduced_formula, "n_sites": n,
            "volume": ideal.volume, "uncorrected_energy": energy,
            "e_form_per_atom_wbm": e_form, "e_above_hull_wbm": e_hull,
            "bandgap_pbe": 0.0, "uncorrected_energy_from_cse": energy,
            "e_correction_per_atom_mp2020": 0.0, "e_correction_per_atom_mp_legacy": 0.0,
            "e_form_per_atom_uncorrected": e_form, "e_form_per_atom_mp2020_corrected": e_form,
            "e_above_hull_mp2020_corrected_ppd_mp": e_hull, "wyckoff_spglib": "",
            "wyckoff_spglib_initial_structure": "", "unique_prototype": uniq,
        })
        inits.append({"material_id": mid, "formula_from_cse": ideal.composition.formula,
                      "initial_structure": init.as_dict()})
        cse = ComputedStructureEntry(ideal, energy, entry_id=mid)
        cses.append({"material_id": mid, "computed_structure_entry": cse.as_dict()})
    paths = {k: data_dir / DATA_FILES[k].path for k in
             ("wbm_summary", "wbm_initial_structures", "wbm_computed_structure_entries")}
    pd.DataFrame(rows).to_csv(paths["wbm_summary"], index=False)
    for key, recs in (("wbm_initial_structures", inits), ("wbm_computed_structure_entries", cses)):
        with gzip.open(paths[key], "wt", encoding="utf-8") as fh:
            for r in recs:
                fh.write(json.dumps(r) + "\n")
    return paths
