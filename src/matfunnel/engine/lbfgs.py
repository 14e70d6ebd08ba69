"""Batched L-BFGS on the Frechet cell filter's degrees of freedom: ASE's ``LBFGS`` + ``FrechetCellFilter``.

Each structure keeps its own history of the last ``memory`` steps ``s`` (change of the degrees of freedom) and
gradient changes ``y`` (minus the change of the generalised forces), stored newest first in (N, M, 3) tensors
for the atoms and (B, M, 3, 3) for the cell, so that structures leave and join a running batch like FIRE's.
One step, per structure (ASE's algorithm and defaults: ``maxstep=0.2``, ``memory=100``, ``alpha=70`` eV/A^2 for
the initial Hessian ``alpha * 1``, ``damping=1``):

1. from the second step on, the pair ``(s, y)`` of the last step joins the history (``rho = 1 / y.s``);
2. the two-loop recursion turns the gradient into the quasi-Newton direction ``p = -H g`` with ``H0 = 1/alpha``;
3. the step is ``p`` scaled so that no row (an atom's 3 components, or a row of the cell's degrees of freedom)
   moves more than ``maxstep``, times ``damping``.

ASE stores every pair, also those with negative curvature ``y.s <= 0``, which make ``H`` indefinite and can send
a structure uphill; ``curvature_check=True`` (not ASE's behaviour) leaves such pairs out of the history.
The degrees of freedom, generalised forces and convergence test are :mod:`matfunnel.engine.cellfilter`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from matfunnel.engine.cellfilter import UNEVALUATED, FilterState, apply_dofs, filter_forces, filter_init, segment_sum
from matfunnel.engine.state import DTYPE, SystemState, atom_field, system_field, upgrade


@dataclass(frozen=True)
class LbfgsConfig:
    """L-BFGS parameters (ASE's names and defaults), plus the curvature check ASE does not make."""

    maxstep: float = 0.2
    memory: int = 100
    alpha: float = 70.0
    damping: float = 1.0
    curvature_check: bool = False

    def __post_init__(self):
        if self.maxstep <= 0 or self.memory < 1 or self.alpha <= 0 or self.damping <= 0:
            raise ValueError(f"L-BFGS needs maxstep > 0, memory >= 1, alpha > 0 and damping > 0, got {self}")


@dataclass
class LbfgsState(FilterState):
    """:class:`~matfunnel.engine.cellfilter.FilterState` plus each structure's L-BFGS history (newest first)."""

    s_atoms: Tensor = atom_field(default=None)  # (N, M, 3) steps of the atoms' degrees of freedom
    y_atoms: Tensor = atom_field(default=None)  # (N, M, 3) gradient changes
    s_cell: Tensor = system_field(default=None)  # (B, M, 3, 3)
    y_cell: Tensor = system_field(default=None)  # (B, M, 3, 3)
    rho: Tensor = system_field(default=None)  # (B, M) 1 / (y.s)
    n_pairs: Tensor = system_field(default=None)  # (B,) long, pairs in the history
    prev_positions: Tensor = atom_field(default=None)  # (N, 3) degrees of freedom at the last step
    prev_cell_dof: Tensor = system_field(default=None)  # (B, 3, 3)
    prev_atom_gforce: Tensor = atom_field(default=None)  # (N, 3) generalised forces at the last step
    prev_cell_gforce: Tensor = system_field(default=None)  # (B, 3, 3)


def lbfgs_init(state: SystemState, *, config: LbfgsConfig = LbfgsConfig(), **settings: Any) -> LbfgsState:
    """L-BFGS variables for every structure of ``state``.

    ``settings`` are :func:`~matfunnel.engine.cellfilter.filter_init`'s (``fmax``, ``max_steps``, ``relax_cell``,
    ``exp_cell_factor``, ``scalar_pressure``, ``movable``); ``config`` sets the history's length.
    """
    base = filter_init(state, **settings)
    n, na, m, dev = base.n_systems, base.positions.shape[0], config.memory, base.device
    return upgrade(
        base, LbfgsState,
        s_atoms=torch.zeros(na, m, 3, dtype=DTYPE, device=dev),
        y_atoms=torch.zeros(na, m, 3, dtype=DTYPE, device=dev),
        s_cell=torch.zeros(n, m, 3, 3, dtype=DTYPE, device=dev),
        y_cell=torch.zeros(n, m, 3, 3, dtype=DTYPE, device=dev),
        rho=torch.zeros(n, m, dtype=DTYPE, device=dev),
        n_pairs=torch.zeros(n, dtype=torch.long, device=dev),
        prev_positions=base.ref_positions.clone(),
        prev_cell_dof=base.cell_dof.clone(),
        prev_atom_gforce=torch.zeros_like(base.ref_positions),
        prev_cell_gforce=torch.zeros_like(base.cell_dof),
    )


def _dot(atoms_a: Tensor, atoms_b: Tensor, cell_a: Tensor, cell_b: Tensor, batch: Tensor, n: int) -> Tensor:
    """(B,) per-structure dot products of two vectors split into atom rows (N, 3) and cell rows (B, 3, 3)."""
    return segment_sum((atoms_a * atoms_b).sum(1), batch, n) + (cell_a * cell_b).sum((1, 2))


def _remember(state: LbfgsState, config: LbfgsConfig) -> LbfgsState:
    """The history with the last step's pair added (newest first) for every structure that has taken a step."""
    n, b = state.n_systems, state.batch
    ga, gc = state.atom_gforce, state.cell_gforce
    assert ga is not None and gc is not None  # set by filter_forces
    s_a, s_c = state.ref_positions - state.prev_positions, state.cell_dof - state.prev_cell_dof
    y_a, y_c = state.prev_atom_gforce - ga, state.prev_cell_gforce - gc
    ys = _dot(y_a, s_a, y_c, s_c, b, n)
    take = state.n_steps > 0
    if config.curvature_check:
        take = take & (ys > 1e-12 * torch.sqrt(_dot(s_a, s_a, s_c, s_c, b, n) * _dot(y_a, y_a, y_c, y_c, b, n)))
    # a pair without any change (a structure that did not move) carries no curvature: never divide by zero
    take = take & (ys != 0) & torch.isfinite(ys)
    if not bool(take.any()):
        return state
    rho = torch.where(take, 1.0 / torch.where(ys != 0, ys, torch.ones_like(ys)), torch.zeros_like(ys))

    def push(hist: Tensor, new: Tensor, mask: Tensor) -> Tensor:
        shifted = torch.cat([new.unsqueeze(1), hist[:, :-1]], dim=1)
        return torch.where(mask.view(-1, *([1] * (hist.ndim - 1))), shifted, hist)

    ta = take[b]
    return dataclasses.replace(
        state, s_atoms=push(state.s_atoms, s_a, ta), y_atoms=push(state.y_atoms, y_a, ta),
        s_cell=push(state.s_cell, s_c, take), y_cell=push(state.y_cell, y_c, take),
        rho=push(state.rho, rho, take),
        n_pairs=torch.where(take, torch.clamp(state.n_pairs + 1, max=config.memory), state.n_pairs))


def lbfgs_direction(state: LbfgsState, config: LbfgsConfig) -> tuple[Tensor, Tensor]:
    """``-H g`` of every structure by the two-loop recursion: (N, 3) atom rows and (B, 3, 3) cell rows."""
    n, b = state.n_systems, state.batch
    assert state.atom_gforce is not None and state.cell_gforce is not None  # set by filter_forces
    q_a, q_c = -state.atom_gforce, -state.cell_gforce
    depth = int(state.n_pairs.max()) if n else 0
    coef = []
    for j in range(depth):  # newest to oldest
        valid = state.n_pairs > j
        a_j = state.rho[:, j] * _dot(state.s_atoms[:, j], q_a, state.s_cell[:, j], q_c, b, n)
        a_j = torch.where(valid, a_j, torch.zeros_like(a_j))
        q_a = q_a - a_j[b, None] * state.y_atoms[:, j]
        q_c = q_c - a_j[:, None, None] * state.y_cell[:, j]
        coef.append(a_j)
    z_a, z_c = q_a / config.alpha, q_c / config.alpha
    for j in reversed(range(depth)):  # oldest to newest
        valid = state.n_pairs > j
        beta = state.rho[:, j] * _dot(state.y_atoms[:, j], z_a, state.y_cell[:, j], z_c, b, n)
        c = torch.where(valid, coef[j] - beta, torch.zeros_like(beta))
        z_a = z_a + c[b, None] * state.s_atoms[:, j]
        z_c = z_c + c[:, None, None] * state.s_cell[:, j]
    return -z_a, -z_c


def lbfgs_update(state: LbfgsState, config: LbfgsConfig = LbfgsConfig()) -> LbfgsState:
    """One L-BFGS step of every structure from its generalised forces; returns the moved (unevaluated) state."""
    if state.atom_gforce is None:
        state = filter_forces(state)
    state = _remember(state, config)
    n, b = state.n_systems, state.batch
    p_a, p_c = lbfgs_direction(state, config)
    assert state.atom_gforce is not None and state.cell_gforce is not None  # set by filter_forces
    p_a = p_a * state.movable
    p_c = torch.where(state.relax_cell[:, None, None], p_c, torch.zeros_like(p_c))
    # ASE's determine_step: the longest row (an atom, or a row of the cell's degrees of freedom) moves at most maxstep
    longest = torch.zeros(n, dtype=DTYPE, device=state.device).scatter_reduce_(0, b, p_a.norm(dim=1), "amax")
    longest = torch.maximum(longest, p_c.norm(dim=2).amax(dim=1))
    scale = torch.where(longest >= config.maxstep, config.maxstep / longest.clamp_min(1e-300),
                        torch.ones_like(longest)) * config.damping
    moved = dataclasses.replace(
        state, prev_positions=state.ref_positions, prev_cell_dof=state.cell_dof,
        prev_atom_gforce=state.atom_gforce, prev_cell_gforce=state.cell_gforce,
        ref_positions=state.ref_positions + scale[b, None] * p_a,
        cell_dof=state.cell_dof + scale[:, None, None] * p_c,
        n_steps=state.n_steps + 1, **UNEVALUATED)
    return apply_dofs(moved)


__all__ = ["LbfgsConfig", "LbfgsState", "lbfgs_direction", "lbfgs_init", "lbfgs_update"]
