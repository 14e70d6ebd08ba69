"""Tight, symmetry-preserving relaxation before a phonon calculation.

Phonons are computed at a minimum of the potential: forces below ``fmax`` = 0.005 eV/Å (the
protocol of the MDR phonon benchmark), cell included (Frechet cell filter), with the space group
kept so numerical noise cannot lower it. :func:`relax_symmetric_many` relaxes many structures at once
on the batched engine (``relax_batched(symmetry=True)``); :func:`relax_symmetric` is ASE's FIRE +
``FixSymmetry`` one structure at a time, the reference it is tested against (same path to round-off).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from typing import cast

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

TIGHT_FMAX = 0.005  # eV/Å


@dataclass
class SymmetricRelaxation:
    """A relaxation that kept the space group: the final structure, convergence, energy and timing."""

    structure: Structure
    converged: bool
    n_steps: int
    energy: float
    max_force: float  # eV/Å at the end
    wall_time: float

    def as_dict(self) -> dict:
        """The relaxation as a dict (the structure as its ``as_dict()`` document)."""
        d = asdict(self)
        d["structure"] = self.structure.as_dict()
        return d


def relax_symmetric(structure: Structure, potential, *, fmax: float = TIGHT_FMAX, max_steps: int = 1000,
                    relax_cell: bool = True, symprec: float = 1e-3) -> SymmetricRelaxation:
    """Relax positions (and the cell) of ``structure`` keeping its space group (FIRE)."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    t0 = time.perf_counter()
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = potential.calculator()
    atoms.set_constraint(FixSymmetry(atoms, symprec=symprec))
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = FIRE(target, logfile=None)
    with warnings.catch_warnings():  # the calculator converts to pymatgen, which drops FixSymmetry (harmless)
        warnings.filterwarnings("ignore", message="Only FixAtoms and FixCartesian")
        opt.run(fmax=fmax, steps=max_steps)
    energy = float(atoms.get_potential_energy())
    fmax_now = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    atoms.set_constraint()
    final = AseAtomsAdaptor.get_structure(atoms)
    final.properties = dict(structure.properties)
    return SymmetricRelaxation(structure=final, converged=bool(opt.converged()), n_steps=int(opt.nsteps),
                               energy=energy, max_force=fmax_now, wall_time=time.perf_counter() - t0)


def relax_symmetric_many(structures: list[Structure], potential, *, labels: list[str] | None = None,
                         fmax: float = TIGHT_FMAX, max_steps: int = 1000) -> list[SymmetricRelaxation | str]:
    """Symmetric relaxations of all ``structures`` together on the batched engine.

    A relaxation that failed (overlapping atoms, NaN, ...) is its error message instead, which names the
    structure.
    """
    from matfunnel.engine import relax_batched

    if not structures:
        return []
    out: list[SymmetricRelaxation | str] = []
    for r in relax_batched(structures, potential, labels=labels, fmax=fmax, max_steps=max_steps, symmetry=True):
        if r.final_structure is None:
            out.append(r.error or "relaxation failed")
            continue
        out.append(SymmetricRelaxation(
            structure=Structure.from_dict(r.final_structure), converged=r.converged, n_steps=r.n_steps,
            # a relaxation with a final structure has its energy
            energy=float(cast(float, r.energy)), max_force=float(np.linalg.norm(np.asarray(r.forces), axis=1).max()),
            wall_time=r.wall_time))
    return out
