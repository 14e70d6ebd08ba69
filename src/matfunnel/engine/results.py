"""The documents the engines return, one per input structure (all plain JSON types).

:class:`RelaxResult` comes from both relaxation engines (:func:`~matfunnel.engine.relax_batched` and
:func:`~matfunnel.engine.relax_structures`), :class:`MDResult` from :func:`~matfunnel.engine.run_md`. A structure
that failed has ``error`` set and keeps what was known about it; ``data["potential_error"]`` marks a failure of the
potential itself (out of memory, a device error), which may pass on a retry. Both names stay importable from their
former homes, :mod:`matfunnel.engine.ase_relax` and :mod:`matfunnel.engine.md`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class RelaxResult:
    """One structure's relaxation outcome (all plain JSON types)."""

    label: str
    formula: str
    initial_structure: dict
    final_structure: dict | None = None
    energy: float | None = None
    e_per_atom: float | None = None
    forces: list | None = None
    stress: list | None = None
    magmoms: list | None = None
    n_steps: int = 0
    converged: bool = False
    error: str | None = None
    wall_time: float = 0.0
    data: dict = field(default_factory=dict)
    #: sampled path of the relaxation (:class:`~matfunnel.engine.trajectory.Frames`), when asked for
    trajectory: dict | None = None

    def as_dict(self) -> dict:
        """Return the document as a plain dictionary.

        Returns
        -------
        dict
            Every field, nested dataclasses included, as :func:`dataclasses.asdict` gives it.
        """
        return asdict(self)

    def set_final(self, final: dict, energy: float, forces, stress, magmoms) -> None:
        """Record the final geometry and its evaluation.

        Parameters
        ----------
        final : dict
            The final structure's ``Structure.as_dict()`` document.
        energy : float
            Total energy, eV.
        forces, stress : array_like
            (n, 3) forces in eV/A and (3, 3) stress in GPa.
        magmoms : array_like or None
            Per-site magnetic moments; kept only when all are finite.
        """
        self.final_structure = final
        self.energy = float(energy)
        self.e_per_atom = float(energy) / len(final["sites"])
        self.forces = np.asarray(forces, dtype=float).tolist()
        self.stress = np.asarray(stress, dtype=float).tolist()
        m = None if magmoms is None else np.asarray(magmoms, dtype=float)
        self.magmoms = None if m is None or not np.all(np.isfinite(m)) else m.tolist()


@dataclass
class MDResult:
    """One structure's MD run (plain JSON types). ``trajectory`` goes to the ``trajectories`` store."""

    label: str
    formula: str
    initial_structure: dict
    ensemble: str
    timestep_fs: float
    temperature: float | None = None
    pressure: float | None = None  # GPa
    final_structure: dict | None = None
    energy: float | None = None  # final potential energy, eV
    e_per_atom: float | None = None
    n_steps: int = 0
    mean_temperature: float | None = None
    mean_pressure: float | None = None  # GPa, over the sampled frames
    initial_volume: float | None = None
    final_volume: float | None = None
    trajectory: dict | None = None
    error: str | None = None
    wall_time: float = 0.0
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Return the document as a plain dictionary (see :meth:`RelaxResult.as_dict`)."""
        return asdict(self)


__all__ = ["MDResult", "RelaxResult"]
