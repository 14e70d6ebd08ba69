"""Forces on all displaced supercells from one batched ``potential.predict`` call."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure


def phonopy_atoms_to_structure(atoms) -> Structure:
    """``PhonopyAtoms`` as a pymatgen ``Structure``."""
    return Structure(atoms.cell, list(atoms.symbols), atoms.scaled_positions, coords_are_cartesian=False)


def displaced_forces(phonon, potential, *, remove_drift: bool = True, subtract_residual: bool = False,
                     label: str = "phonons") -> tuple[np.ndarray, dict]:
    """Forces (n_displacements, n_atoms, 3) in eV/Å on ``phonon``'s displaced supercells.

    All supercells (plus the undisplaced one with ``subtract_residual``) go to the potential in one
    ``predict`` call. ``remove_drift`` subtracts each supercell's mean force (the net force a
    translation-invariant model should not produce); ``subtract_residual`` subtracts the forces on
    the perfect supercell (for structures not at a minimum of the potential). Returns the forces
    and ``{"drift": max |mean force| before removal, "residual": max |residual force|}``.
    """
    cells = [phonopy_atoms_to_structure(s) for s in phonon.supercells_with_displacements]
    labels = [f"{label} displacement {i + 1}" for i in range(len(cells))]
    if subtract_residual:
        cells.append(phonopy_atoms_to_structure(phonon.supercell))
        labels.append(f"{label} perfect supercell")
    outs = potential.predict(cells, labels=labels)
    forces = np.array([np.asarray(o["forces"], dtype=float) for o in outs])
    info = {"residual": 0.0}
    if subtract_residual:
        residual = forces[-1]
        forces = forces[:-1] - residual
        info["residual"] = float(np.abs(residual).max())
    drift = forces.mean(axis=1, keepdims=True)
    info["drift"] = float(np.abs(drift).max())
    if remove_drift:
        forces = forces - drift
    return forces, info
