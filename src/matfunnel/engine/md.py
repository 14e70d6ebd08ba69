"""Batched molecular dynamics: NVE (velocity Verlet), NVT (Langevin, BAOAB) and NPT (Langevin +
isotropic stochastic cell rescaling, Bernetti & Bussi, J. Chem. Phys. 153, 114107 (2020)).

Every structure of a batch has its own target temperature, pressure, thermostat/barostat constants
and random stream (``seed``), so its trajectory does not depend on which structures share the batch.
Units follow ASE: eV, A, amu, internal time ``ase.units.fs``; inputs are in fs, K, GPa, 1/fs, 1/GPa.

Functional pieces: :func:`md_init` (velocities), :func:`nve_step`, :func:`langevin_step`,
:func:`npt_step` (each one potential evaluation), :func:`kinetic_energy`, :func:`temperature`,
:func:`pressure`; :func:`run_md` drives batches of structures (sized by
:class:`~matfunnel.engine.runner.AtomBudget`), samples a trajectory every ``sample_every`` steps
(thinned to at most ``max_frames`` frames) and isolates failing structures.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from ase import units
from ase.data import atomic_masses
from pymatgen.core import Structure
from torch import Tensor

from matfunnel.engine.documents import initial_dict, structure_dict
from matfunnel.engine.inputs import labels_for, per_structure
from matfunnel.engine.runner import AtomBudget
from matfunnel.engine.state import DTYPE, EV_A3_TO_GPA, SystemState, atom_field, evaluate, \
    failure_reasons, from_structures, select, system_field, upgrade
from matfunnel.engine.trajectory import Thinned
from matfunnel.potential import Potential, StructureError
from matfunnel.potential.validate import structure_label, to_structure as as_structure, \
    validate_structure

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
        return asdict(self)


def _per_system(value, n: int, dtype, device) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(n).clone() if t.ndim == 0 else t.clone()


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _atom_normals(state: SystemState, gens: list[torch.Generator]) -> Tensor:
    counts = state.n_atoms.tolist()
    z = [torch.randn(n, 3, generator=g, dtype=DTYPE) for n, g in zip(counts, gens)]
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
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, not {ensemble!r}")
    n = len(structures)
    labels = labels_for(labels, n)
    temps = per_structure("temperature", temperature, n, minimum=0.0)
    press = per_structure("pressure", pressure, n)
    if np.ndim(seed) == 0:
        seeds = [int(seed) + i for i in range(n)]
    else:
        seeds = per_structure("seed", seed, n, integer=True)
    if not (steps >= 0 and timestep > 0 and sample_every >= 1 and max_frames >= 2):
        raise ValueError(f"need steps >= 0, timestep > 0, sample_every >= 1 and max_frames >= 2; got {steps}, "
                         f"{timestep}, {sample_every}, {max_frames}")
    results: list[MDResult | None] = [None] * n
    inputs: dict[int, Structure] = {}
    dev = potential.device

    def blank(i, s) -> MDResult:
        ok = isinstance(s, Structure) and len(s)
        return MDResult(label=labels[i], formula=s.composition.reduced_formula if ok else "",
                        initial_structure=initial_dict(s), ensemble=ensemble,
                        timestep_fs=timestep, temperature=temps[i], pressure=press[i] if ensemble == "npt" else None,
                        initial_volume=float(s.volume) if ok else None)

    def finish(i: int, res: MDResult, t0: float) -> None:
        res.wall_time = time.perf_counter() - t0
        results[i] = res
        if on_result is not None:
            on_result(i, res)

    todo = []
    for i, obj in enumerate(structures):
        try:
            s = as_structure(obj, labels[i] or f"structure#{i}")
            labels[i] = labels[i] or structure_label(s, i)
            validate_structure(s, labels[i], potential.supported_elements)
            inputs[i] = s
            todo.append(i)
        except StructureError as exc:
            labels[i] = labels[i] or f"structure#{i}"
            res = blank(i, obj)
            res.error = str(exc)
            finish(i, res, time.perf_counter())

    budget = AtomBudget(potential, max_atoms)
    groups, cur, tally = [], [], budget.tally([])
    for i in todo:
        budget.register(i, len(inputs[i]), float(inputs[i].volume))
        if not budget.add(tally, i):  # full: start the next group (a lone structure always fits)
            groups.append(cur)
            cur, tally = [], budget.tally([])
            budget.add(tally, i)
        cur.append(i)
    if cur:
        groups.append(cur)

    step_fn = {"nve": lambda s, g: nve_step(s, potential, timestep),
               "nvt": lambda s, g: langevin_step(s, potential, timestep, g),
               "npt": lambda s, g: npt_step(s, potential, timestep, g)}[ensemble]
    for group in groups:
        t0 = time.perf_counter()
        gens_by_id = {i: g for i, g in zip(group, _generators([seeds[i] for i in group]))}
        recorders = {i: _Recorder(sample_every, max_frames, timestep) for i in group}
        state = md_init(from_structures([inputs[i] for i in group], dev, ids=group),
                        [gens_by_id[i] for i in group],
                        temperature=torch.tensor([temps[i] for i in group], dtype=DTYPE),
                        pressure=torch.tensor([press[i] for i in group], dtype=DTYPE),
                        friction=friction, tau_p=tau_p, compressibility=compressibility)
        state = evaluate(state, potential)
        it = 0
        while state is not None:
            ids = state.ids.tolist()
            reasons = _check(state, it, check_distance_every)
            steps_l = state.n_steps.tolist()
            _record(state, recorders, ids, steps_l, reasons)
            done = [r is not None or s >= steps for r, s in zip(reasons, steps_l)]
            if any(done):
                counts = state.n_atoms.tolist()
                starts = np.concatenate([[0], np.cumsum(counts)])
                e_l = state.energy.tolist()
                pos_h, cell_h = state.positions.detach().cpu().numpy(), state.cell.detach().cpu().numpy()
                for b in [k for k, d in enumerate(done) if d]:
                    i = ids[b]
                    res = blank(i, inputs[i])
                    res.n_steps = int(steps_l[b])
                    traj = recorders[i].as_dict()
                    res.trajectory = traj
                    if traj["temperature"]:
                        res.mean_temperature = float(np.mean(traj["temperature"]))
                        res.mean_pressure = float(np.mean(traj["pressure"]))
                    if state.eval_error and state.eval_error[b] is not None:  # may pass on a retry: not to be kept
                        res.data["potential_error"] = str(state.eval_error[b])
                    if reasons[b] is not None:
                        res.error = f"structure {labels[i]!r}: {reasons[b]}"
                    else:
                        res.final_structure = structure_dict(inputs[i], cell_h[b], pos_h[starts[b]:starts[b + 1]])
                        res.final_volume = float(abs(np.linalg.det(cell_h[b])))
                        res.energy = float(e_l[b])
                        res.e_per_atom = float(e_l[b]) / counts[b]
                    finish(i, res, t0)
                keep = torch.tensor([not d for d in done], device=state.device)
                state = select(state, keep) if not all(done) else None
                if state is None:
                    break
            gens = [gens_by_id[i] for i in state.ids.tolist()]
            state = step_fn(state, gens)
            it += 1
    return results  # type: ignore[return-value]


def _check(state: MDState, it: int, every: int) -> list[str | None]:
    return failure_reasons(state, torch.isfinite(state.energy),
                           torch.isfinite(state.forces).all(1) & torch.isfinite(state.velocities).all(1),
                           bool(every) and it % every == 0 and it > 0)


def _record(state: MDState, recorders, ids, steps_l, reasons) -> None:
    due = [recorders[i].due(s) and r is None for i, s, r in zip(ids, steps_l, reasons)]
    if not any(due):
        return
    ke = kinetic_energy(state).tolist()
    temp = temperature(state).tolist()
    press = (pressure(state) * EV_A3_TO_GPA).tolist()
    vol = state.volumes().tolist()
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
