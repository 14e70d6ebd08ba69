"""Any torch-sim ``ModelInterface`` as a matfunnel :class:`~matfunnel.potential.base.Potential`.

The batched engine's tensors (concatenated atoms, row-vector cells, atoms per structure) become one
torch-sim ``SimState`` (column-vector cells), the model runs once per batch, and its outputs come back in
matfunnel's units: energy eV, forces eV/A, stress GPa. torch-sim's stress (eV/A^3) has ASE's sign (positive
is tensile), which is matfunnel's, so only the unit changes; the tests check it against the model's own ASE
calculator.

Batches are packed by an item count that follows the model's ``memory_scales_with``: atoms for
``"n_atoms"``, otherwise the estimated directed edges within the model's cutoff (proportional to torch-sim's
``n_atoms_x_density``). Bytes per item are measured once per device like matfunnel's own models
(:mod:`matfunnel.potential.calibration`), when the potential was built from a registry name.

A batch that raises is split in halves until the failing structures are alone; each gets its own error and
the rest are evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from pymatgen.core import Structure

from matfunnel.common.errors import StructureError
from matfunnel.common.structures import as_structure
from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.potential import calibration
from matfunnel.potential.base import Evaluation, Potential
from matfunnel.potential.batching import ItemBudget, pack_greedy
from matfunnel.potential.validate import site_numbers

#: built-in bytes per item until this device is measured (deliberately large: equivariant models)
DEFAULT_BYTES_PER_ITEM = {"cpu": 40_000, "cuda": 20_000}


class TorchSimPotential(calibration.MemoryCalibrated, ItemBudget, Potential):
    """A torch-sim model behind matfunnel's batched ``evaluate`` / ``predict``.

    Parameters
    ----------
    model
        A torch-sim ``ModelInterface`` (``forward(state) -> {"energy", "forces", "stress"}``).
    name
        The registry name (recorded in every result; used to rebuild the model for CPU calibration).
    name_kwargs
        The keyword arguments the registry name was loaded with (JSON values).
    memory_budget
        Bytes one batch may use (default: :func:`calibration.default_budget`).
    calibrate
        ``None``/``True`` measure bytes per item on this device once (cached; needs a registry name),
        ``False`` keeps the built-in estimate.
    package
        Distribution that provides the model, for the provenance record.
    weights_file
        The model's weights file, for the provenance checksum.
    max_atoms
        Atoms per batch at most (default: from the device, see :class:`~matfunnel.potential.batching.ItemBudget`).
    """

    code_path = "torchsim"

    def __init__(self, model, *, name: str = "torchsim", name_kwargs: dict | None = None,
                 memory_budget: int | None = None, calibrate: bool | None = None, package: str | None = None,
                 weights_file: str | None = None, max_atoms: int | None = None):
        self.model = model
        self.name = name
        self.name_kwargs = dict(name_kwargs or {})
        self.package = package or type(model).__module__.split(".")[0]
        self.weights_file = weights_file
        self.device = str(model.device)
        self.dtype = model.dtype
        self.cutoff = model_cutoff(model)
        self.scaling = getattr(model, "memory_scales_with", "n_atoms_x_density")
        self.graph_cutoffs = (self.cutoff, 0.0)
        self.memory_budget = int(memory_budget or calibration.default_budget(self.device))
        self.bytes_per_item = DEFAULT_BYTES_PER_ITEM["cuda" if self.device.startswith("cuda") else "cpu"]
        self._max_atoms = max_atoms
        self.max_edges = self.max_angles = None
        self.calibration: dict | None = None
        self._set_budget()
        if calibrate is not False and name != "torchsim" and ":" not in name:
            self.calibrate(force=bool(calibrate))

    @classmethod
    def from_factory(cls, make: Callable, *, device: str, name: str, **kwargs) -> TorchSimPotential:
        """Build from ``make(**kwargs)`` (a ``device`` keyword is passed when ``make`` takes one)."""
        import inspect

        adapter_kw = {k: kwargs.pop(k) for k in ("memory_budget", "calibrate", "max_atoms") if k in kwargs}
        params: Mapping[str, inspect.Parameter]
        try:
            params = inspect.signature(make).parameters
        except (TypeError, ValueError):
            params = {}
        call_kw = dict(kwargs)
        if "device" in params:
            call_kw["device"] = device
        if "compute_stress" in params:  # the cell filter needs stress: ask for it unless the user said no
            call_kw.setdefault("compute_stress", True)
        return cls(make(**call_kw), name=name, name_kwargs=kwargs, **adapter_kw)

    # --- batching ---------------------------------------------------------------------------------------

    def work_estimate(self, n_atoms: int, volume: float) -> tuple[float, float]:
        """(items, 0): atoms for ``n_atoms`` scaling, else the estimated directed edges within the cutoff."""
        if self.scaling == "n_atoms":
            return float(n_atoms), 0.0
        rho = n_atoms / max(volume, 1e-6)
        return n_atoms * rho * 4.0 / 3.0 * math.pi * self.cutoff**3 + n_atoms, 0.0

    def plan_batches(self, n_atoms: list[int], volumes: list[float]) -> list[list[int]]:
        """Greedy batches under the item and atom budgets."""
        sizes = [self.work_estimate(n, v) for n, v in zip(n_atoms, volumes, strict=False)]
        return pack_greedy(n_atoms, sizes, self.too_big)

    def probe_spec(self):
        """How the CPU memory probe's child process rebuilds this model from its registry name."""
        from matfunnel.potential.memprobe import ProbeSpec

        return ProbeSpec("matfunnel.potential.registry:probe_potential",
                         {"name": self.name, "kwargs": self.name_kwargs},
                         target_bytes=int(min(2 << 30, self.memory_budget)))

    def _measure_memory(self):
        from matfunnel.potential import memprobe

        if self.device.startswith("cuda"):
            return memprobe.measure_cuda(self, target_bytes=int(min(8 << 30, self.memory_budget)))
        return memprobe.measure_cpu(self.probe_spec())

    def memory_probe(self, cell) -> int:
        """One forward (energy, forces, stress) of ``cell``; returns its items."""
        s = as_structure(cell)
        self._evaluate_many(*self._tensors([s]))
        return int(self.work_estimate(len(s), s.volume)[0])

    # --- evaluation -------------------------------------------------------------------------------------

    def _state(self, numbers, positions, cells, n_atoms):
        import torch_sim as ts
        from ase.data import atomic_masses

        dev, dt = torch.device(self.device), self.dtype
        z = numbers.to(dev).long()
        masses = torch.as_tensor(atomic_masses, dtype=dt, device=dev)[z]
        system_idx = torch.repeat_interleave(torch.arange(len(n_atoms), device=dev), n_atoms.to(dev))
        return ts.SimState(positions=positions.to(dev, dt), masses=masses,
                           cell=cells.to(dev, dt).transpose(-1, -2).contiguous(), pbc=True,
                           atomic_numbers=z, system_idx=system_idx)

    def _run(self, numbers, positions, cells, n_atoms):
        out = self.model(self._state(numbers, positions, cells, n_atoms))
        stress = out.get("stress")
        return (out["energy"].detach().double().reshape(-1), out["forces"].detach().double(),
                None if stress is None else stress.detach().double() * EV_A3_TO_GPA)

    def _evaluate_many(self, numbers, positions, cells, n_atoms):
        """(energy, forces, stress, errors) with failing structures isolated by bisection."""
        b = len(n_atoms)
        try:
            e, f, s = self._run(numbers, positions, cells, n_atoms)
            return e, f, s, [None] * b
        except Exception as exc:  # noqa: BLE001 - isolate the failing structure(s)
            if b == 1:
                n = int(n_atoms[0])
                nan = torch.full((1,), float("nan"), dtype=torch.float64)
                return (nan, torch.full((n, 3), float("nan"), dtype=torch.float64),
                        torch.full((1, 3, 3), float("nan"), dtype=torch.float64),
                        [f"{type(exc).__name__}: {str(exc)[:300]}"])
        half = b // 2
        split = int(n_atoms[:half].sum())
        parts = [self._evaluate_many(numbers[:split], positions[:split], cells[:half], n_atoms[:half]),
                 self._evaluate_many(numbers[split:], positions[split:], cells[half:], n_atoms[half:])]
        dev = parts[0][0].device
        return (torch.cat([p[0].to(dev) for p in parts]), torch.cat([p[1].to(dev) for p in parts]),
                torch.cat([p[2].to(dev) if p[2] is not None else
                           torch.full((len(p[3]), 3, 3), float("nan"), dtype=torch.float64, device=dev)
                           for p in parts]),
                parts[0][3] + parts[1][3])

    def evaluate(self, numbers, positions, cells, n_atoms, *, compute_stress: bool = True) -> Evaluation:
        """Energy, forces and stress of a concatenated batch (see :meth:`Potential.evaluate`)."""
        out_dev = positions.device
        e, f, s, errors = self._evaluate_many(numbers, positions, cells, n_atoms.cpu())
        starts = np.concatenate([[0], np.cumsum(n_atoms.cpu().numpy())])
        for k in range(len(errors)):  # a structure with non-finite outputs is that structure's failure
            if errors[k] is None and not (torch.isfinite(e[k]) and torch.isfinite(f[starts[k]:starts[k + 1]]).all()
                                          and (s is None or torch.isfinite(s[k]).all())):
                errors[k] = "the potential returned NaN/inf"
        return Evaluation(e.to(out_dev), f.to(out_dev), s.to(out_dev) if (compute_stress and s is not None) else None,
                          None, errors if any(errors) else None)

    def _tensors(self, structs: list[Structure]):
        numbers = torch.from_numpy(np.concatenate([site_numbers(s) for s in structs]).astype(np.int64))
        positions = torch.from_numpy(np.concatenate([s.cart_coords for s in structs]))
        cells = torch.from_numpy(np.stack([s.lattice.matrix for s in structs]))
        return numbers, positions, cells, torch.tensor([len(s) for s in structs])

    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        results: list[dict] = [{}] * len(structures)
        batches = self.plan_batches([len(s) for s in structures], [s.volume for s in structures])
        for idx in batches:
            ev = self.evaluate(*self._tensors([structures[k] for k in idx]))
            starts = np.concatenate([[0], np.cumsum([len(structures[k]) for k in idx])])
            for bpos, j in enumerate(idx):
                err = ev.errors[bpos] if ev.errors else None
                if err is not None:
                    exc = StructureError(labels[j], f"{self.name} failed: {err}")
                    if errors == "raise":
                        raise exc
                    results[j] = {"error": str(exc)}
                    continue
                lo, hi = starts[bpos], starts[bpos + 1]
                results[j] = {"energy": float(ev.energy[bpos]), "forces": ev.forces[lo:hi].cpu().numpy(),
                              "stress": (ev.stress[bpos].cpu().numpy() if ev.stress is not None
                                         else np.full((3, 3), np.nan)),
                              "magmoms": np.zeros(hi - lo)}
        return results


def model_cutoff(model) -> float:
    """The model's neighbour cutoff in Å for batch sizing.

    torch-sim models name it ``cutoff`` (SevenNet, MACE) or, with separate two- and three-body cutoffs,
    ``two_body_cutoff`` (MatterSim); 6 Å where neither is given.
    """
    for attr in ("cutoff", "two_body_cutoff"):
        value = getattr(model, attr, None)
        if value is not None:
            return float(value.item() if hasattr(value, "item") else value)
    return 6.0

