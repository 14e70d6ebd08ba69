"""Strict POSCAR/CONTCAR reading: the checks VASP's format leaves to the reader, then pymatgen (warnings = errors)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

from matfunnel.common.readers._base import ELEMENTS, MAX_SITES, FileItem, StructureFileError, exc_kind, short

_COORD_MODES = {"d": "direct", "c": "cartesian", "k": "cartesian"}


def _floats(line: str, n: int | None, name: str, lineno: int, what: str) -> list[float]:
    parts = line.split()
    if n is not None:
        parts = parts[:n]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise StructureFileError(name, f"line {lineno}: {what} is not a number") from None
    if n is not None and len(vals) < n:
        raise StructureFileError(name, f"line {lineno}: {what} needs {n} numbers, found {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise StructureFileError(name, f"line {lineno}: {what} is not finite (NaN/inf)")
    return vals


def _poscar_header(lines: list[str], name: str) -> tuple[list[str], list[int], int]:
    """Element symbols, counts and the index of the coordinate-mode line of a POSCAR."""
    if len(lines) < 8:
        raise StructureFileError(name, f"a POSCAR needs at least 8 lines (comment, scale, 3 lattice vectors, "
                                       f"symbols, counts, coordinate mode); found {len(lines)}")
    scale = _floats(lines[1], None, name, 2, "the scale factor")
    if len(scale) not in (1, 3) or any(s == 0 for s in scale) or (len(scale) == 3 and min(scale) < 0):
        raise StructureFileError(name, "line 2: the scale factor must be one non-zero number or three positive ones")
    matrix = np.array([_floats(lines[k], 3, name, k + 1, "a lattice vector") for k in range(2, 5)])
    vol = abs(float(np.linalg.det(matrix))) * (abs(scale[0]) ** 3 if len(scale) == 1 and scale[0] > 0 else 1.0)
    if not vol > 1e-3:
        raise StructureFileError(name, f"lines 3-5: the cell is degenerate (volume {vol:.3g} A^3)")
    symbols = lines[5].split()
    if not symbols or all(_is_int(s) for s in symbols):
        raise StructureFileError(name, "line 6: no element symbols line (VASP 4 format); add the element symbols "
                                       "above the counts line")
    elements = [s.split("_")[0].split("/")[0] for s in symbols]
    for s in elements:
        if s not in ELEMENTS:
            raise StructureFileError(name, f"line 6: {short(s)} is not a chemical element")
    count_parts = lines[6].split()
    if not count_parts or not all(_is_int(c) for c in count_parts):
        raise StructureFileError(name, "line 7: the counts line must hold whole numbers of atoms")
    counts = [int(c) for c in count_parts]
    if len(counts) != len(elements):
        raise StructureFileError(name, f"{len(elements)} element symbols (line 6) but {len(counts)} counts (line 7)")
    if any(c <= 0 for c in counts):
        raise StructureFileError(name, "line 7: every count must be a positive whole number")
    if sum(counts) > MAX_SITES:
        raise StructureFileError(name, f"{sum(counts)} atoms (limit {MAX_SITES})")
    mode = 7
    if lines[mode].strip()[:1].lower() == "s":  # selective dynamics
        mode += 1
    if mode >= len(lines) or lines[mode].strip()[:1].lower() not in _COORD_MODES:
        raise StructureFileError(name, f"line {mode + 1}: expected the coordinate mode (Direct or Cartesian)")
    return elements, counts, mode


def _is_int(s: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", s))


def read_poscar(text: str, name: str) -> FileItem:
    """The structure of a POSCAR/CONTCAR text, read strictly.

    Parameters
    ----------
    text
        The file's text.
    name
        How messages name the file.

    Returns
    -------
    FileItem
        The structure (velocities and other trailing sections are not read).

    Raises
    ------
    StructureFileError
        A missing symbols line, symbols and counts that disagree, too few or too many coordinate lines, a
        number that is not finite, a zero scale or a flat cell, more than :data:`MAX_SITES` atoms.
    """
    from pymatgen.io.vasp import Poscar

    lines = text.splitlines()
    elements, counts, mode = _poscar_header(lines, name)
    n = sum(counts)
    coords = lines[mode + 1: mode + 1 + n]
    n_coord = 0
    for line in coords:
        if not line.strip():
            break
        n_coord += 1
    if n_coord < n:
        raise StructureFileError(name, f"the counts add up to {n} atoms but there are {n_coord} coordinate lines")
    for k, line in enumerate(coords):
        _floats(line, 3, name, mode + 2 + k, "an atom's coordinates")
    after = lines[mode + 1 + n] if len(lines) > mode + 1 + n else ""
    if after.strip() and _looks_like_coords(after):
        raise StructureFileError(name, f"more coordinate lines than the {n} atoms the counts add up to")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            struct = Poscar.from_str(text, read_velocities=False).structure
    except (ValueError, IndexError, KeyError, TypeError, ArithmeticError, Warning) as exc:
        raise StructureFileError(name, f"not a valid POSCAR ({exc_kind(exc)})") from None
    want = [el for el, c in zip(elements, counts, strict=True) for _ in range(c)]
    got = [site.specie.symbol for site in struct]
    if got != want:
        raise StructureFileError(name, "pymatgen read other species than the symbols and counts lines say")
    return FileItem(None, struct)


def _looks_like_coords(line: str) -> bool:
    parts = line.split()
    if len(parts) < 3:
        return False
    try:
        [float(p) for p in parts[:3]]
    except ValueError:
        return False
    return True


