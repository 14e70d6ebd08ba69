"""The per-structure phonon pipeline as a jobflow maker.

MLIP phonon checks (finite displacements, batched force evaluation). The campaign's phonon gate
(:mod:`matfunnel.phonons.gate`) runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from jobflow import Maker, job
from pymatgen.core import Structure

from matfunnel.makers.relax import decode_inputs
from matfunnel.phonons.calculate import DEFAULT_DISPLACEMENT, run_phonons
from matfunnel.phonons.document import PhononResult
from matfunnel.phonons.properties import DEFAULT_MESH, DEFAULT_TEMPERATURES
from matfunnel.phonons.stability import IMAGINARY_TOL
from matfunnel.phonons.supercell import (
    DEFAULT_MIN_LENGTH,
    MAX_SUPERCELL_ATOMS,
    supercell_matrix_for,
)
from matfunnel.phonons.symmetric_relax import TIGHT_FMAX, relax_symmetric_many
from matfunnel.potential import DEFAULT_POTENTIAL, load_potential


class _Failed(Exception):
    """A structure's relaxation failed; the message is its error document's (it names the structure)."""


@dataclass
class PhononMaker(Maker):
    """Harmonic phonons of a batch of structures with an MLIP.

    Optional tight symmetry-fixed relaxation of all structures together on the batched engine (``relax``, fmax
    ``relax_fmax``; :func:`~matfunnel.phonons.symmetric_relax.relax_symmetric_many`), then per structure phonopy
    displacements of ``displacement`` Å in a supercell given by ``supercell_matrix`` or at least
    ``min_length`` Å wide, all displaced supercells in one batched prediction, then thermal
    properties, ω_max, DOS, band structure and the dynamical-stability flag. Returns one
    :class:`~matfunnel.phonons.PhononResult` document per structure (``error`` set on failure,
    e.g. a supercell above ``max_supercell_atoms``), in input order.
    """

    name: str = "mlip phonons"
    potential: str = DEFAULT_POTENTIAL
    #: keyword arguments of the potential's factory (JSON values), e.g. ``{"modal": "PBE"}``
    potential_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    relax: bool = True
    relax_fmax: float = TIGHT_FMAX
    relax_max_steps: int = 1000
    displacement: float = DEFAULT_DISPLACEMENT
    min_length: float = DEFAULT_MIN_LENGTH
    supercell_matrix: list | None = None
    max_supercell_atoms: int | None = MAX_SUPERCELL_ATOMS
    mesh: float | list = DEFAULT_MESH
    temperatures: list = field(default_factory=lambda: list(DEFAULT_TEMPERATURES))
    band_npoints: int = 31
    dos_points: int = 201
    imaginary_tol: float = IMAGINARY_TOL

    @job
    def make(self, structures: list[Structure], labels: list[str] | None = None) -> list[dict]:
        """Phonon result documents of ``structures``, in order (a bad input's document carries its error)."""
        structures, labels, bad = decode_inputs(structures, labels)
        pot = load_potential(self.potential, self.device, **self.potential_kwargs)
        ok = [i for i in range(len(structures)) if i not in bad]
        relaxed: dict = {}
        if self.relax and ok:  # all structures at once on the batched engine, each keeping its space group
            relaxed = dict(zip(ok, relax_symmetric_many([structures[i] for i in ok], pot,
                                                        labels=[labels[i] for i in ok], fmax=self.relax_fmax,
                                                        max_steps=self.relax_max_steps), strict=False))
        docs = []
        for i, (s, lab) in enumerate(zip(structures, labels, strict=False)):
            if i in bad:
                docs.append(PhononResult(label=lab, formula="", potential=self.potential, structure={},
                                         error=bad[i]).as_dict())
            else:
                docs.append(self.run_one(s, lab, pot, relaxed.get(i)).as_dict())
        return docs

    def run_one(self, structure: Structure, label: str, pot, relaxation=None) -> PhononResult:
        """Phonons of one structure; with ``relax``, at the end of its symmetric ``relaxation``.

        ``relaxation`` is a :class:`~matfunnel.phonons.symmetric_relax.SymmetricRelaxation`, or its error
        message; relaxed here when not given.
        """
        t0 = time.perf_counter()
        try:
            if isinstance(relaxation, str):  # the relaxation failed (overlapping atoms, NaN, ...)
                raise _Failed(relaxation)
            scm = self.supercell_matrix or supercell_matrix_for(
                relaxation.structure if relaxation is not None else structure, self.min_length,
                self.max_supercell_atoms)
            res = run_phonons(
                structure, pot, label=label, supercell_matrix=scm, displacement=self.displacement,
                relax=self.relax, relax_fmax=self.relax_fmax, relax_max_steps=self.relax_max_steps,
                relaxation=relaxation, mesh=self.mesh, temperatures=self.temperatures, band_npoints=self.band_npoints,
                dos_points=self.dos_points, imaginary_tol=self.imaginary_tol, keep_phonopy=False,
            )
            if res.relaxation and not res.relaxation["converged"]:
                res.error = (f"structure {label!r}: symmetric relaxation not converged to fmax={self.relax_fmax} "
                             f"in {self.relax_max_steps} steps (phonons computed anyway)")
        except Exception as exc:  # noqa: BLE001 - a batch never dies for one structure
            msg = str(exc) if isinstance(exc, _Failed) else f"structure {label!r}: {type(exc).__name__}: {exc}"
            res = PhononResult(label=label, formula=structure.composition.reduced_formula if len(structure) else "",
                               potential=self.potential, structure=structure.as_dict(), error=msg)
        res.wall_time = time.perf_counter() - t0
        return res
