"""The models fine-tuning trains, behind one small interface: load, forward on a batch, references, save.

``chgnet-0.3.0`` is our CHGNet (:mod:`matfunnel.potential.chgnet`); ``matris-<model>`` is our MatRIS
(:mod:`matfunnel.potential.matris`, e.g. ``matris-10m-oam``), whose published weights the user downloads (the
error names the file and folder); a fine-tuning run can also start from any checkpoint of either. Both train
with forces and stresses in the loss (the derivative of a derivative): CHGNet through its plain-autograd mode,
MatRIS directly (its Triton op keeps a differentiable backward). Each writes a matfunnel checkpoint that its
potential loads by name: ``load_potential("chgnet-0.3.0", checkpoint=...)``,
``load_potential("matris-10m-oam", checkpoint=...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from matfunnel.potential.chgnet.model import CHGNetModel
from matfunnel.potential.matris.model import MatrisModel

#: a model fine-tuning trains
Trainable = CHGNetModel | MatrisModel

CHGNET = "chgnet-0.3.0"
MATRIS_PREFIX = "matris-"


def bases() -> tuple[str, ...]:
    """The potential names fine-tuning starts from."""
    from matfunnel.potential.matris.weights import CHECKPOINT_FILES

    return (CHGNET, *(MATRIS_PREFIX + m for m in CHECKPOINT_FILES))


def family(base: str) -> str:
    """``"chgnet"`` or ``"matris"``; ValueError for a name fine-tuning does not start from."""
    if base == CHGNET:
        return "chgnet"
    if base.startswith(MATRIS_PREFIX) and base in bases():
        return "matris"
    raise ValueError(f"fine-tuning starts from one of {', '.join(bases())}, not {base!r}")


def load(base: str, checkpoint: str | None) -> Trainable:
    """The model of ``base`` with its published weights, or with ``checkpoint`` (theirs or a fine-tuned one)."""
    if family(base) == "chgnet":
        from matfunnel.potential.chgnet.weights import load_checkpoint

        return load_checkpoint(checkpoint)
    from matfunnel.potential.matris.weights import load_checkpoint as load_matris

    return load_matris(checkpoint, model=base.removeprefix(MATRIS_PREFIX))


def references(model: Trainable) -> Tensor:
    """The per-element reference energies (eV per atom of each element, indexed by Z - 1), in place."""
    if isinstance(model, CHGNetModel):
        return model.atom_ref
    ref = model.ref_energy  # MatRIS: a buffer added per atom
    assert isinstance(ref, Tensor)
    return ref


def forward(model: Trainable, cells: Sequence[tuple[Tensor, Tensor, Tensor]], *, forces: bool, stress: bool,
            create_graph: bool) -> dict[str, Tensor]:
    """Energy (B,), forces (N, 3), stress (B, 3, 3) GPa and magmoms (N,) of ``cells`` ``(frac, lattice, Z)``."""
    dev = references(model).device
    frac = torch.cat([c[0] for c in cells]).to(dev)
    lattice = torch.stack([c[1] for c in cells]).to(dev)
    numbers = torch.cat([c[2] for c in cells]).to(dev)
    n_atoms = torch.tensor([len(c[2]) for c in cells], device=dev)
    if isinstance(model, CHGNetModel):
        from matfunnel.potential.chgnet.graph import build_graph

        graph = build_graph(frac, lattice, numbers, n_atoms, cutoff=model.cfg.atom_graph_cutoff,
                            bond_cutoff=model.cfg.bond_graph_cutoff)
        return model(graph, compute_forces=forces, compute_stress=stress, create_graph=create_graph)
    from matfunnel.potential.matris.graph import build_matris_graph

    mgraph = build_matris_graph(frac, lattice, numbers, n_atoms, pairwise_cutoff=model.cfg.pairwise_cutoff,
                                three_body_cutoff=model.cfg.three_body_cutoff)
    out = model(mgraph, compute_forces=forces, compute_stress=stress, create_graph=create_graph)
    return {k: v for k, v in out.items() if v is not None}


def save(model: Trainable, path: Path, meta: dict) -> Path:
    """Write a matfunnel checkpoint of ``model`` (atomically) that its potential loads by name."""
    if isinstance(model, CHGNetModel):
        from matfunnel.potential.chgnet.weights import save_native

        return save_native(model, path, meta)
    from matfunnel.potential.matris.weights import save_native as save_matris

    return save_matris(model, path, meta)


def config_dict(model: Trainable) -> dict:
    """The model's hyper-parameters as plain data."""
    return dataclasses.asdict(model.cfg)
