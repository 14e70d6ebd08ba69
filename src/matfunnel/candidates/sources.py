"""User-supplied structures: CIF, POSCAR/CONTCAR/*.vasp and JSON files, or folders of them.

Every file is read strictly (:mod:`matfunnel.common.readers`) and every structure checked (real elements,
ordered, finite, a cell with volume, no overlapping atoms) here, at load time: a bad file, CIF block or
JSON item becomes one error record naming it and the problem, and the good ones still load. Only when
nothing at all can be used does :func:`load_user_structures` raise (:class:`UserStructuresError`).

Folders are scanned for structure files by name (``.cif``, ``.json``, ``.vasp``, ``.poscar``, POSCAR or
CONTCAR in the name, ``.gz`` of those), at most :data:`MAX_FOLDER_DEPTH` levels deep, looking at no more
than :data:`MAX_FOLDER_ENTRIES` entries and taking no more than :data:`MAX_FOLDER_FILES` files (more is a
clear error, never a silent cut). Symbolic links leading out of the folder are not followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from os import PathLike
from pathlib import Path

from pymatgen.core import Structure

from matfunnel.common.errors import StructureError
from matfunnel.common.readers import MAX_FILE_BYTES, StructureFileError, read_structure_file, structure_format
from matfunnel.potential.validate import validate_structure

#: most structure files taken from one folder
MAX_FOLDER_FILES = 1000
#: most folder entries looked at while scanning one folder (all levels together)
MAX_FOLDER_ENTRIES = 20000
#: deepest subfolder scanned (1 = the folder's own files only)
MAX_FOLDER_DEPTH = 3


class UserStructuresError(ValueError):
    """No usable structure at all in the user's files; the message names each file and its problem."""

    def __init__(self, errors: list[dict], problem: str = "no usable structure in the user's files"):
        self.errors = errors
        shown = "; ".join(e["error"] for e in errors[:5])
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        super().__init__(f"{problem}: {shown}{more}" if errors else problem)


@dataclass(frozen=True)
class _Source:
    path: Path
    name: str  # how messages name the file


def _folder_error(name: str, problem: str, what: str = "folder") -> dict:
    """The error record of a folder (or of an entry of it that was not read)."""
    return {"file": name, "index": None, "label": name, "block": None, "error": f"{what} {name!r}: {problem}"}


def _scan_folder(folder: Path, errors: list[dict], max_files: int) -> list[_Source]:
    """The structure files of ``folder`` (sorted; see the module doc for the bounds); problems go to ``errors``."""
    root = folder.resolve()
    label = folder.name or str(folder)
    found: list[_Source] = []
    skipped: list[dict] = []
    seen = 0
    stack: list[tuple[Path, int]] = [(folder, 1)]
    while stack:
        here, depth = stack.pop()
        try:
            with os.scandir(here) as it:  # never list more than the cap allows, however large the folder
                entries = sorted(islice(it, MAX_FOLDER_ENTRIES - seen + 1), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            skipped.append(_folder_error(_display(label, folder, here), f"cannot be read ({exc.strerror})"))
            continue
        seen += len(entries)
        if seen > MAX_FOLDER_ENTRIES:
            errors.append(_folder_error(label, f"holds more than {MAX_FOLDER_ENTRIES:,} entries; not scanned "
                                               "(give the structure files or a smaller folder)"))
            return []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            shown = _display(label, folder, path)
            if entry.is_symlink():
                if not _inside(path, root):
                    if structure_format(path) is not None:
                        skipped.append(_folder_error(shown, "a link to outside the folder, not followed", "file"))
                    continue
                if path.is_dir():
                    continue  # a link to a folder inside this one: scanned there
            if entry.is_dir(follow_symlinks=False):
                if depth < MAX_FOLDER_DEPTH:
                    stack.append((path, depth + 1))
                else:
                    skipped.append(_folder_error(shown, f"deeper than {MAX_FOLDER_DEPTH} levels, "
                                                        "not scanned"))
                continue
            if structure_format(path) is not None:
                found.append(_Source(path, shown))
    if len(found) > max_files:
        errors.append(_folder_error(label, f"holds {len(found):,} structure files (limit {max_files:,}); "
                                           "give a smaller folder or the files themselves"))
        return []
    errors.extend(sorted(skipped, key=lambda e: e["file"]))
    if not found:
        errors.append(_folder_error(label, "holds no structure files (.cif, .json, .vasp, .poscar, "
                                           "POSCAR or CONTCAR in the name)"))
    return sorted(found, key=lambda s: s.name)


def _display(label: str, folder: Path, path: Path) -> str:
    try:
        rel = path.relative_to(folder)
    except ValueError:
        return path.name
    return f"{label}/{rel}" if str(rel) != "." else label


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):  # outside, unreadable, or a link loop
        return False
    return True


