"""Finite-displacement phonons of one structure with a matfunnel potential.

Phonopy generates the symmetry-reduced displacements (0.01 Å by default); all displaced
supercells are evaluated together in one batched ``potential.predict`` call, the drift is removed
and the force constants are symmetrised (translational and permutation symmetry). Optionally the
structure is first relaxed tightly with its symmetry fixed (:mod:`matfunnel.phonons.symmetric_relax`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Structure

from matfunnel.phonons.document import PhononResult, round_nested
from matfunnel.phonons.forces import displaced_forces
from matfunnel.phonons.properties import (
    DEFAULT_MESH,
    DEFAULT_TEMPERATURES,
    harmonic_summary,
)
from matfunnel.phonons.stability import IMAGINARY_TOL
from matfunnel.phonons.supercell import DEFAULT_MIN_LENGTH, supercell_matrix_for
from matfunnel.phonons.symmetric_relax import (
    TIGHT_FMAX,
    SymmetricRelaxation,
    relax_symmetric_many,
)

DEFAULT_DISPLACEMENT = 0.01  # Å


def to_phonopy_atoms(structure: Structure):
    """``structure`` as ``PhonopyAtoms`` (species, lattice and fractional coordinates)."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=[str(sp) for sp in structure.species], cell=structure.lattice.matrix,
                        scaled_positions=structure.frac_coords)


def build_phonopy(structure: Structure, supercell_matrix=None, *, min_length: float = DEFAULT_MIN_LENGTH,
                  primitive_matrix="auto", displacement: float = DEFAULT_DISPLACEMENT, symprec: float = 1e-5):
    """A ``Phonopy`` object with displacements generated (no forces yet)."""
    from phonopy import Phonopy

    if supercell_matrix is None:
        supercell_matrix = supercell_matrix_for(structure, min_length)
    with warnings.catch_warnings():  # "auto" is our explicit choice; phonopy warns when it is not identity
        warnings.filterwarnings("ignore", message=".*primitive_matrix.*")
        phonon = Phonopy(to_phonopy_atoms(structure), supercell_matrix=np.asarray(supercell_matrix),
                         primitive_matrix=primitive_matrix, symprec=symprec, log_level=0)
    phonon.generate_displacements(distance=displacement)
    return phonon


def produce_force_constants(phonon, potential, *, remove_drift: bool = True, subtract_residual: bool = False,
                            label: str = "phonons") -> dict:
    """Evaluate the displaced supercells in one batch, set forces, build and symmetrise the FCs."""
    forces, info = displaced_forces(phonon, potential, remove_drift=remove_drift,
                                    subtract_residual=subtract_residual, label=label)
    phonon.forces = forces
    phonon.produce_force_constants(show_drift=False)
    phonon.symmetrize_force_constants(show_drift=False)
    return info


def _potential(potential, device: str):
    if isinstance(potential, str) or potential is None:
        from matfunnel.potential import DEFAULT_POTENTIAL, load_potential

        return load_potential(potential or DEFAULT_POTENTIAL, device)
    return potential


def run_phonons(
    structure: Structure,
    potential=None,
    *,
    label: str | None = None,
    supercell_matrix: Sequence[Sequence[int]] | None = None,
    min_length: float = DEFAULT_MIN_LENGTH,
    primitive_matrix="auto",
    displacement: float = DEFAULT_DISPLACEMENT,
    relax: bool = False,
    relax_fmax: float = TIGHT_FMAX,
    relax_max_steps: int = 1000,
    relaxation: SymmetricRelaxation | None = None,
    subtract_residual: bool = False,
    mesh=DEFAULT_MESH,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    band_npoints: int = 31,
    dos_points: int = 201,
    imaginary_tol: float = IMAGINARY_TOL,
    symprec: float = 1e-5,
    device: str = "cpu",
    keep_phonopy: bool = True,
) -> PhononResult:
    """Harmonic phonons of ``structure`` (a unit cell; the supercell matrix refers to it).

    ``potential`` is a :class:`~matfunnel.potential.Potential` or a registered name (default: the
    funnel's default potential). ``supercell_matrix`` wins over ``min_length``. With ``relax`` the
    structure is first relaxed keeping its symmetry (batched engine), unless ``relaxation`` (done
    already, e.g. for many structures at once by :func:`~matfunnel.phonons.symmetric_relax.relax_symmetric_many`)
    is given. Errors propagate;
    :class:`~matfunnel.phonons.maker.PhononMaker` records them per structure instead.
    """
    t0 = time.perf_counter()
    pot = _potential(potential, device)
    label = label or structure.properties.get("label") or structure.composition.reduced_formula
    timings: dict[str, float] = {}
    relax_doc = None
    if relax:
        r = relaxation or relax_symmetric_many([structure], pot, labels=[str(label)], fmax=relax_fmax,
                                               max_steps=relax_max_steps)[0]
        if isinstance(r, str):
            raise RuntimeError(r)
        relax_doc = {k: v for k, v in r.as_dict().items() if k != "structure"}
        relax_doc["initial_volume"] = structure.volume
        relax_doc["final_volume"] = r.structure.volume
        structure = r.structure
        timings["relax"] = r.wall_time
    t = time.perf_counter()
    phonon = build_phonopy(structure, supercell_matrix, min_length=min_length, primitive_matrix=primitive_matrix,
                           displacement=displacement, symprec=symprec)
    info = produce_force_constants(phonon, pot, subtract_residual=subtract_residual, label=label)
    timings["forces"] = time.perf_counter() - t
    t = time.perf_counter()
    h = harmonic_summary(phonon, mesh=mesh, temperatures=temperatures, band_npoints=band_npoints,
                         dos_points=dos_points, imaginary_tol=imaginary_tol)
    timings["properties"] = time.perf_counter() - t
    stab = h["stability"]
    mp = h["mesh"]
    res = PhononResult(
        label=str(label),
        formula=structure.composition.reduced_formula,
        potential=getattr(pot, "name", str(pot)),
        structure=structure.as_dict(),
        relaxation=relax_doc,
        supercell_matrix=np.asarray(phonon.supercell_matrix).astype(int).tolist(),
        primitive_matrix=np.asarray(phonon.primitive_matrix).round(10).tolist(),
        n_supercell_atoms=len(phonon.supercell),
        n_primitive_atoms=len(phonon.primitive),
        n_displacements=len(phonon.supercells_with_displacements),
        displacement=displacement,
        force_drift=info["drift"],
        residual_force=info["residual"],
        mesh=mp["mesh"],
        temperatures=mp["temperatures"],
        free_energy=mp["free_energy"],
        entropy=mp["entropy"],
        heat_capacity=mp["heat_capacity"],
        free_energy_300k=h["free_energy_300k"],
        entropy_300k=h["entropy_300k"],
        heat_capacity_300k=h["heat_capacity_300k"],
        omega_max_thz=h["omega_max_thz"],
        omega_max_k=h["omega_max_k"],
        min_frequency_thz=stab.min_frequency,
        dynamically_stable=stab.stable,
        stability=stab.as_dict(),
        band={"labels": h["band"]["labels"], "connections": h["band"]["connections"],
              "path": round_nested(h["band"]["path"], 6),
              "distances": round_nested(h["band"]["distances"], 5),
              "frequencies": round_nested(h["band"]["frequencies"], 4)},
        dos={"frequencies": round_nested(h["dos"]["frequencies"], 4), "dos": round_nested(h["dos"]["dos"], 5)},
        timings=timings,
        wall_time=time.perf_counter() - t0,
    )
    if keep_phonopy:
        res.phonopy = phonon
    return res
