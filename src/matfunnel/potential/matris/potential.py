"""``matris-*`` potentials: matfunnel's batched MatRIS with weights from a MatRIS checkpoint."""

from __future__ import annotations

import numpy as np
import torch
from pymatgen.core import Structure

from matfunnel.potential.base import Potential
from matfunnel.potential.batching import pack_greedy
from matfunnel.potential.errors import StructureError
from matfunnel.potential.matris.graph import build_matris_graph, estimate_sizes
from matfunnel.potential.matris.model import MatrisModel
from matfunnel.potential.matris.weights import load_checkpoint


class MatrisPotential(Potential):
    """Batched MatRIS. ``model`` names a published checkpoint (``"10m-oam"``, ``"10m-mp"``, ...);
    ``checkpoint`` is the file (default ``~/.cache/matris/<release file>``), or pass a built
    :class:`MatrisModel` as ``module``."""

    def __init__(
        self,
        device: str = "cpu",
        *,
        model: str = "10m-oam",
        checkpoint: str | None = None,
        module: MatrisModel | None = None,
        dtype: torch.dtype | str = torch.float32,
        max_atoms: int | None = None,
        max_edges: int | None = None,
        max_angles: int | None = None,
    ):
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        self.name = f"matris-{model}"
        self.device = device
        self.dtype = dtype
        net = module if module is not None else load_checkpoint(checkpoint, model=model)
        self.model = net.to(device=device, dtype=dtype).eval()
        self.supported_elements = frozenset(range(1, self.model.cfg.max_num_elements + 1))
        gpu = str(device).startswith("cuda")
        self.max_atoms = max_atoms or (20_000 if gpu else 2_000)
        self.max_edges = max_edges or (2_000_000 if gpu else 150_000)
        self.max_angles = max_angles or (2_000_000 if gpu else 150_000)

    def plan_batches(self, n_atoms: list[int], volumes: list[float]) -> list[list[int]]:
        cfg = self.model.cfg
        est = estimate_sizes(n_atoms, volumes, cfg.pairwise_cutoff, cfg.three_body_cutoff)
        return pack_greedy(n_atoms, est, lambda n, e, a: n > self.max_atoms or e > self.max_edges
                           or a > self.max_angles)

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

    def graph(self, structs: list[Structure]):
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
