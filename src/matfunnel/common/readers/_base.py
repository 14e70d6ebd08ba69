"""What every structure-file reader shares: limits, errors, the bytes-to-text gate and the structure check."""

from __future__ import annotations

import gzip
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Structure

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
#: the same for all the blocks of one CIF file together
MAX_FILE_POSITIONS = 2 * MAX_GENERATED_POSITIONS
#: deepest nesting of a JSON document
MAX_JSON_DEPTH = 64


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
    except ValueError:  # a NUL byte in the path
        raise StructureFileError(name, "not a valid path (it contains a NUL byte)") from None
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
    if not d.eof:
        raise StructureFileError(name, "truncated gzip file (the compressed data ends early)")
    return out


def check_lines(text: str, name: str) -> None:
    longest = max((len(line) for line in text.splitlines()), default=0)
    if longest > MAX_LINE_CHARS:
        lineno = next(i for i, line in enumerate(text.splitlines(), 1) if len(line) == longest)
        raise StructureFileError(name, f"line {lineno} is {longest:,} characters long (limit {MAX_LINE_CHARS:,}); "
                                       "not a structure file")


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
               or getattr(sp, "symbol", "") not in ELEMENTS]
        if bad:
            return f"site {i}: {short(bad[0])} is not a chemical element"
        if len(comp) != 1 or abs(next(iter(comp.values())) - 1) > 1e-8:
            return f"site {i}: disordered or partially occupied (occupancies {short(dict(comp.items()))})"
    lat = struct.lattice.matrix
    if not np.all(np.isfinite(lat)) or not np.all(np.isfinite(struct.frac_coords)):
        return "lattice or coordinates are not finite numbers (NaN/inf)"
    vol = abs(float(np.linalg.det(lat)))
    if not vol > 1e-3:
        return f"the cell is degenerate (volume {vol:.3g} A^3)"
    return None


ELEMENTS = frozenset(e.symbol for e in Element)


def short(value: object, n: int = 24) -> str:
    """A file token quoted for a message, cut short (errors name things, never dump contents)."""
    text = repr(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def exc_kind(exc: BaseException) -> str:
    """A parser exception described without quoting the data that caused it."""
    if isinstance(exc, KeyError):
        return f"missing key {short(exc.args[0] if exc.args else '?')}"
    if isinstance(exc, (ValueError, Warning)):
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if lines and lines[0].startswith("No structure parsed for section") and len(lines) > 1:
            lines = lines[1:]  # pymatgen's wrapper: the reason is on the next line
        msg = lines[0] if lines else type(exc).__name__
        msg = re.sub(r"(['\"]).{25,}?\1", "'...'", msg)  # long quoted data: the file's contents
        return short(msg, 100).strip("'\"")
    return f"malformed ({type(exc).__name__})"


