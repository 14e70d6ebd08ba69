"""Strict readers for user structure files: CIF, POSCAR/CONTCAR/``*.vasp`` and pymatgen JSON.

A user file is hostile until read: every reader here checks the bytes before any parser sees them (a
regular file, under a size cap, text, UTF-8, no absurd lines) and checks the structures after (real
elements, ordered sites, finite numbers, a cell with volume, at most :data:`MAX_SITES` atoms).

* **CIF**: every ``data_`` block is read on its own; a bad block is reported by its name and the other
  blocks still load. Cell parameters and atom sites are checked before pymatgen builds anything, so a
  zero angle or a site of unknown element is named instead of surfacing as ``ZeroDivisionError``.
  Blocks with neither a cell nor atom sites (publication metadata) are skipped.
* **POSCAR**: the element-symbols line must exist (no VASP 4 guessing from the comment line) and match
  the counts line, there must be exactly as many coordinate lines as the counts add up to, every number
  finite; any warning pymatgen still raises is an error.
* **JSON**: decoded with :mod:`json` only; every ``@module``/``@class`` pair anywhere in the document
  must be one of :data:`ALLOWED_CLASSES` (checked before anything is imported or built), so a file cannot
  make the reader import a module. A Structure document, a ComputedStructureEntry-like document (its
  ``structure``) or a list of them.

Errors never quote the file's contents: they say where (file, block, line, item) and what is wrong.
Whole-file problems raise :class:`StructureFileError`; per-block/per-item problems come back as
:class:`FileItem` records with ``error`` set, beside the good ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from matfunnel.common.readers._base import (
    MAX_FILE_BYTES,
    MAX_FILE_POSITIONS,
    MAX_GENERATED_POSITIONS,
    MAX_JSON_DEPTH,
    MAX_LINE_CHARS,
    MAX_SITES,
    MAX_STRUCTURES,
    FileItem,
    StructureFileError,
    check_lines,
    read_text,
    structure_problem,
)
from matfunnel.common.readers.cif import read_cif
from matfunnel.common.readers.pmg_json import ALLOWED_CLASSES, read_json
from matfunnel.common.readers.poscar import read_poscar

__all__ = [
    "ALLOWED_CLASSES",
    "MAX_FILE_BYTES",
    "MAX_FILE_POSITIONS",
    "MAX_GENERATED_POSITIONS",
    "MAX_JSON_DEPTH",
    "MAX_LINE_CHARS",
    "MAX_SITES",
    "MAX_STRUCTURES",
    "FileItem",
    "StructureFileError",
    "read_structure_file",
    "read_text",
    "structure_format",
    "structure_problem",
]


def structure_format(path: str | os.PathLike) -> str | None:
    """The format of a structure file by its name: ``"cif"``, ``"json"``, ``"poscar"`` or None.

    ``.gz`` is looked through (``x.cif.gz`` is a CIF); POSCAR/CONTCAR anywhere in the name is a POSCAR.
    """
    name = Path(path).name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix.lower()
    if suffix in (".cif", ".mcif"):
        return "cif"
    if suffix == ".json":
        return "json"
    upper = name.upper()
    if suffix in (".vasp", ".poscar") or "POSCAR" in upper or "CONTCAR" in upper:
        return "poscar"
    return None


def read_structure_file(
    path: str | os.PathLike,
    name: str | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> list[FileItem]:
    """Read every structure of a CIF, POSCAR or JSON file, strictly.

    Parameters
    ----------
    path
        The file.
    name
        How messages name the file (default: its name).
    max_bytes
        Size cap, before and after decompression.

    Returns
    -------
    list of FileItem
        One per CIF block / JSON item (a POSCAR gives one); good ones carry a checked ``structure``.

    Raises
    ------
    StructureFileError
        The file as a whole cannot be used (missing, not a regular file, too large, empty, binary, not
        UTF-8, unknown format, no structure at all, ...).
    """
    path = Path(path)
    name = name or path.name
    fmt = structure_format(path)
    if fmt is None:
        raise StructureFileError(name, "unknown structure file type (expected .cif, .json, .vasp, .poscar, "
                                       "POSCAR or CONTCAR in the name)")
    text = read_text(path, name, max_bytes)
    if fmt == "json":
        items = read_json(text, name)
    else:
        check_lines(text, name)
        items = read_cif(text, name) if fmt == "cif" else [read_poscar(text, name)]
    if not items:
        raise StructureFileError(name, "no structure in the file")
    if len(items) > MAX_STRUCTURES:
        raise StructureFileError(name, f"{len(items)} structures in one file (limit {MAX_STRUCTURES})")
    for item in items:
        if item.structure is not None:
            problem = structure_problem(item.structure)
            if problem:
                item.structure, item.error = None, problem
    return items