def _expand(paths, errors: list[dict], max_files: int) -> list[_Source]:
    if isinstance(paths, (str, PathLike)):
        paths = [paths]
    files: list[_Source] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(_scan_folder(p, errors, max_files))
        else:
            files.append(_Source(p, p.name or str(p)))
    return files


def _load_file(src: _Source, max_bytes: int, structures: list[Structure], errors: list[dict]) -> None:
    """Read one file; its good structures go to ``structures``, every problem to ``errors``."""
    try:
        items = read_structure_file(src.path, src.name, max_bytes)
    except StructureFileError as exc:
        errors.append({"file": str(src.path), "index": None, "label": src.name, "block": None, "error": str(exc)})
        return
    stem = src.path.name.split(".")[0] if src.path.name.lower().endswith(".gz") else src.path.stem
    for i, item in enumerate(items):
        label = stem if len(items) == 1 else f"{stem}#{i}"
        problem = item.error
        if item.structure is not None:
            try:
                validate_structure(item.structure, label)
            except StructureError as exc:
                problem = exc.problem
        if problem is not None or item.structure is None:
            errors.append({"file": str(src.path), "index": i, "label": label, "block": item.block,
                           "error": str(StructureFileError(src.name, problem or "no structure", item.block))})
            continue
        struct = item.structure.copy()
        props = {**(struct.properties or {}), "label": label, "source_file": str(src.path), "role": "user"}
        if item.block is not None:
            props["source_block"] = item.block
        if item.warnings:
            props["read_warnings"] = list(item.warnings)
        struct.properties = props
        structures.append(struct)


def load_user_structures(
    paths: str | PathLike | Iterable[str | PathLike],
    *,
    max_bytes: int = MAX_FILE_BYTES,
    max_files: int = MAX_FOLDER_FILES,
) -> tuple[list[Structure], list[dict]]:
    """Read user structures from files and/or folders, strictly; bad files are reported, good ones load.

    Parameters
    ----------
    paths
        Files and/or folders (see the module doc for how folders are scanned).
    max_bytes
        Largest file read (bytes, also after decompression).
    max_files
        Most structure files taken from one folder.

    Returns
    -------
    structures : list of Structure
        The good structures, each with ``properties`` ``label`` (file stem, ``#i`` appended in a
        multi-structure file), ``source_file``, ``role="user"``, ``source_block`` (CIF block or JSON item,
        when the file has several) and ``read_warnings`` (what the parser noted, when anything).
    errors : list of dict
        One ``{"file", "index", "label", "block", "error"}`` per bad file, block, item or folder entry
        (``index``/``block`` None when the whole file failed); ``error`` names the file (and block) and the
        problem, never the file's contents.

    Raises
    ------
    UserStructuresError
        Paths were given but not one structure could be used (every file bad, or no structure file found);
        its message lists the problems.
    """
    structures: list[Structure] = []
    errors: list[dict] = []
    sources = _expand(paths, errors, max_files)
    for src in sources:
        _load_file(src, max_bytes, structures, errors)
    if not structures and (sources or errors):
        raise UserStructuresError(errors)
    return structures, errors
