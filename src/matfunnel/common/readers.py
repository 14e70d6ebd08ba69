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

import gzip
import json
import math
import os
import re
import stat
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Lattice, Structure

#: largest file read (bytes, after decompression)
MAX_FILE_BYTES = 5 * 2**20
#: most atoms in one structure
MAX_SITES = 5000
#: most structures in one file
MAX_STRUCTURES = 1000
#: longest line in a CIF or POSCAR (CIF 1.1 allows 2048)
MAX_LINE_CHARS = 4096
#: most atom positions a CIF block's sites and symmetry operations may generate (pymatgen's de-duplication is
#: quadratic in them: 6000 take it about 20 s; 3000 sites in F m -3 m would take hours)
MAX_GENERATED_POSITIONS = 6_000
#: deepest nesting of a JSON document
MAX_JSON_DEPTH = 64

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


class StructureFileError(ValueError):
    """A user structure file (or one block/item of it) cannot be used.

    The message names the file (and the block or item) and the problem, never the file's contents.
    """

    def __init__(self, file: str, problem: str, block: str | None = None):
        self.file = file
        self.block = block
        self.problem = problem
        where = f"file {file!r}" + (f", block {block!r}" if block is not None else "")
        super().__init__(f"{where}: {problem}")


@dataclass
class FileItem:
    """One structure of a file (a CIF block, a JSON list item), or why it could not be read.

    ``block`` is the CIF block name or ``item <i>`` (None for a one-structure file); exactly one of
    ``structure`` and ``error`` is set; ``warnings`` are what the parser noted without changing the result.
    """

    block: str | None
    structure: Structure | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


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
        items = _read_json(text, name)
    else:
        _check_lines(text, name)
        items = _read_cif(text, name) if fmt == "cif" else [_read_poscar(text, name)]
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


# -- bytes -> text ------------------------------------------------------------------------------------------


