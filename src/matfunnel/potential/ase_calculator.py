"""Any ASE calculator as a matfunnel potential, one structure at a time.

This adapter is **unbatched**: every structure is a separate calculator call, so it is as slow as the
calculator itself. It gives every stage a working path for models that have no batched interface.
"""

from __future__ import annotations

import contextlib

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matfunnel.common.errors import StructureError
from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.potential.base import Potential


class AseCalculatorPotential(Potential):
    """Energy, forces and stress from an ASE calculator (stress from ASE's eV/A^3 Voigt to GPa 3x3).

    Parameters
    ----------
    calculator
        Any ASE calculator that implements energy, forces and stress.
    name
        Recorded in every result.
    device
        Informational (the calculator decides where it runs).
    """

    batched = False

    def __init__(self, calculator, name: str = "ase", device: str = "cpu"):
        self.calc = calculator
        self.name = name
        self.device = device
        self.package = type(calculator).__module__.split(".")[0]

    def _one(self, s: Structure) -> dict:
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = self.calc
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=float)
        v = np.asarray(atoms.get_stress(voigt=True), dtype=float) * EV_A3_TO_GPA
        stress = np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]])
        magmoms = np.zeros(len(s))
        if "magmoms" in getattr(self.calc, "implemented_properties", ()):
            with contextlib.suppress(Exception):  # optional property
                magmoms = np.asarray(atoms.get_magnetic_moments(), dtype=float)
        if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
            raise ValueError("the calculator returned NaN/inf")
        return {"energy": energy, "forces": forces, "stress": stress, "magmoms": magmoms}

    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        out = []
        for s, label in zip(structures, labels, strict=False):
            try:
                out.append(self._one(s))
            except Exception as exc:  # noqa: BLE001 - one structure's failure, not the batch's
                err = StructureError(label, f"{self.name} failed: {type(exc).__name__}: {exc}")
                if errors == "raise":
                    raise err from exc
                out.append({"error": str(err)})
        return out
