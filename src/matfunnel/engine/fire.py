"""Batched FIRE with a Frechet cell filter: ASE's ``FIRE`` + ``FrechetCellFilter``, per structure.

Every structure in the batch carries its own FIRE parameters (time step, mixing ``alpha``, count of
downhill steps), its own convergence threshold and step limit, so a batch behaves exactly like the
same structures relaxed one after another with ASE (up to floating point):

* degrees of freedom (ASE ``FrechetCellFilter``): atom positions in the undeformed frame
  ``r_ref = r F^-T`` and ``X = exp_cell_factor * logm(F)`` for the cell, where ``F`` is the
  deformation gradient from the starting cell (``cell = cell0 F^T``); ``exp_cell_factor`` defaults
  to the number of atoms, ``scalar_pressure`` to 0;
* generalised forces: ``f F`` on atoms; on the cell, the gradient of the energy w.r.t. ``X``
  (Frechet derivative of ``expm`` applied to ``virial F^-T``, divided by ``exp_cell_factor``);
* FIRE (ASE defaults ``dt=0.1, dtmax=1.0, maxstep=0.2, Nmin=5, finc=1.1, fdec=0.5, astart=0.1,
  fa=0.99``) on the concatenated per-structure vector, step length capped at ``maxstep`` over all of
  a structure's degrees of freedom;
* converged when the largest row norm of the generalised forces (atoms and the 3 cell rows) is
  below ``fmax``.

The functions are pure: ``fire_init`` -> (evaluate -> ``fire_forces`` -> ``fire_update``)*; the
runner in :mod:`matfunnel.engine.runner` interleaves them with leaving and entering structures.
With ``relax_cell=False`` a structure keeps its cell and this is ASE's plain ``FIRE`` on the atoms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.engine.state import DTYPE, SystemState, atom_field, system_field, upgrade


@dataclass(frozen=True)
class FireConfig:
    """FIRE parameters (ASE's names and defaults)."""

    dt: float = 0.1
    dtmax: float = 1.0
    maxstep: float = 0.2
    Nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


@dataclass
class FireState(SystemState):
    """:class:`SystemState` plus the FIRE / Frechet-filter variables of each structure."""

    ref_cell: Tensor = system_field(default=None)  # (B, 3, 3) starting cell
    ref_positions: Tensor = atom_field(default=None)  # (N, 3) positions in the undeformed frame
    cell_dof: Tensor = system_field(default=None)  # (B, 3, 3) exp_cell_factor * logm(F)
    velocities: Tensor = atom_field(default=None)  # (N, 3) FIRE velocity of the atom DOFs
    cell_velocities: Tensor = system_field(default=None)  # (B, 3, 3)
    dt: Tensor = system_field(default=None)  # (B,)
    alpha: Tensor = system_field(default=None)  # (B,)
    n_pos: Tensor = system_field(default=None)  # (B,) long, downhill steps since the last reset
    n_steps: Tensor = system_field(default=None)  # (B,) long, FIRE steps taken
    exp_cell_factor: Tensor = system_field(default=None)  # (B,)
    relax_cell: Tensor = system_field(default=None)  # (B,) bool
    scalar_pressure: Tensor = system_field(default=None)  # (B,) eV/A^3
    fmax: Tensor = system_field(default=None)  # (B,)
    max_steps: Tensor = system_field(default=None)  # (B,) long
    movable: Tensor = atom_field(default=None)  # (N, 3) 1.0 where a Cartesian component may move (selective dynamics)
    # generalised forces at the current geometry (set by fire_forces)
    atom_gforce: Tensor | None = atom_field(default=None)  # (N, 3)
    cell_gforce: Tensor | None = system_field(default=None)  # (B, 3, 3)
    residual: Tensor | None = system_field(default=None)  # (B,) largest row norm


def _per_system(value, n: int, dtype, device) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(n).clone() if t.ndim == 0 else t.clone()


def fire_init(
    state: SystemState,
    *,
    fmax: float | Tensor = 0.05,
    max_steps: int | Tensor = 500,
    relax_cell: bool | Tensor = True,
    exp_cell_factor: float | Tensor | None = None,
    scalar_pressure: float | Tensor = 0.0,
    config: FireConfig = FireConfig(),
    movable: Tensor | np.ndarray | None = None,
) -> FireState:
    """FIRE variables for every structure of ``state`` (starting cell = current cell).

    ``scalar_pressure`` in GPa; ``exp_cell_factor`` defaults to the number of atoms of each structure.
    Per-structure values may be given as (B,) tensors. ``movable`` (N, 3) is 0 for the Cartesian force
    components that are held fixed (pymatgen's ``selective_dynamics``, ASE's ``FixAtoms``/``FixCartesian``):
    those components of the forces are zeroed before the filter, as ASE's constraints do, so a fixed atom
    only follows the cell's deformation.
    """
    n, dev = state.n_systems, state.device
    ecf = state.n_atoms.to(DTYPE) if exp_cell_factor is None else _per_system(exp_cell_factor, n, DTYPE, dev)
    zeros3 = torch.zeros(n, 3, 3, dtype=DTYPE, device=dev)
    return upgrade(
        state, FireState,
        ref_cell=state.cell.clone(),
        ref_positions=state.positions.clone(),
        cell_dof=zeros3.clone(),
        velocities=torch.zeros_like(state.positions),
        cell_velocities=zeros3.clone(),
        dt=_per_system(config.dt, n, DTYPE, dev),
        alpha=_per_system(config.astart, n, DTYPE, dev),
        n_pos=torch.zeros(n, dtype=torch.long, device=dev),
        n_steps=torch.zeros(n, dtype=torch.long, device=dev),
        exp_cell_factor=ecf,
        relax_cell=_per_system(relax_cell, n, torch.bool, dev),
        scalar_pressure=_per_system(scalar_pressure, n, DTYPE, dev) / EV_A3_TO_GPA,
        fmax=_per_system(fmax, n, DTYPE, dev),
        max_steps=_per_system(max_steps, n, torch.long, dev),
        movable=(torch.ones_like(state.positions) if movable is None
                 else torch.as_tensor(movable, dtype=DTYPE, device=dev).reshape(-1, 3)),
    )


def _segment_sum(x: Tensor, batch: Tensor, n: int) -> Tensor:
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, batch, x)


