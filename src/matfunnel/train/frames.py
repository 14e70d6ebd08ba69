"""One labelled structure for training (:class:`Frame`) and the error that names a bad one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure


class TrainingDataError(ValueError):
    """A training file or frame cannot be used; the message names the file, the frame and the problem."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


@dataclass
class Frame:
    """A structure with its DFT labels.

    Attributes
    ----------
    structure
        The periodic structure (pymatgen).
    energy
        Total energy in eV, or ``None`` where the source has none (phonopy force sets).
    forces
        ``(n_atoms, 3)`` eV/Å, or ``None``.
    stress
        ``(3, 3)`` GPa, positive = tensile (the sign of :class:`matfunnel.potential.Potential`'s stress), or
        ``None``.
    magmoms
        ``(n_atoms,)`` μB (magnitudes), or ``None``.
    source
        Where it came from, ``"<file>#<frame index>"``: error messages and the dataset hash use it.
    code
        The code whose energy scale the energy is on (``"vasp"``, ``"gpaw"``, ``"unknown"``): energies from
        different codes are not comparable (see :mod:`matfunnel.train.references`).
    baseline
        The undisplaced cell of a displaced one (phonopy data: its DFT forces are zero), or None. With
        ``TrainConfig.force_baseline`` the model's forces on it are subtracted from its forces on ``structure``,
        so the loss sees the force constants and not the model's residual forces at the DFT geometry.
    """

    structure: Structure
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    magmoms: np.ndarray | None = None
    source: str = ""
    code: str = "unknown"
    info: dict = field(default_factory=dict)
    baseline: Structure | None = None

    @property
    def n_atoms(self) -> int:
        """The number of atoms."""
        return len(self.structure)
