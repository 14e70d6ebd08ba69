"""matfunnel's own potentials (our CHGNet, our MatRIS, any registered name) as torch-sim ``ModelInterface``s.

torch-sim has no CHGNet of its own; with this, torch-sim's ``optimize``, ``integrate`` and ``static`` (and
atomate2's TorchSim makers, which take any ``ModelInterface``) run our batched CHGNet::

    import torch_sim as ts
    from matfunnel.potential.torchsim_export import torchsim_model

    model = torchsim_model("chgnet-0.3.0", device="cuda")
    final = ts.optimize(system=structures, model=model, optimizer=ts.Optimizer.fire,
                        init_kwargs={"cell_filter": ts.CellFilter.frechet})

Energies are eV, forces eV/A and stress eV/A^3 with ASE's sign (torch-sim's convention), in the state's
dtype. A structure the potential cannot evaluate gets NaN outputs (torch-sim has no per-structure errors).
"""

from __future__ import annotations

import torch

from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.potential.base import Potential

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as exc:  # pragma: no cover - torch-sim is an optional dependency
    raise ImportError("the torch-sim export needs torch-sim: pip install torch-sim-atomistic") from exc


class MatfunnelModel(ModelInterface):
    """A matfunnel :class:`~matfunnel.potential.base.Potential` behind torch-sim's ``ModelInterface``.

    Parameters
    ----------
    potential
        Any matfunnel potential (its batched ``evaluate`` does the work).
    dtype
        The dtype torch-sim states use with this model (outputs are cast to it).
    """

    def __init__(self, potential: Potential, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.potential = potential
        self._device = torch.device(potential.device)
        self._dtype = dtype
        self._compute_stress = True
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"
        self.cutoff = torch.tensor(float(getattr(potential, "cutoff", 6.0)))

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        """Energy (n_systems,), forces (n_atoms, 3) and stress (n_systems, 3, 3) of a torch-sim state."""
        n_atoms = torch.bincount(state.system_idx, minlength=state.n_systems)
        ev = self.potential.evaluate(state.atomic_numbers, state.positions.detach(),
                                     state.row_vector_cell.detach(), n_atoms)
        dt, dev = self._dtype, state.positions.device
        out = {"energy": ev.energy.to(dev, dt), "forces": ev.forces.to(dev, dt)}
        if ev.stress is not None:
            out["stress"] = (ev.stress / EV_A3_TO_GPA).to(dev, dt)
        return out


def torchsim_model(name: str = "chgnet-0.3.0", device: str = "cpu", dtype: torch.dtype = torch.float64,
                   **kwargs) -> MatfunnelModel:
    """The potential ``name`` (any matfunnel name, e.g. ``chgnet-0.3.0``, ``matris-10m-oam``) as a torch-sim model."""
    from matfunnel.potential import load_potential

    return MatfunnelModel(load_potential(name, device, **kwargs), dtype=dtype)
