"""User JSON files: pymatgen Structure / ComputedStructureEntry documents, decoded without importing anything.

Every ``@module``/``@class`` pair anywhere in the document must be in :data:`ALLOWED_CLASSES`; the check runs
on the plain :mod:`json` data before any pymatgen ``from_dict`` (which would import the named module).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
from pymatgen.core import Lattice, Structure

from matfunnel.common.readers._base import (
    MAX_JSON_DEPTH,
    MAX_SITES,
    MAX_STRUCTURES,
    FileItem,
    StructureFileError,
    exc_kind,
    short,
)

#: the classes a user JSON file may name (``@module`` -> allowed ``@class`` names)
ALLOWED_CLASSES: dict[str, frozenset[str]] = {
    "pymatgen.core.structure": frozenset({"Structure", "IStructure"}),
    "pymatgen.core.lattice": frozenset({"Lattice"}),
    "pymatgen.core.sites": frozenset({"PeriodicSite", "Site"}),
    "pymatgen.core.periodic_table": frozenset({"Element", "Species"}),
    "pymatgen.core.composition": frozenset({"Composition"}),
    # entries moved from pymatgen.entries.computed_entries to pymatgen.core.entries; files have either
    **dict.fromkeys(("pymatgen.entries.computed_entries", "pymatgen.core.entries"), frozenset(
        {"ComputedStructureEntry", "ComputedEntry", "ConstantEnergyAdjustment", "CompositionEnergyAdjustment",
         "TemperatureEnergyAdjustment", "ManualEnergyAdjustment", "EnergyAdjustment"})),
    "pymatgen.electronic_structure.core": frozenset({"Magmom"}),
    "numpy": frozenset({"array"}),
}
_STRUCTURE_CLASSES = frozenset({"Structure", "IStructure"})
_ENTRY_CLASSES = frozenset({"ComputedStructureEntry"})


def read_json(text: str, name: str) -> list[FileItem]:
    """The structures of a JSON text: one document or a list, each a structure or its error.

    Parameters
    ----------
    text
        The file's text.
    name
        How messages name the file.

    Returns
    -------
    list of FileItem
        One per document (``item <i>`` in a list).

    Raises
    ------
    StructureFileError
        Not JSON, nested too deeply, an empty or too long list, or a class outside :data:`ALLOWED_CLASSES`.
    """
    try:
        data = json.loads(text)
    except RecursionError:
        raise StructureFileError(name, "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise StructureFileError(name, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    problem = _disallowed_class(data)
    if problem:
        raise StructureFileError(name, problem)
    if isinstance(data, list):
        if not data:
            raise StructureFileError(name, "the JSON file holds an empty list")
        if len(data) > MAX_STRUCTURES:
            raise StructureFileError(name, f"{len(data)} structures in one file (limit {MAX_STRUCTURES})")
        return [_json_item(d, f"item {i}") for i, d in enumerate(data)]
    return [_json_item(data, None)]


def _disallowed_class(data: object) -> str | None:
    """The first ``@module``/``@class`` pair outside :data:`ALLOWED_CLASSES`, or a too-deep nesting, or None."""
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(obj, dict):
            if "@module" in obj or "@class" in obj:
                mod, cls = obj.get("@module"), obj.get("@class")
                if not isinstance(mod, str) or not isinstance(cls, str) or cls not in ALLOWED_CLASSES.get(mod, ()):
                    return (f"refused class {short(f'{mod}.{cls}', 60)}: a structure file may only hold pymatgen "
                            "Structure/ComputedStructureEntry documents (nothing was imported)")
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)
    return None


def _json_item(d: object, where: str | None) -> FileItem:
    """One JSON document -> its structure (an entry's ``structure``), or the error."""
    what = where or "the JSON document"
    if isinstance(d, dict) and (d.get("@class") in _ENTRY_CLASSES or ("structure" in d and "sites" not in d)):
        d = d.get("structure")
        what += "'s structure"
    if not isinstance(d, dict) or "lattice" not in d or "sites" not in d:
        return FileItem(where, error=f"{what} is not a pymatgen Structure document (needs 'lattice' and 'sites')")
    if "@class" in d and d["@class"] not in _STRUCTURE_CLASSES:
        return FileItem(where, error=f"{what} is a {short(d['@class'])}, not a Structure")
    sites = d["sites"]
    if not isinstance(sites, list):
        return FileItem(where, error=f"{what}: 'sites' is not a list")
    if len(sites) > MAX_SITES:
        return FileItem(where, error=f"{what}: {len(sites)} atoms (limit {MAX_SITES})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lattice = Lattice.from_dict(d["lattice"]) if isinstance(d["lattice"], dict) else None
            if lattice is None or not np.all(np.isfinite(lattice.matrix)):
                return FileItem(where, error=f"{what}: the lattice is not a 3x3 matrix of finite numbers")
            if not sites:
                return FileItem(where, error=f"{what}: the structure has no atoms")
            struct = Structure.from_dict(d)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, ArithmeticError, ImportError,
            Warning) as exc:
        return FileItem(where, error=f"{what} is not a valid Structure document ({exc_kind(exc)})")
    return FileItem(where, struct)


