"""Shared fixtures. Tests use the real CHGNet 0.3.0 weights shipped in the chgnet wheel."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure


@pytest.fixture(scope="session")
def reference_potential():
    from matfunnel.potential import load_potential

    return load_potential("chgnet-reference")


@pytest.fixture
def rng():
    """Fresh random inputs every run; the seed is printed so a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)


def fcc(el: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [el] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def b32_lial(a: float = 6.37) -> Structure:
    """NaTl-type (B32) LiAl, the known ground state of LiAl (primitive cell, 4 atoms)."""
    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return conv.get_primitive_structure()
