"""Batched MLIP molecular dynamics as a jobflow job."""

from __future__ import annotations

from dataclasses import dataclass

from jobflow import Maker, job
from pymatgen.core import Structure

from matfunnel.engine.md import run_md
from matfunnel.potential import DEFAULT_POTENTIAL, load_potential
from matfunnel.potential.validate import structure_label


@dataclass
class MDMaker(Maker):
    """Run MD on a batch of structures with an MLIP, all structures together on one device.

    ``ensemble`` is ``"nve"`` (velocity Verlet from Maxwell-Boltzmann velocities), ``"nvt"`` (Langevin)
    or ``"npt"`` (Langevin + isotropic stochastic cell rescaling). ``temperature`` K and ``pressure``
    GPa apply to every structure unless lists are passed to ``make``. Returns one
    :class:`~matfunnel.engine.md.MDResult` document per structure; each document's ``trajectory``
    (sampled every ``sample_every`` steps, thinned to at most ``max_frames`` frames) is written to the
    job store's additional ``trajectories`` store, the rest to ``outputs``.
    """

    name: str = "mlip md"
    potential: str = DEFAULT_POTENTIAL
    device: str = "cpu"
    ensemble: str = "nvt"
    steps: int = 1000
    timestep: float = 1.0  # fs
    temperature: float = 300.0  # K
    pressure: float = 0.0  # GPa
    friction: float = 0.01  # 1/fs
    tau_p: float = 500.0  # fs
    compressibility: float = 0.01  # 1/GPa
    seed: int = 0
    sample_every: int = 10
    max_frames: int = 200
    max_atoms: int | None = None

    @job(trajectories="trajectory")
    def make(
        self,
        structures: list[Structure],
        labels: list[str] | None = None,
        temperatures: list[float] | None = None,
        pressures: list[float] | None = None,
    ) -> list[dict]:
        structures = [s if isinstance(s, Structure) else Structure.from_dict(s) for s in structures]
        labels = list(labels) if labels is not None else [structure_label(s, i) for i, s in enumerate(structures)]
        pot = load_potential(self.potential, self.device)
        results = run_md(
            structures, pot, ensemble=self.ensemble, steps=self.steps, timestep=self.timestep,
            temperature=temperatures if temperatures is not None else self.temperature,
            pressure=pressures if pressures is not None else self.pressure, friction=self.friction,
            tau_p=self.tau_p, compressibility=self.compressibility, seed=self.seed,
            sample_every=self.sample_every, max_frames=self.max_frames, labels=labels, max_atoms=self.max_atoms,
        )
        return [{**r.as_dict(), "potential": self.potential} for r in results]
