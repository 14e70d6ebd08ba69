"""Strict CIF reading: every data block on its own, cell and atom sites checked before pymatgen builds anything."""

from __future__ import annotations

import math
import re
import warnings

from matfunnel.common.readers._base import (
    ELEMENTS,
    MAX_FILE_POSITIONS,
    MAX_GENERATED_POSITIONS,
    MAX_SITES,
    MAX_STRUCTURES,
    FileItem,
    StructureFileError,
    exc_kind,
    short,
)

#: pymatgen CIF warnings that do not change what was read (kept as warnings on the structure); any other
#: warning (implicit hydrogens, occupancies over 1, a stoichiometry that disagrees with the formula, a line
#: the parser skipped, ...) makes the block an error
_BENIGN_CIF_WARNINGS = (
    "rounded to ideal values",
    "spacegroup from",
    "1-line symmetry op",
    "defaulting to p1",
    " parsed as ",
    "pauling file corrections",
    "keys changed to match",
    "skipping relative stoichiometry check",
    "no magnetic symmetry",
)


_NUM = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:\(\d+\))?$")
_SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz", "_space_group_symop.operation_xyz",
               "_symmetry_equiv.pos_as_xyz")
_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")


def read_cif(text: str, name: str) -> list[FileItem]:
    """Every structure block of a CIF text (metadata-only blocks skipped), each a structure or its error.

    Parameters
    ----------
    text
        The file's text.
    name
        How messages name the file.

    Returns
    -------
    list of FileItem
        One per block with a cell or atom sites, named by the block.

    Raises
    ------
    StructureFileError
        Not a CIF, lines the parser could not interpret, or no block with a cell or atom sites.
    """
    from pymatgen.io.cif import CifFile

    n_blocks = len(re.findall(r"(?im)^\s*data_", text))
    if not n_blocks:
        raise StructureFileError(name, "not a CIF file (no data_ block)")
    if n_blocks > MAX_STRUCTURES:
        raise StructureFileError(name, f"{n_blocks:,} data blocks in one file (limit {MAX_STRUCTURES:,})")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cif = CifFile.from_str(text)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise StructureFileError(name, f"not a valid CIF file ({exc_kind(exc)})") from None
    skipped = sum("possible issue in cif file" in str(w.message).lower() for w in caught)
    if skipped:
        raise StructureFileError(name, f"{skipped} line(s) the CIF parser could not interpret (a broken loop or "
                                       "stray text); not read, to avoid a silent misread")
    total = sum(_block_positions(block.data) for block in cif.data.values())
    if total > MAX_FILE_POSITIONS:
        raise StructureFileError(name, f"its blocks' sites and symmetry operations would generate {total:,} atom "
                                       f"positions (limit {MAX_FILE_POSITIONS:,} per file)")
    items: list[FileItem] = []
    for header, block in cif.data.items():
        data = block.data
        has_cell = any(k in data for k in _CELL_KEYS)
        has_sites = any(k.startswith("_atom_site_fract_") or k.startswith("_atom_site_cartn_") for k in data)
        if not has_cell and not has_sites:
            continue  # metadata block (publication, global)
        items.append(_cif_block(block, header, has_sites))
    if not items:
        raise StructureFileError(name, "no atom sites and no cell in any data block")
    return items


def _cif_number(value: object) -> float | None:
    if isinstance(value, list) or value is None:
        return None
    m = _NUM.match(str(value).strip())
    return float(m.group(1)) if m else None


def _cif_cell_problem(data: dict) -> str | None:
    vals = {}
    for key in _CELL_KEYS:
        if key not in data:
            return f"no {key}"
        v = _cif_number(data[key])
        if v is None or not math.isfinite(v):
            return f"{key} is not a number"
        vals[key] = v
    for key in _CELL_KEYS[:3]:
        if vals[key] <= 0:
            return f"cell length {key[-1]}={vals[key]:g} is not a valid cell"
    ang = [vals[k] for k in _CELL_KEYS[3:]]
    for label, a in zip(("alpha", "beta", "gamma"), ang, strict=True):
        if not 0 < a < 180:
            return f"cell angle {label}={a:g} is not a valid cell"
    ca, cb, cg = (math.cos(math.radians(a)) for a in ang)
    if 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg <= 1e-8:
        return f"cell angles alpha={ang[0]:g}, beta={ang[1]:g}, gamma={ang[2]:g} give no volume"
    return None


