"""ASE calculator over any matfunnel potential."""

from __future__ import annotations

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes


class MatfunnelCalculator(Calculator):
    """Energy (eV), forces (eV/A), stress (eV/A^3, ASE Voigt order) and magmoms."""

    implemented_properties = ["energy", "free_energy", "forces", "stress", "magmoms"]

    def __init__(self, potential, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Evaluate ``atoms`` with the potential and store every implemented property in ``self.results``."""
        super().calculate(atoms, properties, system_changes)
        (res,) = self.potential.predict([self.atoms])
        stress_gpa = np.asarray(res["stress"], dtype=float)
        # chgnet's GPa sign convention equals ASE's; convert units only
        s = stress_gpa * units.GPa
        self.results = {
            "energy": float(res["energy"]),
            "free_energy": float(res["energy"]),
            "forces": np.asarray(res["forces"], dtype=float),
            "stress": np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]),
            "magmoms": np.asarray(res["magmoms"], dtype=float),
        }