def read_text(path: Path, name: str, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The file's text: a regular file under ``max_bytes``, not empty, no NUL bytes, UTF-8 (``.gz`` unpacked).

    Raises :class:`StructureFileError` naming ``name`` otherwise; the file is never opened when it is not a
    regular file (a FIFO would block) or when it is over the cap.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StructureFileError(name, "file not found (or a broken link)") from None
    except OSError as exc:
        raise StructureFileError(name, f"cannot be inspected ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise StructureFileError(name, "is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise StructureFileError(name, "is not a regular file (a device, pipe or socket)")
    if st.st_size > max_bytes:
        raise StructureFileError(name, f"file too large ({st.st_size:,} bytes; limit {max_bytes:,})")
    if st.st_size == 0:
        raise StructureFileError(name, "the file is empty")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except PermissionError:
        raise StructureFileError(name, "cannot be read (permission denied)") from None
    except OSError as exc:
        raise StructureFileError(name, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if name.lower().endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = _gunzip(data, name, max_bytes)
    if len(data) > max_bytes:
        raise StructureFileError(name, f"file too large (over {max_bytes:,} bytes)")
    if not data.strip():
        raise StructureFileError(name, "the file is empty (only white space)")
    if b"\x00" in data:
        raise StructureFileError(name, "binary content (NUL bytes), not a text structure file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StructureFileError(name, f"not UTF-8 text (invalid byte at offset {exc.start})") from None


def _gunzip(data: bytes, name: str, max_bytes: int) -> bytes:
    """Decompress gzip data, stopping past ``max_bytes`` (a gzip bomb ends here)."""
    try:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = d.decompress(data, max_bytes + 1)
    except (zlib.error, gzip.BadGzipFile, EOFError):
        raise StructureFileError(name, "not a valid gzip file") from None
    if len(out) > max_bytes:
        raise StructureFileError(name, f"file too large once decompressed (over {max_bytes:,} bytes)")
    return out


def _check_lines(text: str, name: str) -> None:
    longest = max((len(line) for line in text.splitlines()), default=0)
    if longest > MAX_LINE_CHARS:
        lineno = next(i for i, line in enumerate(text.splitlines(), 1) if len(line) == longest)
        raise StructureFileError(name, f"line {lineno} is {longest:,} characters long (limit {MAX_LINE_CHARS:,}); "
                                       "not a structure file")


# -- structure checks --------------------------------------------------------------------------------------


def structure_problem(struct: Structure) -> str | None:
    """What makes ``struct`` unusable as read from a file, or None.

    Checked: at least one and at most :data:`MAX_SITES` atoms, every species a real element (no dummy
    ``X``), ordered full occupancy, finite lattice and coordinates, a cell with volume.
    """
    if len(struct) == 0:
        return "the structure has no atoms"
    if len(struct) > MAX_SITES:
        return f"{len(struct)} atoms (limit {MAX_SITES})"
    for i, site in enumerate(struct):
        comp = site.species
        bad = [str(sp) for sp in comp if not isinstance(getattr(sp, "Z", None), int) or not 0 < sp.Z < 119
               or getattr(sp, "symbol", "") not in _ELEMENTS]
        if bad:
            return f"site {i}: {_short(bad[0])} is not a chemical element"
        if len(comp) != 1 or abs(next(iter(comp.values())) - 1) > 1e-8:
            return f"site {i}: disordered or partially occupied (occupancies {_short(dict(comp.items()))})"
    lat = struct.lattice.matrix
    if not np.all(np.isfinite(lat)) or not np.all(np.isfinite(struct.frac_coords)):
        return "lattice or coordinates are not finite numbers (NaN/inf)"
    vol = abs(float(np.linalg.det(lat)))
    if not vol > 1e-3:
        return f"the cell is degenerate (volume {vol:.3g} A^3)"
    return None


_ELEMENTS = frozenset(e.symbol for e in Element)


def _short(value: object, n: int = 24) -> str:
    """A file token quoted for a message, cut short (errors name things, never dump contents)."""
    text = repr(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# -- JSON --------------------------------------------------------------------------------------------------


def _read_json(text: str, name: str) -> list[FileItem]:
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
                    return (f"refused class {_short(f'{mod}.{cls}', 60)}: a structure file may only hold pymatgen "
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
        return FileItem(where, error=f"{what} is a {_short(d['@class'])}, not a Structure")
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
        return FileItem(where, error=f"{what} is not a valid Structure document ({_exc_kind(exc)})")
    return FileItem(where, struct)


def _exc_kind(exc: BaseException) -> str:
    """A parser exception described without quoting the data that caused it."""
    if isinstance(exc, KeyError):
        return f"missing key {_short(exc.args[0] if exc.args else '?')}"
    if isinstance(exc, (ValueError, Warning)):
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if lines and lines[0].startswith("No structure parsed for section") and len(lines) > 1:
            lines = lines[1:]  # pymatgen's wrapper: the reason is on the next line
        msg = lines[0] if lines else type(exc).__name__
        msg = re.sub(r"(['\"]).{25,}?\1", "'...'", msg)  # long quoted data: the file's contents
        return _short(msg, 100).strip("'\"")
    return f"malformed ({type(exc).__name__})"


# -- POSCAR ------------------------------------------------------------------------------------------------

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
        if s not in _ELEMENTS:
            raise StructureFileError(name, f"line 6: {_short(s)} is not a chemical element")
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


def _read_poscar(text: str, name: str) -> FileItem:
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
        raise StructureFileError(name, f"not a valid POSCAR ({_exc_kind(exc)})") from None
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


# -- CIF ---------------------------------------------------------------------------------------------------

_NUM = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:\(\d+\))?$")
_SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz", "_space_group_symop.operation_xyz",
               "_symmetry_equiv.pos_as_xyz")
_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")


def _read_cif(text: str, name: str) -> list[FileItem]:
    from pymatgen.io.cif import CifFile

    if not re.search(r"(?im)^\s*data_", text):
        raise StructureFileError(name, "not a CIF file (no data_ block)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cif = CifFile.from_str(text)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise StructureFileError(name, f"not a valid CIF file ({_exc_kind(exc)})") from None
    skipped = sum("possible issue in cif file" in str(w.message).lower() for w in caught)
    if skipped:
        raise StructureFileError(name, f"{skipped} line(s) the CIF parser could not interpret (a broken loop or "
                                       "stray text); not read, to avoid a silent misread")
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
        if two not in _ELEMENTS and two[:1] not in _ELEMENTS:
            return f"atom site {i + 1}: {_short(str(sym))} is not a chemical element"
    return None


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
        return FileItem(header, error=f"pymatgen could not build the structure ({_exc_kind(exc)})")
    noted = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    noted = list(dict.fromkeys(m.strip() for m in [*noted, *getattr(parser, "warnings", [])]
                               if m.strip() and not m.startswith("Issues encountered while parsing CIF")))
    serious = [m for m in noted if not any(b in m.lower() for b in _BENIGN_CIF_WARNINGS)]
    if serious:
        return FileItem(header, error=f"pymatgen warns: {_short(serious[0].splitlines()[0], 160)}")
    if len(structs) != 1:
        return FileItem(header, error=f"{len(structs)} structures in one block")
    return FileItem(header, structs[0], warnings=[_short(m.splitlines()[0], 160) for m in noted])
