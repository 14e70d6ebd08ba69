"""Batched molecular dynamics: NVE, NVT and NPT.

NVE is velocity Verlet, NVT Langevin (BAOAB), NPT Langevin + isotropic stochastic cell rescaling (Bernetti &
Bussi, J. Chem. Phys. 153, 114107 (2020)).

Every structure of a batch has its own target temperature, pressure, thermostat/barostat constants
and random stream (``seed``), so its trajectory does not depend on which structures share the batch.
Units follow ASE: eV, A, amu, internal time ``ase.units.fs``; inputs are in fs, K, GPa, 1/fs, 1/GPa.

Functional pieces: :func:`md_init` (velocities), :func:`nve_step`, :func:`langevin_step`,
:func:`npt_step` (each one potential evaluation), :func:`kinetic_energy`, :func:`temperature`,
:func:`pressure`; :func:`run_md` drives batches of structures (sized by
:class:`~matfunnel.engine.batching.InFlightBatcher`), samples a trajectory every ``sample_every`` steps
(thinned to at most ``max_frames`` frames) and isolates failing structures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from ase import units
from ase.data import atomic_masses
from pymatgen.core import Structure
from torch import Tensor

from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.engine.batching import AtomBudget, HostView, InFlightBatcher, validated
from matfunnel.engine.documents import initial_dict, structure_dict
from matfunnel.engine.inputs import labels_for, per_structure
from matfunnel.engine.results import MDResult
from matfunnel.engine.state import (
    DTYPE,
    SystemState,
    atom_field,
    evaluate,
    failure_reasons,
    from_structures,
    system_field,
    upgrade,
)
from matfunnel.engine.trajectory import Thinned
from matfunnel.potential import Potential

ENSEMBLES = ("nve", "nvt", "npt")


@dataclass
class MDState(SystemState):
    """:class:`SystemState` plus velocities and per-structure thermostat/barostat settings."""

    velocities: Tensor = atom_field(default=None)  # (N, 3) A per ASE time unit
    masses: Tensor = atom_field(default=None)  # (N,) amu
    temperature: Tensor = system_field(default=None)  # (B,) K, target
    pressure: Tensor = system_field(default=None)  # (B,) eV/A^3, target
    friction: Tensor = system_field(default=None)  # (B,) per ASE time unit
    tau_p: Tensor = system_field(default=None)  # (B,) ASE time units
    compressibility: Tensor = system_field(default=None)  # (B,) A^3/eV
    n_steps: Tensor = system_field(default=None)  # (B,) long


def _per_system(value, n: int, dtype, device) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(n).clone() if t.ndim == 0 else t.clone()


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _atom_normals(state: SystemState, gens: list[torch.Generator]) -> Tensor:
    counts = state.n_atoms.tolist()
    z = [torch.randn(n, 3, generator=g, dtype=DTYPE) for n, g in zip(counts, gens, strict=False)]
    return torch.cat(z).to(state.device)


def _system_normals(gens: list[torch.Generator], device) -> Tensor:
    return torch.cat([torch.randn(1, generator=g, dtype=DTYPE) for g in gens]).to(device)


def _seg_sum(x: Tensor, batch: Tensor, n: int) -> Tensor:
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, batch, x)


def md_init(
    state: SystemState,
    gens: list[torch.Generator],
    *,
    temperature: float | Tensor = 300.0,
    pressure: float | Tensor = 0.0,
    friction: float | Tensor = 0.01,
    tau_p: float | Tensor = 500.0,
    compressibility: float | Tensor = 0.01,
    masses: Tensor | None = None,
) -> MDState:
    """Maxwell-Boltzmann velocities at ``temperature`` (centre of mass at rest), one stream per structure.

    ``pressure`` GPa, ``friction`` 1/fs, ``tau_p`` fs, ``compressibility`` 1/GPa; scalars or (B,) tensors.
    """
    n, dev = state.n_systems, state.device
    if masses is None:
        masses = torch.as_tensor(atomic_masses[state.numbers.cpu().numpy()], dtype=DTYPE, device=dev)
    temp = _per_system(temperature, n, DTYPE, dev)
    kT = units.kB * temp
    v = _atom_normals(state, gens) * torch.sqrt(kT[state.batch] / masses)[:, None]
    mom = _seg_sum_rows(v * masses[:, None], state.batch, n)
    mtot = _seg_sum(masses, state.batch, n)
    v = v - (mom / mtot[:, None])[state.batch]
    return upgrade(
        state, MDState, velocities=v, masses=masses, temperature=temp,
        pressure=_per_system(pressure, n, DTYPE, dev) / EV_A3_TO_GPA,
        friction=_per_system(friction, n, DTYPE, dev) / units.fs,
        tau_p=_per_system(tau_p, n, DTYPE, dev) * units.fs,
        compressibility=_per_system(compressibility, n, DTYPE, dev) * EV_A3_TO_GPA,
        n_steps=torch.zeros(n, dtype=torch.long, device=dev),
    )


def _seg_sum_rows(x: Tensor, batch: Tensor, n: int) -> Tensor:
    return torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, batch, x)


def kinetic_energy(state: MDState) -> Tensor:
    """(B,) eV."""
    return 0.5 * _seg_sum(state.masses * (state.velocities**2).sum(1), state.batch, state.n_systems)


def temperature(state: MDState) -> Tensor:
    """(B,) instantaneous kinetic temperature, K (3N degrees of freedom, as ASE's ``get_temperature``)."""
    return 2 * kinetic_energy(state) / (3 * state.n_atoms.to(DTYPE) * units.kB)


def pressure(state: MDState) -> Tensor:
    """(B,) instantaneous pressure, eV/A^3: kinetic ``2K/3V`` plus ``-tr(stress)/3``."""
    vol = state.volumes()
    p = 2 * kinetic_energy(state) / (3 * vol)
    if state.stress is not None:
        p = p - torch.diagonal(state.stress, dim1=1, dim2=2).sum(1) / 3 / EV_A3_TO_GPA
    return p


def _kick(state: MDState, dt: Tensor) -> Tensor:
    assert state.forces is not None  # the state is evaluated
    return state.velocities + (dt[state.batch] / state.masses)[:, None] * state.forces


def _ou(state: MDState, v: Tensor, dt: Tensor, gens) -> Tensor:
    """Exact Ornstein-Uhlenbeck update of the velocities over ``dt`` (the O of BAOAB)."""
    c1 = torch.exp(-state.friction * dt)
    c2 = torch.sqrt((1 - c1**2).clamp_min(0) * units.kB * state.temperature)
    b = state.batch
    return c1[b, None] * v + (c2[b] / torch.sqrt(state.masses))[:, None] * _atom_normals(state, gens)


def _drift(state: MDState, v: Tensor, dt: Tensor) -> Tensor:
    return state.positions + dt[state.batch, None] * v


def _dt(state: MDState, timestep_fs: float) -> Tensor:
    return torch.full((state.n_systems,), timestep_fs * units.fs, dtype=DTYPE, device=state.device)


def nve_step(state: MDState, potential: Potential, timestep_fs: float) -> MDState:
    """Velocity Verlet (``state`` must be evaluated)."""
    dt = _dt(state, timestep_fs)
    v = _kick(state, 0.5 * dt)
    x = _drift(state, v, dt)
    moved = evaluate(dataclasses.replace(state, positions=x, velocities=v), potential)
    return dataclasses.replace(moved, velocities=_kick(moved, 0.5 * dt), n_steps=state.n_steps + 1)


def langevin_step(state: MDState, potential: Potential, timestep_fs: float, gens) -> MDState:
    """Langevin dynamics, BAOAB splitting (``state`` must be evaluated)."""
    dt = _dt(state, timestep_fs)
    v = _kick(state, 0.5 * dt)
    x = _drift(state, v, 0.5 * dt)
    v = _ou(state, v, dt, gens)
    x = x + (0.5 * dt)[state.batch, None] * v
    moved = evaluate(dataclasses.replace(state, positions=x, velocities=v), potential)
    return dataclasses.replace(moved, velocities=_kick(moved, 0.5 * dt), n_steps=state.n_steps + 1)


def npt_step(state: MDState, potential: Potential, timestep_fs: float, gens) -> MDState:
    """Langevin (BAOAB) + isotropic stochastic cell rescaling, one evaluation per step.

    The barostat acts after the drift with the pressure of the start of the step:
    ``d ln V = -(beta/tau_p)(P0 - P - kT/V) dt + sqrt(2 kT beta dt / (V tau_p)) xi``; positions and cell
    scale by ``exp(d ln V / 3)``, velocities by its inverse.
    """
    dt = _dt(state, timestep_fs)
    p_now = pressure(state)
    vol = state.volumes()
    kT = units.kB * state.temperature
    beta, tau = state.compressibility, state.tau_p
    v = _kick(state, 0.5 * dt)
    x = _drift(state, v, 0.5 * dt)
    v = _ou(state, v, dt, gens)
    x = x + (0.5 * dt)[state.batch, None] * v
    deps = -(beta / tau) * (state.pressure - p_now - kT / vol) * dt \
        + torch.sqrt(2 * kT * beta * dt / (vol * tau)) * _system_normals(gens, state.device)
    deps = deps.clamp(-0.1, 0.1)  # a wild pressure must not collapse the cell in one step
    lam = torch.exp(deps / 3)
    x = x * lam[state.batch, None]
    v = v / lam[state.batch, None]
    cell = state.cell * lam[:, None, None]
    moved = evaluate(dataclasses.replace(state, positions=x, velocities=v, cell=cell), potential)
    return dataclasses.replace(moved, velocities=_kick(moved, 0.5 * dt), n_steps=state.n_steps + 1)


class _Recorder(Thinned):
    """An MD trajectory: frames every ``stride`` steps, thinned to ``max_frames`` (:class:`Thinned`)."""

    KEYS = ("step", "time_fs", "energy", "kinetic_energy", "temperature", "pressure", "volume", "positions", "cell")
    UNITS = {"time": "fs", "energy": "eV", "temperature": "K", "pressure": "GPa", "volume": "A^3",
             "positions": "A (Cartesian)", "cell": "A (rows)"}

    def __init__(self, stride: int, max_frames: int, timestep_fs: float):
        super().__init__(stride, max_frames)
        self.timestep_fs = timestep_fs

    def add(self, step, energy, ke, temp, press, vol, pos, cell):
        """Add the frame of ``step`` (its time follows from the time step)."""
        self.append((step, step * self.timestep_fs, energy, ke, temp, press, vol, pos, cell))


def run_md(
    structures: Sequence[Structure],
    potential: Potential,
    *,
    ensemble: str = "nvt",
    steps: int = 1000,
    timestep: float = 1.0,
    temperature: float | Sequence[float] = 300.0,
    pressure: float | Sequence[float] = 0.0,
    friction: float = 0.01,
    tau_p: float = 500.0,
    compressibility: float = 0.01,
    seed: int | Sequence[int] = 0,
    sample_every: int = 10,
    max_frames: int = 500,
    labels: Sequence[str] | None = None,
    max_atoms: int | None = None,
    check_distance_every: int = 1,
    on_result: Callable[[int, MDResult], None] | None = None,
) -> list[MDResult]:
    """Run ``steps`` MD steps of every structure (``ensemble`` nve / nvt / npt), batched.

    ``timestep`` fs; ``temperature`` K, ``pressure`` GPa and ``seed`` scalars or one per structure
    (a scalar seed gives structure ``i`` the stream ``seed + i``); ``friction`` 1/fs (Langevin),
    ``tau_p`` fs and ``compressibility`` 1/GPa (barostat). NVE starts from Maxwell-Boltzmann velocities
    at ``temperature``. A structure that blows up (NaN, forces > 1e3 eV/A, atoms closer than 0.5 A)
    stops with ``error`` set; the others go on. Returns one :class:`MDResult` per input, in order.

    All inputs are validated first; the valid ones then run in fixed batches (the next batch starts when the
    last member of the previous one has finished).
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, not {ensemble!r}")
    n = len(structures)
    names = labels_for(labels, n)
    temps = per_structure("temperature", temperature, n, minimum=0.0)
    press = per_structure("pressure", pressure, n)
    seeds = ([int(cast(int, seed)) + i for i in range(n)] if np.ndim(seed) == 0
             else per_structure("seed", seed, n, integer=True))
    if not (steps >= 0 and timestep > 0 and sample_every >= 1 and max_frames >= 2):
        raise ValueError(f"need steps >= 0, timestep > 0, sample_every >= 1 and max_frames >= 2; got {steps}, "
                         f"{timestep}, {sample_every}, {max_frames}")
    job = _Dynamics(structures, potential, names, ensemble, steps, timestep, temps, press, seeds,
                    dict(friction=friction, tau_p=tau_p, compressibility=compressibility),
                    sample_every, max_frames, check_distance_every)
    batcher = InFlightBatcher(job, n, AtomBudget(potential, max_atoms), in_flight=False, on_result=on_result)
    batcher.prepare_all()
    state, it = batcher.refill(None), 0
    while state is not None:
        reasons, done = job.check(state, it)
        state = batcher.harvest(state, done, reasons, job.document)
        if state is None:  # the batch is over: the next one (if any) starts at its own step 0
            state, it = batcher.refill(None), 0
        else:
            state, it = job.step(state), it + 1
    return batcher.close()


@dataclass
class _Dynamics:
    """One :func:`run_md` call.

    Its settings, the validated inputs, and the random streams and trajectories of the structures in the batch.
    """

    structures: Sequence
    potential: Potential
    labels: list[str | None]
    ensemble: str
    steps: int
    timestep: float
    temps: list[float]
    press: list[float]
    seeds: list[int]
    #: ``friction``, ``tau_p`` and ``compressibility`` for :func:`md_init`
    coupling: dict
    sample_every: int
    max_frames: int
    check_distance_every: int
    inputs: dict[int, Structure] = field(default_factory=dict)
    gens: dict[int, torch.Generator] = field(default_factory=dict)
    recorders: dict[int, _Recorder] = field(default_factory=dict)

    def prepare(self, i: int) -> Structure:
        """Validate input ``i``."""
        self.inputs[i] = validated(self.structures[i], self.labels, i, self.potential.supported_elements,
                                   budget=getattr(self.potential, "budget_problem", None))
        return self.inputs[i]

    def failed(self, i: int, error: str) -> MDResult:
        """Return the document of input ``i``, which could not run."""
        res = self._blank(i, self.structures[i])
        res.error = error
        return res

    def start(self, take: list[int]) -> MDState:
        """Build the evaluated MD state of the inputs ``take``, with their velocities, streams and trajectories."""
        for i, g in zip(take, _generators([self.seeds[i] for i in take]), strict=True):
            self.gens[i] = g
            self.recorders[i] = _Recorder(self.sample_every, self.max_frames, self.timestep)
        state = md_init(from_structures([self.inputs[i] for i in take], self.potential.device, ids=take),
                        [self.gens[i] for i in take],
                        temperature=torch.tensor([self.temps[i] for i in take], dtype=DTYPE),
                        pressure=torch.tensor([self.press[i] for i in take], dtype=DTYPE), **self.coupling)
        return evaluate(state, self.potential)

    def check(self, state: MDState, it: int) -> tuple[list[str | None], list[bool]]:
        """Return each member's failure reason (or ``None``) and whether it is done; record due trajectory frames."""
        reasons = _check(state, it, self.check_distance_every)
        steps_l = state.n_steps.tolist()
        _record(state, self.recorders, state.ids.tolist(), steps_l, reasons)
        return reasons, [r is not None or s >= self.steps for r, s in zip(reasons, steps_l, strict=True)]

    def step(self, state: MDState) -> MDState:
        """Move ``state`` one step of the ensemble."""
        if self.ensemble == "nve":
            return nve_step(state, self.potential, self.timestep)
        gens = [self.gens[i] for i in state.ids.tolist()]
        stepper = langevin_step if self.ensemble == "nvt" else npt_step
        return stepper(state, self.potential, self.timestep, gens)

    def document(self, i: int, b: int, view: HostView, reason: str | None) -> MDResult:
        """Write the document of input ``i``, member ``b`` of the batch, which leaves it now."""
        res = self._blank(i, self.inputs[i])
        res.n_steps = int(view.values("n_steps")[b])
        res.trajectory = traj = self.recorders.pop(i).as_dict()
        self.gens.pop(i)
        if traj["temperature"]:
            res.mean_temperature = float(np.mean(traj["temperature"]))
            res.mean_pressure = float(np.mean(traj["pressure"]))
        if reason is not None:
            res.error = f"structure {self.labels[i]!r}: {reason}"
        else:
            cells, e, positions = view.array("cell"), float(view.values("energy")[b]), view.atoms("positions", b)
            assert cells is not None and positions is not None  # every state has its geometry
            cell = cells[b]
            res.final_structure = structure_dict(self.inputs[i], cell, positions)
            res.final_volume = float(abs(np.linalg.det(cell)))
            res.energy, res.e_per_atom = e, e / view.counts[b]
        return res

    def _blank(self, i: int, s) -> MDResult:
        ok = isinstance(s, Structure) and len(s)
        label = self.labels[i]
        assert label is not None  # validated() names every input it sees, also those that fail
        return MDResult(label=label, formula=s.composition.reduced_formula if ok else "",
                        initial_structure=initial_dict(s), ensemble=self.ensemble, timestep_fs=self.timestep,
                        temperature=self.temps[i], pressure=self.press[i] if self.ensemble == "npt" else None,
                        initial_volume=float(s.volume) if ok else None)


def _check(state: MDState, it: int, every: int) -> list[str | None]:
    assert state.energy is not None and state.forces is not None  # the state is evaluated
    return failure_reasons(state, torch.isfinite(state.energy),
                           torch.isfinite(state.forces).all(1) & torch.isfinite(state.velocities).all(1),
                           bool(every) and it % every == 0 and it > 0)


def _record(state: MDState, recorders, ids, steps_l, reasons) -> None:
    due = [recorders[i].due(s) and r is None for i, s, r in zip(ids, steps_l, reasons, strict=True)]
    if not any(due):
        return
    ke = kinetic_energy(state).tolist()
    temp = temperature(state).tolist()
    press = (pressure(state) * EV_A3_TO_GPA).tolist()
    vol = state.volumes().tolist()
    assert state.energy is not None  # the state is evaluated
    e = state.energy.tolist()
    counts = state.n_atoms.tolist()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    pos = state.positions.detach().cpu().float().numpy()
    cell = state.cell.detach().cpu().numpy()
    for b, i in enumerate(ids):
        if due[b]:
            lo = starts[b]
            recorders[i].add(int(steps_l[b]), e[b], ke[b], temp[b], press[b], vol[b],
                             np.round(pos[lo:lo + counts[b]], 4).tolist(), cell[b].tolist())


__all__ = ["ENSEMBLES", "MDResult", "MDState", "kinetic_energy", "langevin_step", "md_init", "npt_step",
           "nve_step", "pressure", "run_md", "temperature"]
