"""User-supplied structures: CIF, POSCAR/CONTCAR/*.vasp and JSON files, or folders of them.

Every problem (unparseable file, empty structure, overlapping atoms, disorder, ...) becomes one error
record naming the file; it never stops the other files from loading.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from pymatgen.core import Lattice, Structure

from matfunnel.common.errors import StructureError
from matfunnel.potential.validate import to_structure, validate_structure

#: file suffixes picked up when scanning a folder (plus names containing POSCAR/CONTCAR)
STRUCTURE_SUFFIXES = (".cif", ".json", ".vasp", ".poscar")


def _is_structure_file(path: Path) -> bool:
    name = path.name
    if name.startswith("."):
        return False
    upper = name.upper()
    return path.suffix.lower() in STRUCTURE_SUFFIXES or "POSCAR" in upper or "CONTCAR" in upper


def _expand(paths) -> list[Path]:
    if isinstance(paths, (str, PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and _is_structure_file(f)))
        else:
            files.append(p)
    return files


def _read_json(path: Path) -> list[Structure]:
    with open(path) as fh:
        data = json.load(fh)
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ValueError("the JSON file holds an empty list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "lattice" not in item or "sites" not in item:
            where = f"item {i}" if isinstance(data, list) else "the JSON object"
            raise ValueError(f"{where} is not a pymatgen Structure dict (needs 'lattice' and 'sites')")
        if not item["sites"]:
            out.append(Structure(Lattice.from_dict(item["lattice"]), [], []))  # rejected as empty below
            continue
        out.append(Structure.from_dict(item))
    return out


def _read_cif(path: Path) -> list[Structure]:
    from pymatgen.io.cif import CifParser

    parser = CifParser(path)
    structs = parser.parse_structures(primitive=False)
    if not structs:
        raise ValueError("no structure could be read from the CIF file")
    return structs


def _read_file(path: Path) -> list[Structure]:
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError("file not found")
    if path.stat().st_size == 0:
        raise ValueError("the file is empty")
    if suffix.startswith(".json"):
        return _read_json(path)
    if suffix.startswith(".cif"):
        return _read_cif(path)
    upper = path.name.upper()
    if suffix in (".vasp", ".poscar") or "POSCAR" in upper or "CONTCAR" in upper:
        from pymatgen.io.vasp import Poscar

        return [Poscar.from_file(path, check_for_potcar=False).structure]
    return [Structure.from_file(path)]


def load_user_structures(
    paths: str | PathLike | Iterable[str | PathLike],
) -> tuple[list[Structure], list[dict]]:
    """Read user structures from files and/or folders (folders are scanned recursively, sorted).

    Returns ``(structures, errors)``. Each structure gets ``properties`` ``label`` (file stem, with
    ``#i`` for multi-structure files), ``source_file`` and ``role="user"``. Each error is a dict
    ``{"file", "index", "label", "error"}`` (``index`` is None when the whole file failed).
    Validation uses :func:`matfunnel.potential.validate.validate_structure` (empty structures,
    atoms closer than 0.5 A, disorder, degenerate cells).
    """
    structures: list[Structure] = []
    errors: list[dict] = []
    for path in _expand(paths):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                read = _read_file(path)
        except Exception as exc:  # noqa: BLE001 - any parser failure is a per-file error
            msg = str(exc).strip() or type(exc).__name__
            errors.append(
                {"file": str(path), "index": None, "label": path.name,
                 "error": f"{path.name}: could not read a structure ({type(exc).__name__}: {msg})"}
            )
            continue
        for i, struct in enumerate(read):
            label = path.stem if len(read) == 1 else f"{path.stem}#{i}"
            try:
                struct = to_structure(struct, label)
                validate_structure(struct, label)
            except StructureError as exc:
                errors.append(
                    {"file": str(path), "index": i, "label": label, "error": f"{path.name}: {exc.problem}"}
                )
                continue
            struct = struct.copy()
            struct.properties = {**(struct.properties or {}), "label": label,
                                 "source_file": str(path), "role": "user"}
            structures.append(struct)
    return structures, errors
