"""The phonon document: what a phonon check reports (plain JSON types, capped arrays)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


def round_nested(x, digits: int):
    """Lists of rounded floats from (nested) arrays."""
    if isinstance(x, np.ndarray):
        return np.round(x.astype(float), digits).tolist()
    if isinstance(x, (list, tuple)):
        return [round_nested(v, digits) for v in x]
    if isinstance(x, (float, np.floating)):
        return round(float(x), digits)
    return x


@dataclass
class PhononResult:
    """One structure's phonon check.

    Units: frequencies THz; ω_max also in K; thermal properties per mole of primitive cell
    (F kJ/mol, S and Cv J/K/mol). ``band`` holds the path labels and per-segment distances and
    frequencies (``band_npoints`` q-points per segment); ``dos`` the total DOS (states/THz per
    primitive cell). ``error`` is set (and the numbers are None) when the check failed.
    """

    label: str
    formula: str = ""
    potential: str = ""
    structure: dict | None = None
    relaxation: dict | None = None
    supercell_matrix: list | None = None
    primitive_matrix: list | None = None
    n_supercell_atoms: int | None = None
    n_primitive_atoms: int | None = None
    n_displacements: int | None = None
    displacement: float | None = None
    force_drift: float | None = None
    residual_force: float | None = None
    mesh: list | None = None
    temperatures: list | None = None
    free_energy: list | None = None
    entropy: list | None = None
    heat_capacity: list | None = None
    free_energy_300k: float | None = None
    entropy_300k: float | None = None
    heat_capacity_300k: float | None = None
    omega_max_thz: float | None = None
    omega_max_k: float | None = None
    min_frequency_thz: float | None = None
    dynamically_stable: bool | None = None
    stability: dict | None = None
    band: dict | None = None
    dos: dict | None = None
    timings: dict = field(default_factory=dict)
    wall_time: float = 0.0
    error: str | None = None

    def __post_init__(self) -> None:
        self.phonopy: Any = None  # the Phonopy object, kept in memory only (never serialised)

    def as_dict(self) -> dict:
        """The result's fields as a dict (the Phonopy object left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