def _cif_sites_problem(data: dict) -> str | None:
    fract = all(f"_atom_site_fract_{x}" in data for x in "xyz")
    cart = all(f"_atom_site_cartn_{x}" in data for x in "xyz")
    if not fract and not cart:
        return "no atom sites (_atom_site_fract_x/y/z)"
    prefix = "_atom_site_fract_" if fract else "_atom_site_cartn_"
    cols = [data[prefix + x] for x in "xyz"]
    cols = [c if isinstance(c, list) else [c] for c in cols]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        return "atom-site columns of different lengths"
    if n > MAX_SITES:
        return f"{n} atom sites (limit {MAX_SITES})"
    n_ops = _cif_symop_count(data)
    if n * n_ops > MAX_GENERATED_POSITIONS:
        return (f"{n} atom sites x {n_ops} symmetry operations would generate {n * n_ops:,} atom positions "
                f"(limit {MAX_GENERATED_POSITIONS:,})")
    for i in range(n):
        for c in cols:
            v = _cif_number(c[i])
            if v is None or not math.isfinite(v):
                return f"atom site {i + 1}: a coordinate is not a number"
    symbols = data.get("_atom_site_type_symbol", data.get("_atom_site_label"))
    if symbols is None:
        return "atom sites without _atom_site_type_symbol or _atom_site_label"
    symbols = symbols if isinstance(symbols, list) else [symbols]
    for i, sym in enumerate(symbols):
        letters = re.match(r"[A-Za-z]{1,2}", str(sym).strip())
        two = letters.group(0).capitalize() if letters else ""
        if two not in ELEMENTS and two[:1] not in ELEMENTS:
            return f"atom site {i + 1}: {short(str(sym))} is not a chemical element"
    return None


def _block_positions(data: dict) -> int:
    """How many atom positions a block's sites and symmetry operations would generate (before any check)."""
    col = data.get("_atom_site_fract_x", data.get("_atom_site_cartn_x"))
    if col is None:
        return 0
    return (len(col) if isinstance(col, list) else 1) * _cif_symop_count(data)


def _cif_symop_count(data: dict) -> int:
    """How many symmetry operations pymatgen will apply to each site (192 when it must look them up)."""
    for key in _SYMOP_KEYS:
        if key in data:
            ops = data[key]
            return len(ops) if isinstance(ops, list) else 1
    return 192  # from the space-group symbol or number: at most 192 (F m -3 m)


def _cif_block(block, header: str, has_sites: bool) -> FileItem:
    """One CIF data block -> its structure, or the error naming the block."""
    from pymatgen.io.cif import CifParser

    data = block.data
    problem = _cif_cell_problem(data) or (_cif_sites_problem(data) if has_sites else "no atom sites")
    if problem:
        return FileItem(header, error=problem)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parser = CifParser.from_str(str(block))
            structs = parser.parse_structures(primitive=False, on_error="raise")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, ArithmeticError) as exc:
        return FileItem(header, error=f"pymatgen could not build the structure ({exc_kind(exc)})")
    noted = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    noted = list(dict.fromkeys(m.strip() for m in [*noted, *getattr(parser, "warnings", [])]
                               if m.strip() and not m.startswith("Issues encountered while parsing CIF")))
    serious = [m for m in noted if not any(b in m.lower() for b in _BENIGN_CIF_WARNINGS)]
    if serious:
        return FileItem(header, error=f"pymatgen warns: {short(serious[0].splitlines()[0], 160)}")
    if len(structs) != 1:
        return FileItem(header, error=f"{len(structs)} structures in one block")
    return FileItem(header, structs[0], warnings=[short(m.splitlines()[0], 160) for m in noted])
