"""``matris-*`` potentials: matfunnel's batched MatRIS with weights from a MatRIS checkpoint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import torch
from pymatgen.core import Structure

from matfunnel.common.errors import StructureError
from matfunnel.potential import calibration
from matfunnel.potential.base import Potential
from matfunnel.potential.batching import ItemBudget
from matfunnel.potential.matris import triton_ops
from matfunnel.potential.matris.config import MatrisConfig
from matfunnel.potential.matris.graph import MatrisGraph, build_matris_graph
from matfunnel.potential.matris.model import MatrisModel
from matfunnel.potential.matris.weights import load_checkpoint

#: built-in memory model, used until this device is calibrated: bytes per work item (directed edge or angle) of
#: one float32 forward + backward = FIXED + PER_LAYER * layers * width / 128, on the safe side of what the
#: CPU (torch path) measured: 9-14 kB for 2 layers of width 32, 42-56 kB for 2 layers of width 128, 260 kB
#: for the published 10-layer models (benchmarks/NOTES.md, "Memory")
BYTES_FIXED, BYTES_PER_LAYER = 2_000, 26_000
#: the probe cells' peak: at most this share of the free memory, and at most PROBE_MAX_BYTES
PROBE_SHARE, PROBE_MAX_BYTES = 0.25, {"cpu": 2 << 30, "cuda": 8 << 30}


def estimated_bytes_per_item(cfg: MatrisConfig, dtype: torch.dtype = torch.float32) -> int:
    """The built-in memory model of a configuration (see ``BYTES_PER_LAYER``)."""
    width = max(cfg.node_feat_dim, cfg.edge_feat_dim, cfg.three_body_feat_dim)
    per = BYTES_FIXED + BYTES_PER_LAYER * cfg.num_layers * width / 128
    return int(per * (2 if dtype == torch.float64 else 1))


class MatrisPotential(calibration.MemoryCalibrated, ItemBudget, Potential):
    """Batched MatRIS.

    ``model`` names a published checkpoint (``"10m-oam"``, ``"10m-mp"``, ...); ``checkpoint`` is the
    file (default ``~/.cache/matris/<release file>``), or pass a built :class:`MatrisModel` as
    ``module``.

    Batches are packed by estimated work items (directed edges + angles) against ``memory_budget`` bytes, at
    the bytes per item measured on this device (once, cached: :mod:`matfunnel.potential.calibration`;
    ``calibrate=False`` keeps the built-in estimate), or by explicit ``max_atoms`` / ``max_edges`` (directed)
    / ``max_angles`` per batch.
    """

    def __init__(
        self,
        device: str = "cpu",
        *,
        model: str = "10m-oam",
        checkpoint: str | None = None,
        module: MatrisModel | None = None,
        dtype: torch.dtype | str = torch.float32,
        memory_budget: int | None = None,
        max_atoms: int | None = None,
        max_edges: int | None = None,
        max_angles: int | None = None,
        calibrate: bool | None = None,
    ):
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        self.name = f"matris-{model}"
        self.device = device
        self.dtype = dtype
        net = module if module is not None else load_checkpoint(checkpoint, model=model)
        self.model = net.to(device=device, dtype=dtype).eval()
        self.supported_elements = frozenset(range(1, self.model.cfg.max_num_elements + 1))
        self.graph_cutoffs = (self.model.cfg.pairwise_cutoff, self.model.cfg.three_body_cutoff)
        gpu = str(device).startswith("cuda")
        self.code_path = "triton" if gpu and dtype == torch.float32 and triton_ops.available() else "torch"
        self.memory_budget = int(memory_budget or calibration.default_budget(device))
        self.bytes_per_item = estimated_bytes_per_item(self.model.cfg, dtype)
        self._max_atoms = max_atoms
        self.max_edges = max_edges
        self.max_angles = max_angles
        #: the calibration record in use (None: the built-in estimate)
        self.calibration: dict | None = None
        self._set_budget()
        if calibrate is not False:
            self.calibrate(force=bool(calibrate))

    # ---- memory model ------------------------------------------------------------------------
    def calibration_key(self) -> str:
        """Also keyed by the configuration: a model's memory depends on its widths and depth, not its weights."""
        digest = hashlib.sha1(json.dumps(asdict(self.model.cfg), sort_keys=True).encode()).hexdigest()[:10]
        return f"{super().calibration_key()}:cfg-{digest}"

    def probe_spec(self):
        """How the CPU memory probe's child process builds this potential (random weights, same config)."""
        from matfunnel.potential.memprobe import ProbeSpec

        return ProbeSpec(f"{__name__}:_probe_potential",
                         {"config": asdict(self.model.cfg), "dtype": str(self.dtype).split(".")[-1]})

    def _probe_target(self) -> int:
        """Bytes the larger probe may take: ``PROBE_SHARE`` of the free memory, at most ``PROBE_MAX_BYTES``."""
        gpu = str(self.device).startswith("cuda")
        if gpu:
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        else:
            import psutil

            free = psutil.virtual_memory().available
        return int(min(PROBE_SHARE * free, PROBE_MAX_BYTES["cuda" if gpu else "cpu"]))

    def _measure_memory(self) -> list[tuple[int, int]]:
        """Probe sizes follow a memory target: a 10-layer model costs ~260 kB per item, chgnet 7 kB."""
        from matfunnel.potential import memprobe

        if str(self.device).startswith("cuda"):
            return memprobe.measure_cuda(self, target_bytes=self._probe_target())
        spec = self.probe_spec()
        spec.target_bytes = self._probe_target()
        return memprobe.measure_cpu(spec)

    def memory_probe(self, cell) -> int:
        """One forward + backward of ``cell``; returns its work items (directed edges + angles)."""
        g = self.graph([cell])
        out = self.model(g)
        out["forces"].sum().item()
        return 2 * g.n_edges + g.n_angles

    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        n_atoms = [len(s) for s in structures]
        volumes = [abs(float(s.lattice.volume)) for s in structures]
        results: list[dict | None] = [None] * len(structures)
        for idx in self.plan_batches(n_atoms, volumes):
            self._run_batch([structures[k] for k in idx], [labels[k] for k in idx], idx, results, errors)
        return results  # type: ignore[return-value]

    def _fail(self, label: str, problem: str, errors: str) -> dict:
        err = StructureError(label, problem)
        if errors == "raise":
            raise err
        return {"error": str(err)}

    def graph(self, structs: list[Structure]) -> MatrisGraph:
        """The MatRIS graphs of ``structs`` as one batch on this potential's device."""
        cfg = self.model.cfg
        dev = self.device
        frac = torch.from_numpy(np.concatenate([s.frac_coords for s in structs])).to(dev)
        lat = torch.from_numpy(np.stack([s.lattice.matrix for s in structs])).to(dev)
        z = torch.from_numpy(np.concatenate([np.asarray(s.atomic_numbers, dtype=np.int64) for s in structs])).to(dev)
        n = torch.tensor([len(s) for s in structs], dtype=torch.long, device=dev)
        return build_matris_graph(frac, lat, z, n, pairwise_cutoff=cfg.pairwise_cutoff,
                                  three_body_cutoff=cfg.three_body_cutoff)

    def _run_batch(self, structs, labels, idx, results, errors) -> None:
        g = self.graph(structs)
        deg = g.degree()
        isolated = torch.zeros(len(structs), dtype=torch.long, device=deg.device).index_add_(
            0, g.batch, (deg == 0).long()).tolist()
        if any(isolated):
            keep = []
            for k, c in enumerate(isolated):
                if c:
                    results[idx[k]] = self._fail(
                        labels[k], f"{c} atom(s) have no neighbour within {self.model.cfg.pairwise_cutoff} A", errors)
                else:
                    keep.append(k)
            if keep:
                self._run_batch([structs[k] for k in keep], [labels[k] for k in keep], [idx[k] for k in keep],
                                results, errors)
            return
        out = self.model(g)
        energy = out["energy"].double().cpu().numpy()
        forces = out["forces"].double().cpu().numpy()
        stress = out["stress"].double().cpu().numpy()
        magmoms = out["magmoms"].double().cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in structs])])
        for k in range(len(structs)):
            lo, hi = offsets[k], offsets[k + 1]
            res = {"energy": float(energy[k]), "forces": forces[lo:hi], "stress": stress[k], "magmoms": magmoms[lo:hi]}
            if not (np.isfinite(res["energy"]) and np.all(np.isfinite(res["forces"]))
                    and np.all(np.isfinite(res["stress"]))):
                res = self._fail(labels[k], "the potential returned NaN/inf", errors)
            results[idx[k]] = res


def _probe_potential(config: dict, dtype: str) -> MatrisPotential:
    """The CPU memory probe's potential: the configuration with random weights, uncalibrated, unlimited budget."""
    model = MatrisModel(MatrisConfig.from_dict(config))
    return MatrisPotential("cpu", module=model, dtype=dtype, calibrate=False, memory_budget=1 << 40)
