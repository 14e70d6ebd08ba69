"""Batched MLIP molecular dynamics as a jobflow job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from jobflow import Maker, job
from pymatgen.core import Structure

from matfunnel.common.cache import active_cache, result_key
from matfunnel.engine.inputs import per_structure
from matfunnel.engine.md import run_md
from matfunnel.engine.results import MDResult
from matfunnel.makers.relax import decode_inputs
from matfunnel.potential import DEFAULT_POTENTIAL, load_potential


@dataclass
class MDMaker(Maker):
    """Run MD on a batch of structures with an MLIP, all structures together on one device.

    ``ensemble`` is ``"nve"`` (velocity Verlet from Maxwell-Boltzmann velocities), ``"nvt"`` (Langevin)
    or ``"npt"`` (Langevin + isotropic stochastic cell rescaling). ``temperature`` K and ``pressure``
    GPa apply to every structure unless lists are passed to ``make`` (``seeds`` likewise: by default
    structure ``i`` gets ``seed + i``). Returns one
    :class:`~matfunnel.engine.md.MDResult` document per structure; each document's ``trajectory``
    (sampled every ``sample_every`` steps, thinned to at most ``max_frames`` frames) is written to the
    job store's additional ``trajectories`` store, the rest to ``outputs``.

    With a result cache (:mod:`matfunnel.common.cache`) each structure's run is committed when it finishes and
    reused by a rerun with the same inputs (seed included); a group of structures
    in progress when a job is killed runs again.
    """

    name: str = "mlip md"
    potential: str = DEFAULT_POTENTIAL
    #: keyword arguments of the potential's factory (JSON values), e.g. ``{"modal": "PBE"}``
    potential_kwargs: dict = field(default_factory=dict)
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
    #: SQLite file of finished results (None: ``MATFUNNEL_RESULT_CACHE`` if set; see :mod:`matfunnel.common.cache`)
    result_cache: str | None = None

    @job(trajectories="trajectory")
    def make(
        self,
        structures: list[Structure],
        labels: list[str] | None = None,
        temperatures: list[float] | None = None,
        pressures: list[float] | None = None,
        seeds: list[int] | None = None,
    ) -> list[dict]:
        """Run MD on ``structures`` (named ``labels``); one document per structure, in input order.

        ``temperatures``, ``pressures`` and ``seeds`` give each structure its own value (default: the maker's).
        """
        structures, labels, bad = decode_inputs(structures, labels)
        good = [i for i in range(len(structures)) if i not in bad]
        n = len(structures)
        temps = per_structure("temperatures", temperatures if temperatures is not None else self.temperature, n,
                              minimum=0.0)
        press = per_structure("pressures", pressures if pressures is not None else self.pressure, n)
        seed = ([self.seed + i for i in range(n)] if seeds is None
                else per_structure("seeds", seeds, n, integer=True))
        docs: list[dict | None] = [None] * n
        for i, error in bad.items():
            docs[i] = {**MDResult(label=labels[i], formula="", initial_structure={}, ensemble=self.ensemble,
                                  timestep_fs=self.timestep, temperature=temps[i], error=error).as_dict(),
                       "potential": self.potential, "cached": False}
        cache = active_cache(self.result_cache)
        keys: dict[int, str | None] = {}
        if cache is not None:
            keys = {i: self._key(structures[i], temps[i], press[i], seed[i]) for i in good}
            for i, k in keys.items():  # runs identified by their inputs (the seed included): finished work is reused
                hit = cache.get(k) if k is not None else None
                if hit is not None:
                    docs[i] = {**hit, "label": labels[i], "cached": True}
        todo = [i for i in good if docs[i] is None]
        if todo:
            pot = load_potential(self.potential, self.device, **self.potential_kwargs)
            model = pot.model_info()

            def finished(j: int, result) -> None:  # committed as soon as each structure is done
                i = todo[j]
                doc = docs[i] = {**result.as_dict(), "potential": self.potential, "model": model, "cached": False}
                key = keys.get(i)
                if cache is not None and key is not None and not result.data.get("potential_error"):
                    cache.put(key, "mlip-md", doc)

            run_md(
                [structures[i] for i in todo], pot, ensemble=self.ensemble, steps=self.steps, timestep=self.timestep,
                temperature=[temps[i] for i in todo], pressure=[press[i] for i in todo], friction=self.friction,
                tau_p=self.tau_p, compressibility=self.compressibility, seed=[seed[i] for i in todo],
                sample_every=self.sample_every, max_frames=self.max_frames, labels=[labels[i] for i in todo],
                max_atoms=self.max_atoms, on_result=finished,
            )
        return cast(list[dict], docs)  # every input has its document by now

    def _key(self, structure, temperature: float, pressure: float, seed: int) -> str | None:
        settings = {"potential": self.potential,
                    **({"potential_kwargs": self.potential_kwargs} if self.potential_kwargs else {}),
                    "ensemble": self.ensemble, "steps": self.steps,
                    "timestep": self.timestep, "temperature": temperature, "friction": self.friction, "seed": seed,
                    "sample_every": self.sample_every, "max_frames": self.max_frames}
        if self.ensemble == "npt":
            settings.update(pressure=pressure, tau_p=self.tau_p, compressibility=self.compressibility)
        return result_key("mlip-md", structure, settings)
