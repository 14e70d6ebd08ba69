"""Batched MLIP makers: one job evaluates or relaxes a whole list of structures."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from jobflow import Maker, job
from pymatgen.core import Structure

from matfunnel.cache import active_cache, content_key, structure_fingerprint
from matfunnel.engine import relax_batched, relax_structures
from matfunnel.potential import DEFAULT_POTENTIAL, load_potential
from matfunnel.potential.validate import structure_label


def _labels(structures, labels):
    return list(labels) if labels is not None else [structure_label(s, i) for i, s in enumerate(structures)]


@dataclass
class RelaxMaker(Maker):
    """Relax a batch of structures with an MLIP (FIRE + Frechet cell filter).

    Returns one document per structure (see :class:`matfunnel.engine.RelaxResult`), in input order.
    ``engine="batched"`` (default) relaxes all structures together on the potential's device with
    in-flight refill (:func:`matfunnel.engine.relax_batched`); ``engine="ase"`` runs ASE's FIRE one
    structure after another (the reference path). Both give the same results, so cached results are
    shared between them. ``symmetry`` keeps each structure's space group during the relaxation.
    """

    name: str = "mlip relax"
    potential: str = DEFAULT_POTENTIAL
    device: str = "cpu"
    fmax: float = 0.05
    max_steps: int = 500
    relax_cell: bool = True
    progress: bool = True
    engine: str = "batched"
    symmetry: bool = False
    max_atoms: int | None = None

    @job
    def make(self, structures: list[Structure], labels: list[str] | None = None) -> list[dict]:
        structures = [s if isinstance(s, Structure) else Structure.from_dict(s) for s in structures]
        labels = _labels(structures, labels)
        cache = active_cache()
        settings = {"potential": self.potential, "fmax": self.fmax, "max_steps": self.max_steps,
                    "relax_cell": self.relax_cell}
        if self.symmetry:  # only when set, so keys of unconstrained relaxations stay what they were
            settings["symmetry"] = True
        keys = [content_key("mlip-relax", structure_fingerprint(s), settings) for s in structures]
        docs: list[dict | None] = [None] * len(structures)
        if cache is not None:  # results identified by their inputs: finished work is reused
            for i, k in enumerate(keys):
                hit = cache.get(k)
                if hit is not None:
                    docs[i] = {**hit, "label": labels[i], "cached": True}
        todo = [i for i, d in enumerate(docs) if d is None]
        if todo:
            pot = load_potential(self.potential, self.device)

            def finished(j: int, result) -> None:  # committed as soon as each structure is done
                i = todo[j]
                doc = {**result.as_dict(), "potential": self.potential, "cached": False}
                docs[i] = doc
                if cache is not None:
                    cache.put(keys[i], "mlip-relax", doc)

            kw = dict(labels=[labels[i] for i in todo], fmax=self.fmax, max_steps=self.max_steps,
                      relax_cell=self.relax_cell, progress=self.progress, on_result=finished)
            if self.engine == "batched":
                relax_batched([structures[i] for i in todo], pot, symmetry=self.symmetry,
                              max_atoms=self.max_atoms, **kw)
            elif self.engine == "ase":
                if self.symmetry:
                    raise ValueError("symmetry-constrained relaxation needs engine='batched'")
                relax_structures([structures[i] for i in todo], pot, **kw)
            else:
                raise ValueError(f"unknown relaxation engine {self.engine!r} (batched or ase)")
        return docs


@dataclass
class StaticMaker(Maker):
    """Energy, forces, stress and magmoms of a batch of structures."""

    name: str = "mlip static"
    potential: str = DEFAULT_POTENTIAL
    device: str = "cpu"

    @job
    def make(self, structures: list[Structure], labels: list[str] | None = None) -> list[dict]:
        structures = [s if isinstance(s, Structure) else Structure.from_dict(s) for s in structures]
        labels = _labels(structures, labels)
        t0 = time.perf_counter()
        outs = load_potential(self.potential, self.device).predict(structures, labels=labels, errors="record")
        docs = []
        for s, lab, o in zip(structures, labels, outs):
            doc = {"label": lab, "formula": s.composition.reduced_formula, "structure": s.as_dict(),
                   "potential": self.potential, "error": o.get("error")}
            if "energy" in o:
                doc.update(energy=float(o["energy"]), e_per_atom=float(o["energy"]) / len(s),
                           forces=np.asarray(o["forces"]).tolist(), stress=np.asarray(o["stress"]).tolist(),
                           magmoms=np.asarray(o["magmoms"]).tolist())
            docs.append(doc)
        for d in docs:
            d["wall_time"] = (time.perf_counter() - t0) / max(len(docs), 1)
        return docs
