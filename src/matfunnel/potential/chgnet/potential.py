"""``chgnet-0.3.0``: matfunnel's own batched CHGNet with the official 0.3.0 weights."""

from __future__ import annotations

import numpy as np
import torch
from pymatgen.core import Structure

from matfunnel.potential.base import Potential
from matfunnel.potential.chgnet.graph import build_graph, estimate_sizes
from matfunnel.potential.chgnet.weights import load_checkpoint
from matfunnel.potential.errors import StructureError


class ChgnetPotential(Potential):
    """Batched CHGNet; numbers match ``chgnet-reference`` (float32 default, float64 selectable).

    Structures are packed into batches by an estimate of their atoms, directed edges and angles
    (``max_atoms``, ``max_edges``, ``max_angles`` per batch). A structure too big for one batch
    runs alone with the edge/angle work split into chunks of ``chunk`` items whose activations
    are recomputed during the backward pass, so memory stays bounded for 10k-atom cells.
    """

    name = "chgnet-0.3.0"

    def __init__(
        self,
        device: str = "cpu",
        *,
        version: str = "0.3.0",
        dtype: torch.dtype | str = torch.float32,
        checkpoint: str | None = None,
        max_atoms: int | None = None,
        max_edges: int | None = None,
        max_angles: int | None = None,
        chunk: int | None = None,
    ):
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        self.device = device
        self.dtype = dtype
        self.model = load_checkpoint(checkpoint, version=version).to(device=device, dtype=dtype)
        self.supported_elements = frozenset(range(1, self.model.cfg.max_num_elements + 1))
        gpu = str(device).startswith("cuda")
        self.max_atoms = max_atoms or (20_000 if gpu else 4_000)
        self.max_edges = max_edges or (3_000_000 if gpu else 300_000)
        self.max_angles = max_angles or (3_000_000 if gpu else 300_000)
        self.chunk = chunk or (1_000_000 if gpu else 100_000)

    # ---- batching --------------------------------------------------------------------------
    def plan_batches(self, n_atoms: list[int], volumes: list[float]) -> list[list[int]]:
        """Greedy batches (lists of indices, input order) under the atom/edge/angle budgets."""
        cfg = self.model.cfg
        est = estimate_sizes(n_atoms, volumes, cfg.atom_graph_cutoff, cfg.bond_graph_cutoff)
        batches, cur, ca, ce, cg = [], [], 0, 0.0, 0.0
        for k, (n, (e, a)) in enumerate(zip(n_atoms, est)):
            if cur and (ca + n > self.max_atoms or ce + e > self.max_edges or cg + a > self.max_angles):
                batches.append(cur)
                cur, ca, ce, cg = [], 0, 0.0, 0.0
            cur.append(k)
            ca, ce, cg = ca + n, ce + e, cg + a
        if cur:
            batches.append(cur)
        return batches

    def _predict_checked(self, structures: list[Structure], labels: list[str], errors: str) -> list[dict]:
        n_atoms = [len(s) for s in structures]
        lattices = [s.lattice.matrix for s in structures]
        volumes = [abs(float(np.linalg.det(m))) for m in lattices]
        results: list[dict | None] = [None] * len(structures)
        for idx in self.plan_batches(n_atoms, volumes):
            self._run_batch([structures[k] for k in idx], [labels[k] for k in idx], idx, results, errors)
        return results  # type: ignore[return-value]

    def _arrays(self, structs: list[Structure]):
        frac = torch.from_numpy(np.concatenate([s.frac_coords for s in structs]))
        lat = torch.from_numpy(np.stack([s.lattice.matrix for s in structs]))
        z = torch.from_numpy(np.concatenate([np.asarray(s.atomic_numbers, dtype=np.int64) for s in structs]))
        n = torch.tensor([len(s) for s in structs], dtype=torch.long)
        dev = self.device
        return frac.to(dev), lat.to(dev), z.to(dev), n.to(dev)

    def _fail(self, label: str, problem: str, errors: str) -> dict:
        err = StructureError(label, problem)
        if errors == "raise":
            raise err
        return {"error": str(err)}

    def _run_batch(self, structs, labels, idx, results, errors) -> None:
        cfg = self.model.cfg
        graph = build_graph(*self._arrays(structs), cutoff=cfg.atom_graph_cutoff, bond_cutoff=cfg.bond_graph_cutoff)
        deg = graph.degree()
        isolated = torch.zeros(len(structs), dtype=torch.long, device=deg.device).index_add_(
            0, graph.batch, (deg == 0).long()).tolist()
        if any(isolated):
            keep = []
            for k, c in enumerate(isolated):
                if c:
                    results[idx[k]] = self._fail(
                        labels[k], f"{c} atom(s) have no neighbour within {cfg.atom_graph_cutoff} A", errors)
                else:
                    keep.append(k)
            if keep:
                self._run_batch([structs[k] for k in keep], [labels[k] for k in keep], [idx[k] for k in keep],
                                results, errors)
            return
        big = graph.n_edges * 2 > self.max_edges or graph.n_angles > self.max_angles
        out = self.model(graph, chunk=self.chunk if big else None)
        energy = out["energy"].double().cpu().numpy()
        forces = out["forces"].double().cpu().numpy()
        stress = out["stress"].double().cpu().numpy()
        magmoms = out["magmoms"].double().cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in structs])])
        for k in range(len(structs)):
            lo, hi = offsets[k], offsets[k + 1]
            res = {"energy": float(energy[k]), "forces": forces[lo:hi], "stress": stress[k],
                   "magmoms": magmoms[lo:hi]}
            if not (np.isfinite(res["energy"]) and np.all(np.isfinite(res["forces"]))
                    and np.all(np.isfinite(res["stress"]))):
                res = self._fail(labels[k], "the potential returned NaN/inf", errors)
            results[idx[k]] = res
