"""Batched FIRE on the Frechet cell filter's degrees of freedom: ASE's ``FIRE`` + ``FrechetCellFilter``, per structure.

Every structure in the batch carries its own FIRE parameters (time step, mixing ``alpha``, count of
downhill steps), its own convergence threshold and step limit, so a batch behaves exactly like the
same structures relaxed one after another with ASE (up to floating point). The degrees of freedom, the
generalised forces and the convergence test are :mod:`matfunnel.engine.cellfilter`'s; FIRE (ASE defaults
``dt=0.1, dtmax=1.0, maxstep=0.2, Nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99``) runs on each structure's
concatenated vector, its step length capped at ``maxstep`` over all of the structure's degrees of freedom.

The functions are pure: ``fire_init`` -> (evaluate -> ``fire_forces`` -> ``fire_update``)*; the
runner in :mod:`matfunnel.engine.runner` interleaves them with leaving and entering structures.
With ``relax_cell=False`` a structure keeps its cell and this is ASE's plain ``FIRE`` on the atoms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from matfunnel.engine.cellfilter import (
    UNEVALUATED,
    FilterState,
    apply_dofs,
    deformation_gradient,
    expm_frechet,
    filter_forces,
    filter_init,
    per_system,
    segment_sum,
)
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
class FireState(FilterState):
    """:class:`~matfunnel.engine.cellfilter.FilterState` plus the FIRE variables of each structure."""

    velocities: Tensor = atom_field(default=None)  # (N, 3) FIRE velocity of the atom DOFs
    cell_velocities: Tensor = system_field(default=None)  # (B, 3, 3)
    dt: Tensor = system_field(default=None)  # (B,)
    alpha: Tensor = system_field(default=None)  # (B,)
    n_pos: Tensor = system_field(default=None)  # (B,) long, downhill steps since the last reset


def fire_init(state: SystemState, *, config: FireConfig = FireConfig(), **settings: Any) -> FireState:
    """FIRE variables for every structure of ``state``.

    ``settings`` are :func:`~matfunnel.engine.cellfilter.filter_init`'s (``fmax``, ``max_steps``, ``relax_cell``,
    ``exp_cell_factor``, ``scalar_pressure``, ``movable``).
    """
    base = filter_init(state, **settings)
    n, dev = base.n_systems, base.device
    return upgrade(
        base, FireState,
        velocities=torch.zeros_like(base.positions),
        cell_velocities=torch.zeros(n, 3, 3, dtype=DTYPE, device=dev),
        dt=per_system(config.dt, n, DTYPE, dev),
        alpha=per_system(config.astart, n, DTYPE, dev),
        n_pos=torch.zeros(n, dtype=torch.long, device=dev),
    )


#: FIRE's generalised forces are the filter's
fire_forces = filter_forces


def fire_update(state: FireState, config: FireConfig = FireConfig()) -> FireState:
    """One FIRE step of every structure from its generalised forces; returns the moved (unevaluated) state."""
    if state.atom_gforce is None:
        state = fire_forces(state)
    n, b = state.n_systems, state.batch
    ga, gc = state.atom_gforce, state.cell_gforce
    assert ga is not None and gc is not None  # set by fire_forces
    va, vc = state.velocities, state.cell_velocities
    dt, alpha, n_pos = state.dt, state.alpha, state.n_pos

    vf = segment_sum((ga * va).sum(1), b, n) + (gc * vc).sum((1, 2))
    g2 = segment_sum((ga * ga).sum(1), b, n) + (gc * gc).sum((1, 2))
    v2 = segment_sum((va * va).sum(1), b, n) + (vc * vc).sum((1, 2))
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
    norm = torch.sqrt(segment_sum((dra * dra).sum(1), b, n) + (drc * drc).sum((1, 2)))
    cap = torch.where(norm > config.maxstep, config.maxstep / norm.clamp_min(1e-300), torch.ones_like(norm))
    ref_positions = state.ref_positions + cap[b, None] * dra
    cell_dof = state.cell_dof + cap[:, None, None] * drc

    moved = dataclasses.replace(
        state, ref_positions=ref_positions, cell_dof=cell_dof, velocities=va, cell_velocities=vc, dt=dt,
        alpha=alpha, n_pos=n_pos, n_steps=state.n_steps + 1,
        **UNEVALUATED,
    )
    return apply_dofs(moved)


__all__ = ["FireConfig", "FireState", "apply_dofs", "deformation_gradient", "expm_frechet", "fire_forces", "fire_init",
           "fire_update"]
