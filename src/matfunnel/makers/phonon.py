"""jobflow maker for MLIP phonon checks (finite displacements, batched force evaluation)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from jobflow import Maker, job
from pymatgen.core import Structure

from matfunnel.phonons.calculate import DEFAULT_DISPLACEMENT, run_phonons
from matfunnel.phonons.document import PhononResult
from matfunnel.phonons.properties import DEFAULT_MESH, DEFAULT_TEMPERATURES
from matfunnel.phonons.relax import TIGHT_FMAX
from matfunnel.phonons.stability import IMAGINARY_TOL
from matfunnel.phonons.supercell import DEFAULT_MIN_LENGTH, supercell_matrix_for
from matfunnel.potential import DEFAULT_POTENTIAL, load_potential
from matfunnel.potential.validate import structure_label


@dataclass
class PhononMaker(Maker):
    """Harmonic phonons of a batch of structures with an MLIP.

    Per structure: optional tight symmetry-fixed relaxation (``relax``, fmax ``relax_fmax``), phonopy
    displacements of ``displacement`` Å in a supercell given by ``supercell_matrix`` or at least
    ``min_length`` Å wide, all displaced supercells in one batched prediction, then thermal
    properties, ω_max, DOS, band structure and the dynamical-stability flag. Returns one
    :class:`~matfunnel.phonons.PhononResult` document per structure (``error`` set on failure,
    e.g. a supercell above ``max_supercell_atoms``), in input order.
    """

    name: str = "mlip phonons"
    potential: str = DEFAULT_POTENTIAL
    device: str = "cpu"
    relax: bool = True
    relax_fmax: float = TIGHT_FMAX
    relax_max_steps: int = 1000
    displacement: float = DEFAULT_DISPLACEMENT
    min_length: float = DEFAULT_MIN_LENGTH
    supercell_matrix: list | None = None
    max_supercell_atoms: int | None = 1000
    mesh: float | list = DEFAULT_MESH
    temperatures: list = field(default_factory=lambda: list(DEFAULT_TEMPERATURES))
    band_npoints: int = 31
    dos_points: int = 201
    imaginary_tol: float = IMAGINARY_TOL

    @job
    def make(self, structures: list[Structure], labels: list[str] | None = None) -> list[dict]:
        structures = [s if isinstance(s, Structure) else Structure.from_dict(s) for s in structures]
        labels = list(labels) if labels is not None else [structure_label(s, i) for i, s in enumerate(structures)]
        pot = load_potential(self.potential, self.device)
        return [self.run_one(s, lab, pot).as_dict() for s, lab in zip(structures, labels)]

    def run_one(self, structure: Structure, label: str, pot) -> PhononResult:
        t0 = time.perf_counter()
        try:
            scm = self.supercell_matrix or supercell_matrix_for(structure, self.min_length, self.max_supercell_atoms)
            res = run_phonons(
                structure, pot, label=label, supercell_matrix=scm, displacement=self.displacement,
                relax=self.relax, relax_fmax=self.relax_fmax, relax_max_steps=self.relax_max_steps,
                mesh=self.mesh, temperatures=self.temperatures, band_npoints=self.band_npoints,
                dos_points=self.dos_points, imaginary_tol=self.imaginary_tol, keep_phonopy=False,
            )
            if res.relaxation and not res.relaxation["converged"]:
                res.error = (f"structure {label!r}: symmetric relaxation not converged to fmax={self.relax_fmax} "
                             f"in {self.relax_max_steps} steps (phonons computed anyway)")
        except Exception as exc:  # noqa: BLE001 - a batch never dies for one structure
            res = PhononResult(label=label, formula=structure.composition.reduced_formula if len(structure) else "",
                               potential=self.potential, structure=structure.as_dict(),
                               error=f"structure {label!r}: {type(exc).__name__}: {exc}")
        res.wall_time = time.perf_counter() - t0
        return res