def expm_frechet(a: Tensor, e: Tensor) -> Tensor:
    """Frechet derivative of ``expm`` at ``a`` in direction ``e`` (batched 3x3), via the 6x6 block trick."""
    n = a.shape[0]
    m = torch.zeros(n, 6, 6, dtype=a.dtype, device=a.device)
    m[:, :3, :3] = a
    m[:, 3:, 3:] = a
    m[:, :3, 3:] = e
    return torch.linalg.matrix_exp(m)[:, :3, 3:]


def deformation_gradient(state: FireState) -> Tensor:
    """(B, 3, 3) ``F = expm(X / exp_cell_factor)``."""
    return torch.linalg.matrix_exp(state.cell_dof / state.exp_cell_factor[:, None, None])


def fire_forces(state: FireState) -> FireState:
    """Generalised (filter) forces and the convergence residual from ``state.forces``/``stress``."""
    if state.forces is None or state.stress is None:
        raise ValueError("evaluate the state (forces and stress) before fire_forces")
    n = state.n_systems
    F = deformation_gradient(state)
    forces = state.forces if state.movable is None else state.forces * state.movable
    atom_g = torch.bmm(forces.unsqueeze(1), F[state.batch]).squeeze(1)
    vol = torch.linalg.det(state.cell).abs()
    eye = torch.eye(3, dtype=DTYPE, device=state.device)
    virial = -vol[:, None, None] * (state.stress / EV_A3_TO_GPA + state.scalar_pressure[:, None, None] * eye)
    ucf_grad = torch.linalg.solve(F, virial.transpose(1, 2)).transpose(1, 2)  # virial @ inv(F^T)
    a = state.cell_dof / state.exp_cell_factor[:, None, None]
    # d/dX <expm(X/c), G> = L(A^T, G) / c  (adjoint of the Frechet derivative)
    cell_g = expm_frechet(a.transpose(1, 2), ucf_grad) / state.exp_cell_factor[:, None, None]
    cell_g = torch.where(state.relax_cell[:, None, None], cell_g, torch.zeros_like(cell_g))
    atom_norm = atom_g.norm(dim=1)
    res = torch.zeros(n, dtype=DTYPE, device=state.device).scatter_reduce_(0, state.batch, atom_norm, "amax")
    res = torch.maximum(res, cell_g.norm(dim=2).amax(dim=1))
    return dataclasses.replace(state, atom_gforce=atom_g, cell_gforce=cell_g, residual=res)


