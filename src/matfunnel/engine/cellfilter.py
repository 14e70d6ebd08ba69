"""The degrees of freedom every batched optimizer moves: ASE's ``FrechetCellFilter``, per structure.

* degrees of freedom: atom positions in the undeformed frame ``r_ref = r F^-T`` and ``X = exp_cell_factor *
  logm(F)`` for the cell, where ``F`` is the deformation gradient from the starting cell (``cell = cell0 F^T``);
  ``exp_cell_factor`` defaults to the number of atoms, ``scalar_pressure`` to 0;
* generalised forces (minus the gradient of the energy in these coordinates): ``f F`` on atoms; on the cell,
  the Frechet derivative of ``expm`` applied to ``virial F^-T``, divided by ``exp_cell_factor``;
* converged when the largest row norm of the generalised forces (the atoms' rows and the cell's 3 rows) is
  below ``fmax``, ASE's criterion.

:class:`FilterState` holds these variables and each structure's convergence settings; an optimizer's state
extends it with its own memory (FIRE's velocities, L-BFGS's history). With ``relax_cell=False`` a structure keeps
its cell (``F = 1``) and the atoms' coordinates are their Cartesian positions. Atoms or components held by
``movable`` (selective dynamics) get zero generalised force, as ASE's constraints give them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.engine.state import DTYPE, SystemState, atom_field, system_field, upgrade


@dataclass
class FilterState(SystemState):
    """:class:`SystemState` plus each structure's Frechet-filter variables and convergence settings."""

    ref_cell: Tensor = system_field(default=None)  # (B, 3, 3) starting cell
    ref_positions: Tensor = atom_field(default=None)  # (N, 3) positions in the undeformed frame
    cell_dof: Tensor = system_field(default=None)  # (B, 3, 3) exp_cell_factor * logm(F)
    n_steps: Tensor = system_field(default=None)  # (B,) long, optimizer steps taken
    exp_cell_factor: Tensor = system_field(default=None)  # (B,)
    relax_cell: Tensor = system_field(default=None)  # (B,) bool
    scalar_pressure: Tensor = system_field(default=None)  # (B,) eV/A^3
    fmax: Tensor = system_field(default=None)  # (B,)
    max_steps: Tensor = system_field(default=None)  # (B,) long
    movable: Tensor = atom_field(default=None)  # (N, 3) 1.0 where a Cartesian component may move (selective dynamics)
    # generalised forces at the current geometry (set by filter_forces)
    atom_gforce: Tensor | None = atom_field(default=None)  # (N, 3)
    cell_gforce: Tensor | None = system_field(default=None)  # (B, 3, 3)
    residual: Tensor | None = system_field(default=None)  # (B,) largest row norm


def per_system(value, n: int, dtype, device) -> Tensor:
    """A (B,) tensor from a scalar or per-structure values."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(n).clone() if t.ndim == 0 else t.clone()


def filter_init(
    state: SystemState,
    *,
    fmax: float | Tensor = 0.05,
    max_steps: int | Tensor = 500,
    relax_cell: bool | Tensor = True,
    exp_cell_factor: float | Tensor | None = None,
    scalar_pressure: float | Tensor = 0.0,
    movable: Tensor | np.ndarray | None = None,
) -> FilterState:
    """Filter variables for every structure of ``state`` (starting cell = current cell).

    ``scalar_pressure`` in GPa; ``exp_cell_factor`` defaults to the number of atoms of each structure.
    Per-structure values may be given as (B,) tensors. ``movable`` (N, 3) is 0 for the Cartesian force
    components that are held fixed (pymatgen's ``selective_dynamics``, ASE's ``FixAtoms``/``FixCartesian``):
    those components of the forces are zeroed before the filter, as ASE's constraints do, so a fixed atom
    only follows the cell's deformation.
    """
    n, dev = state.n_systems, state.device
    ecf = state.n_atoms.to(DTYPE) if exp_cell_factor is None else per_system(exp_cell_factor, n, DTYPE, dev)
    return upgrade(
        state, FilterState,
        ref_cell=state.cell.clone(),
        ref_positions=state.positions.clone(),
        cell_dof=torch.zeros(n, 3, 3, dtype=DTYPE, device=dev),
        n_steps=torch.zeros(n, dtype=torch.long, device=dev),
        exp_cell_factor=ecf,
        relax_cell=per_system(relax_cell, n, torch.bool, dev),
        scalar_pressure=per_system(scalar_pressure, n, DTYPE, dev) / EV_A3_TO_GPA,
        fmax=per_system(fmax, n, DTYPE, dev),
        max_steps=per_system(max_steps, n, torch.long, dev),
        movable=(torch.ones_like(state.positions) if movable is None
                 else torch.as_tensor(movable, dtype=DTYPE, device=dev).reshape(-1, 3)),
    )


def segment_sum(x: Tensor, batch: Tensor, n: int) -> Tensor:
    """(B,) sums of the per-atom values ``x`` (N,) over each structure's atoms."""
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, batch, x)


def expm_frechet(a: Tensor, e: Tensor) -> Tensor:
    """Frechet derivative of ``expm`` at ``a`` in direction ``e`` (batched 3x3), via the 6x6 block trick."""
    n = a.shape[0]
    m = torch.zeros(n, 6, 6, dtype=a.dtype, device=a.device)
    m[:, :3, :3] = a
    m[:, 3:, 3:] = a
    m[:, :3, 3:] = e
    return torch.linalg.matrix_exp(m)[:, :3, 3:]


def deformation_gradient(state: FilterState) -> Tensor:
    """(B, 3, 3) ``F = expm(X / exp_cell_factor)``."""
    return torch.linalg.matrix_exp(state.cell_dof / state.exp_cell_factor[:, None, None])


def filter_forces[S: FilterState](state: S) -> S:
    """Generalised (filter) forces and the convergence residual from ``state.forces``/``stress``."""
    if state.forces is None or state.stress is None:
        raise ValueError("evaluate the state (forces and stress) before filter_forces")
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


def apply_dofs[S: FilterState](state: S) -> S:
    """Cell and Cartesian positions from the degrees of freedom: ``cell = cell0 F^T``, ``r = r_ref F^T``."""
    F = deformation_gradient(state)
    Ft = F.transpose(1, 2)
    cell = torch.bmm(state.ref_cell, Ft)
    pos = torch.bmm(state.ref_positions.unsqueeze(1), Ft[state.batch]).squeeze(1)
    return dataclasses.replace(state, cell=cell, positions=pos)


#: the fields that describe an evaluation of the current geometry: cleared when an optimizer moves a structure
UNEVALUATED: dict[str, Any] = {"energy": None, "forces": None, "stress": None, "magmoms": None, "eval_error": None,
               "min_distance": None, "atom_gforce": None, "cell_gforce": None, "residual": None}


__all__ = ["UNEVALUATED", "FilterState", "apply_dofs", "deformation_gradient", "expm_frechet", "filter_forces",
           "filter_init", "per_system", "segment_sum"]
