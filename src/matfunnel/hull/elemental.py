"""The MP elemental reference entries shipped with matfunnel, and formation energies vs them.

``data/2023-02-07-mp-elemental-reference-entries.json.gz`` holds, per element, the lowest-
energy GGA/GGA+U ComputedEntry of the Materials Project (queried 2023-02-07, as published
by Matbench Discovery). Formation energies against these are Matbench Discovery's
convention: ``(E_corrected - sum_el n_el * e_ref[el]) / n_atoms``.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from pymatgen.core import Composition, Element
from pymatgen.entries.computed_entries import ComputedEntry

__all__ = [
    "MP_ELEMENTAL_REFS_DATE",
    "MP_ELEMENTAL_REFS_FILE",
    "e_form_vs_mp_elements",
    "elemental_reference_energies",
    "elemental_reference_entries",
]

MP_ELEMENTAL_REFS_DATE = "2023-02-07"
MP_ELEMENTAL_REFS_FILE = f"{MP_ELEMENTAL_REFS_DATE}-mp-elemental-reference-entries.json.gz"


@lru_cache(maxsize=1)
def _raw_reference_dicts() -> dict[str, dict[str, Any]]:
    path = resources.files("matfunnel") / "data" / MP_ELEMENTAL_REFS_FILE
    with path.open("rb") as fh, gzip.open(fh, "rt") as gz:
        return json.load(gz)


def elemental_reference_entries(elements=None) -> dict[str, ComputedEntry]:
    """MP elemental reference entries, element symbol -> fresh ComputedEntry.

    ``elements``: iterable of symbols/Elements to restrict to (all 89 if None). Raises
    KeyError naming the elements that have no shipped reference.
    """
    raw = _raw_reference_dicts()
    wanted = list(raw) if elements is None else [str(Element(el)) for el in elements]
    missing = sorted(set(wanted) - set(raw))
    if missing:
        raise KeyError(f"no MP elemental reference entry for {missing}")
    return {el: ComputedEntry.from_dict(raw[el]) for el in wanted}


@lru_cache(maxsize=1)
def _reference_energies() -> dict[str, float]:
    # straight from the dicts: building all 89 entries would warn about noble gases' X
    out = {}
    for el, dct in _raw_reference_dicts().items():
        n_atoms = sum(dct["composition"].values())
        out[el] = (dct["energy"] + dct.get("correction", 0.0)) / n_atoms
    return out


def elemental_reference_energies() -> dict[str, float]:
    """MP elemental reference energies, element symbol -> eV/atom (a copy)."""
    return dict(_reference_energies())


def e_form_vs_mp_elements(entry: ComputedEntry) -> float:
    """Formation energy per atom (eV/atom) of ``entry`` vs the MP elemental references.

    Uses ``entry.energy`` (i.e. including any MP2020 corrections already applied), as
    Matbench Discovery does. Raises KeyError if an element has no reference.
    """
    refs = _reference_energies()
    comp: Composition = entry.composition
    missing = sorted(str(el) for el in comp.elements if str(el) not in refs)
    if missing:
        raise KeyError(f"no MP elemental reference energy for {missing}")
    e_ref = sum(comp[el] * refs[str(el)] for el in comp.elements)
    return (entry.energy - e_ref) / comp.num_atoms
