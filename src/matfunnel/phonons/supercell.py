"""Choosing the supercell of a finite-displacement calculation.

``supercell_matrix_for(structure, min_length)`` returns the diagonal matrix whose supercell is at
least ``min_length`` thick in every direction (the perpendicular distance between opposite faces),
so every atom's periodic images are at least ``min_length`` apart. Phonopy's force constants are
then free of self-interaction up to half that distance.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_MIN_LENGTH = 15.0  # Angstrom; the DFT references used >= 20 A
#: largest supercell a phonon check builds (the maker and the campaign's gate); larger ones are an error
MAX_SUPERCELL_ATOMS = 1000


def face_distances(lattice: np.ndarray) -> np.ndarray:
    """Perpendicular distance between opposite faces of the cell spanned by the rows of ``lattice``."""
    lat = np.asarray(lattice, dtype=float)
    vol = abs(np.linalg.det(lat))
    return np.array([vol / np.linalg.norm(np.cross(lat[(i + 1) % 3], lat[(i + 2) % 3])) for i in range(3)])


def supercell_matrix_for(structure, min_length: float = DEFAULT_MIN_LENGTH,
                         max_atoms: int | None = None) -> list[list[int]]:
    """Diagonal supercell matrix with every face-to-face width >= ``min_length`` (Angstrom).

    ``structure`` is a pymatgen ``Structure``, ASE ``Atoms`` or a 3x3 lattice. With ``max_atoms``
    a supercell larger than that raises ``ValueError`` (a cost guard).
    """
    lat = getattr(getattr(structure, "lattice", None), "matrix", None)
    if lat is None:
        lat = structure.cell[:] if hasattr(structure, "cell") else structure
    widths = face_distances(lat)
    mult = [max(1, math.ceil(min_length / w - 1e-6)) for w in widths]
    if max_atoms is not None and hasattr(structure, "__len__") and not isinstance(structure, (list, np.ndarray)):
        n = len(structure) * int(np.prod(mult))
        if n > max_atoms:
            raise ValueError(f"supercell {mult} for min_length={min_length} A has {n} atoms > max_atoms={max_atoms}")
    return [[mult[0], 0, 0], [0, mult[1], 0], [0, 0, mult[2]]]
