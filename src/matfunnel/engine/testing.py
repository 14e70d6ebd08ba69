"""A small analytic potential for engine tests and benchmarks (exact, fast, controllable faults).

:class:`PairPotential` is a smoothly tapered Lennard-Jones pair potential with forces and stress
from autograd, implemented both as ``evaluate`` (tensors, what the batched engine calls) and
``_predict_checked`` (what the ASE calculator path calls), so the two engines can be compared to
machine precision. Fault injection: structures containing ``nan_element`` get NaN energies,
``explode_element`` multiplies forces by 1e5, and pairs of ``collapse_element`` atoms attract
without repulsion (they run into each other).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.potential.base import Evaluation, Potential


class PairPotential(Potential):
    """A tapered Lennard-Jones pair potential with optional injected faults (NaN, exploding or collapsing atoms)."""

    name = "pair-lj"

    def __init__(self, sigma: float = 2.3, epsilon: float = 0.05, cutoff: float = 5.0, *,
                 nan_element: int | None = None, explode_element: int | None = None,
                 collapse_element: int | None = None, device: str = "cpu"):
        self.sigma, self.epsilon, self.cutoff = sigma, epsilon, cutoff
        self.nan_element, self.explode_element, self.collapse_element = nan_element, explode_element, collapse_element
        self.device = device
        self.n_calls = 0

    def _one(self, z: torch.Tensor, pos: torch.Tensor, cell: torch.Tensor):
        eye = torch.eye(3, dtype=torch.float64, device=pos.device)
        with torch.enable_grad():
            strain = torch.zeros(3, 3, dtype=torch.float64, device=pos.device, requires_grad=True)
            x = pos.clone().requires_grad_(True)
            lat = cell @ (eye + strain)
            r = x @ (eye + strain)
            inv_heights = torch.linalg.inv(cell).norm(dim=0)
            n_img = [int(math.ceil(self.cutoff * float(h))) for h in inv_heights]
            imgs = torch.tensor(list(itertools.product(*[range(-k, k + 1) for k in n_img])),
                                dtype=torch.float64, device=pos.device)
            d = r[None, :, None, :] - r[:, None, None, :] + (imgs @ lat)[None, None]
            dist = d.norm(dim=-1)
            mask = (dist > 1e-8) & (dist < self.cutoff)
            dd = torch.where(mask, dist, torch.ones_like(dist))
            sr6 = (self.sigma / dd) ** 6
            taper = (1 - (dd / self.cutoff) ** 2) ** 2
            pair = 4 * self.epsilon * (sr6 * sr6 - sr6) * taper
            if self.collapse_element is not None:
                cz = z == self.collapse_element
                both = (cz[:, None] & cz[None, :])[:, :, None]
                pair = torch.where(both, -2.0 / dd * taper, pair)
            e = 0.5 * torch.where(mask, pair, torch.zeros_like(pair)).sum()
            gx, gs = torch.autograd.grad(e, [x, strain])
        f = -gx
        s = gs / torch.linalg.det(cell).abs() * EV_A3_TO_GPA
        if self.explode_element is not None and bool((z == self.explode_element).any()):
            f = f * 1e5
        if self.nan_element is not None and bool((z == self.nan_element).any()):
            e = e * float("nan")
        return e.detach(), f.detach(), s.detach()

    def evaluate(self, numbers, positions, cells, n_atoms, *, compute_stress=True) -> Evaluation:
        """Energies, forces and stresses of a batch (one structure at a time, by autograd)."""
        self.n_calls += 1
        counts = [int(c) for c in n_atoms.tolist()]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
        es, fs, ss = [], [], []
        for b, (lo, n) in enumerate(zip(starts, counts, strict=True)):
            e, f, s = self._one(numbers[lo:lo + n], positions[lo:lo + n].double(), cells[b].double())
            es.append(e)
            fs.append(f)
            ss.append(s)
        return Evaluation(torch.stack(es), torch.cat(fs), torch.stack(ss) if compute_stress else None,
                          torch.zeros(sum(counts), dtype=torch.float64, device=positions.device), None)

    def _predict_checked(self, structures, labels, errors):
        out = []
        for s in structures:
            e, f, st = self._one(torch.tensor(s.atomic_numbers), torch.tensor(s.cart_coords, dtype=torch.float64),
                                 torch.tensor(s.lattice.matrix, dtype=torch.float64))
            out.append({"energy": float(e), "forces": f.numpy(), "stress": st.numpy(), "magmoms": np.zeros(len(s))})
        return out


class CosinePotential(Potential):
    """Independent atoms in an egg-box ``E = sum k g^2/(4 pi^2) (1 - cos(2 pi r / g))`` (no stress).

    Fully vectorised and nearly free: for thermostat statistics (kinetic-energy distributions do not
    depend on the potential) and plumbing tests. Harmonic with spring constant ``k`` near the grid.
    """

    name = "cosine"

    def __init__(self, k: float = 1.0, grid: float = 2.0, device: str = "cpu"):
        self.k, self.grid, self.device = k, grid, device

    def evaluate(self, numbers, positions, cells, n_atoms, *, compute_stress=True) -> Evaluation:
        """Energies and forces of a batch (zero stress), vectorised over all atoms."""
        w = 2 * math.pi / self.grid
        x = positions.double()
        batch = torch.repeat_interleave(torch.arange(n_atoms.shape[0], device=x.device), n_atoms)
        e_atom = (self.k / w**2 * (1 - torch.cos(w * x))).sum(1)
        energy = torch.zeros(n_atoms.shape[0], dtype=torch.float64, device=x.device).index_add_(0, batch, e_atom)
        forces = -self.k / w * torch.sin(w * x)
        stress = torch.zeros(n_atoms.shape[0], 3, 3, dtype=torch.float64, device=x.device)
        return Evaluation(energy, forces, stress if compute_stress else None, None, None)

    def _predict_checked(self, structures, labels, errors):
        out = []
        for s in structures:
            ev = self.evaluate(torch.tensor(s.atomic_numbers), torch.tensor(s.cart_coords),
                               torch.tensor(s.lattice.matrix)[None], torch.tensor([len(s)]))
            out.append({"energy": float(ev.energy[0]), "forces": ev.forces.numpy(), "stress": ev.stress[0].numpy(),
                        "magmoms": np.zeros(len(s))})
        return out
