"""Small structure builders shared by the tests (imported as a plain module, not via conftest)."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure


def fcc(el: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [el] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def b32_lial(a: float = 6.37) -> Structure:
    """NaTl-type (B32) LiAl, the known ground state of LiAl (primitive cell, 4 atoms)."""
    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return conv.get_primitive_structure()