def fire_update(state: FireState, config: FireConfig = FireConfig()) -> FireState:
    """One FIRE step of every structure from its generalised forces; returns the moved (unevaluated) state."""
    if state.atom_gforce is None:
        state = fire_forces(state)
    n, b = state.n_systems, state.batch
    ga, gc = state.atom_gforce, state.cell_gforce
    assert ga is not None and gc is not None  # set by fire_forces
    va, vc = state.velocities, state.cell_velocities
    dt, alpha, n_pos = state.dt, state.alpha, state.n_pos

    vf = _segment_sum((ga * va).sum(1), b, n) + (gc * vc).sum((1, 2))
    g2 = _segment_sum((ga * ga).sum(1), b, n) + (gc * gc).sum((1, 2))
    v2 = _segment_sum((va * va).sum(1), b, n) + (vc * vc).sum((1, 2))
    started = state.n_steps > 0  # ASE's first step starts from zero velocity without adapting
    downhill = started & (vf > 0)
    reset = started & ~(vf > 0)

    # downhill: mix the velocity towards the force direction
    scale = torch.where(g2 > 0, alpha * torch.sqrt(v2) / torch.sqrt(g2.clamp_min(1e-300)), torch.zeros_like(g2))
    keep = torch.where(downhill, 1.0 - alpha, torch.ones_like(alpha))
    mix = torch.where(downhill, scale, torch.zeros_like(scale))
    va = keep[b, None] * va + mix[b, None] * ga
    vc = keep[:, None, None] * vc + mix[:, None, None] * gc
    grow = downhill & (n_pos > config.Nmin)
    dt = torch.where(grow, torch.clamp(dt * config.finc, max=config.dtmax), dt)
    alpha = torch.where(grow, alpha * config.fa, alpha)
    n_pos = torch.where(downhill, n_pos + 1, n_pos)
    # uphill: stop, restart slowly
    va = torch.where(reset[b, None], torch.zeros_like(va), va)
    vc = torch.where(reset[:, None, None], torch.zeros_like(vc), vc)
    alpha = torch.where(reset, torch.full_like(alpha, config.astart), alpha)
    dt = torch.where(reset, dt * config.fdec, dt)
    n_pos = torch.where(reset, torch.zeros_like(n_pos), n_pos)

    # Euler step, capped at maxstep over each structure's degrees of freedom
    va = va + dt[b, None] * ga
    vc = vc + dt[:, None, None] * gc
    dra = dt[b, None] * va
    drc = dt[:, None, None] * vc
    norm = torch.sqrt(_segment_sum((dra * dra).sum(1), b, n) + (drc * drc).sum((1, 2)))
    cap = torch.where(norm > config.maxstep, config.maxstep / norm.clamp_min(1e-300), torch.ones_like(norm))
    ref_positions = state.ref_positions + cap[b, None] * dra
    cell_dof = state.cell_dof + cap[:, None, None] * drc

    moved = dataclasses.replace(
        state, ref_positions=ref_positions, cell_dof=cell_dof, velocities=va, cell_velocities=vc, dt=dt,
        alpha=alpha, n_pos=n_pos, n_steps=state.n_steps + 1,
        energy=None, forces=None, stress=None, magmoms=None, eval_error=None, min_distance=None,
        atom_gforce=None, cell_gforce=None, residual=None,
    )
    return apply_dofs(moved)


def apply_dofs(state: FireState) -> FireState:
    """Cell and Cartesian positions from the degrees of freedom: ``cell = cell0 F^T``, ``r = r_ref F^T``."""
    F = deformation_gradient(state)
    Ft = F.transpose(1, 2)
    cell = torch.bmm(state.ref_cell, Ft)
    pos = torch.bmm(state.ref_positions.unsqueeze(1), Ft[state.batch]).squeeze(1)
    return dataclasses.replace(state, cell=cell, positions=pos)
