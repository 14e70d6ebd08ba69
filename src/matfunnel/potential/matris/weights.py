"""Load MatRIS checkpoints onto :class:`~matfunnel.potential.matris.model.MatrisModel`.

A MatRIS checkpoint (``MatRIS_10M_OAM.pth.tar`` etc., the files of the GitHub release v1.0.0 that
both matris 0.1 and 1.0 load) is a dict with the constructor ``config`` and the ``state_dict``,
optionally nested under ``"model"``. The config builds our model; every one of our tensors is then
taken from the state dict under its MatRIS name.

Elemental reference energies are read the way matris 1.0 reads them: from the state dict
(``reference_energy.fc.weight``, or the legacy ``composition_model.fc.weight``), whatever the
config's ``reference_energy`` label says; a label without weights is an error, weights without a
label are used. Missing or unused keys, shapes that disagree and configurations we do not implement
are refused with a :class:`MatrisCheckpointError` listing every problem.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matfunnel.potential.matris.config import MatrisCheckpointError, MatrisConfig
from matfunnel.potential.matris.model import MatrisModel

#: the official release (HPC-AI-Team/MatRIS, GitHub release v1.0.0), as named by the matris package
RELEASE = "https://github.com/HPC-AI-Team/MatRIS/releases/download/v1.0.0"
CHECKPOINT_FILES = {
    "10m-omat": "MatRIS_10M_OMAT.pth.tar",
    "10m-oam": "MatRIS_10M_OAM.pth.tar",
    "10m-mp": "MatRIS_10M_MP.pth.tar",
    "4m-matpes-r2scanv1": "MatRIS_4M_MatPES_r2SCANv1.pth.tar",
    "4m-matpes-pbev1": "MatRIS_4M_MatPES_PBEv1.pth.tar",
    "4m-matpes-r2scanv2": "MatRIS_4M_MatPES_r2SCANv2.pth.tar",
    "4m-matpes-pbev2": "MatRIS_4M_MatPES_PBEv2.pth.tar",
}
#: where the matris package itself caches checkpoints; we look there too
CACHE_DIR = Path("~/.cache/matris").expanduser()


class MatrisCheckpointMissing(MatrisCheckpointError, FileNotFoundError):
    """The checkpoint file is not there."""


def release_url(model: str) -> str:
    """The download address of the release file of ``model``."""
    return f"{RELEASE}/{CHECKPOINT_FILES[model]}"


def default_path(model: str) -> Path:
    """Where the release file of ``model`` goes: ``~/.cache/matris/<release file name>``."""
    return CACHE_DIR / CHECKPOINT_FILES[model]


def _stem(name: str) -> str:
    """A file name without ``.tar``, then ``.pth`` or ``.pt``, lower case (matris 1.0's cache matching)."""
    name = name.lower().removesuffix(".tar")
    return name.removesuffix(".pth").removesuffix(".pt")


def cached_path(model: str) -> Path:
    """The checkpoint of ``model`` in the cache folder, matched as matris 1.0 matches it.

    A file whose name equals the release file name up to case and a ``.pth.tar`` / ``.pth`` / ``.pt``
    ending counts (the first in sorted order); without one this is :func:`default_path`.
    """
    want = _stem(CHECKPOINT_FILES[model])
    if CACHE_DIR.is_dir():
        for entry in sorted(CACHE_DIR.iterdir()):
            if entry.is_file() and _stem(entry.name) == want:
                return entry
    return default_path(model)


# ------------------------------------------------------------------------------------------------
# name mapping: our parameter name -> MatRIS's


def _mlp_positions(n_lins: int, hidden) -> list[int]:
    """Index of each Linear inside MatRIS's MLP ``layers`` Sequential (dropouts/activations between)."""
    if hidden in (None, 0):
        return [1]  # [Dropout, Linear]
    return [3 * j for j in range(n_lins)]  # [Linear, act, (Dropout, Linear, act)*, Dropout, Linear]


def _mlp(theirs: str, rest: str, hidden) -> str:
    """``rest`` = 'lins.{j}.{weight|bias}' of our Mlp -> MatRIS's '{theirs}layers.{k}.{...}'."""
    _, j, p = rest.split(".")
    pos = _mlp_positions(int(j) + 1, hidden)[int(j)] if hidden not in (None, 0) else _mlp_positions(1, hidden)[0]
    return f"{theirs}layers.{pos}.{p}"


def _conv(rest: str, gated: bool, hidden) -> str:
    head, _, tail = rest.partition(".")
    if gated:
        if head in ("core", "gate"):
            return _mlp(f"mlp_{head}.", tail, hidden)
        return rest  # core_norm.*, gate_norm.*
    if head == "core":
        return _mlp("0.", tail, hidden)
    return "1." + tail  # core_norm.* -> the norm after the MLP


_BLOCK = {"line_attn": "attn_block_line_graph", "atom_attn": "attn_block_atom_graph",
          "line_refine": "refine_block_line_graph", "atom_refine": "refine_block_atom_graph"}
_SIMPLE = {
    "species.weight": "atom_embedding.embedding.weight",
    "species_proj.weight": "atom_embedding.atom_swish_layer.linear.weight",
    "rbf_pair.freq": "edge_embedding.pairwise_rbf_expansion.frequencies",
    "rbf_three.freq": "edge_embedding.threebody_rbf_expansion.frequencies",
    "rbf_pair.offset": "edge_embedding.pairwise_rbf_expansion.offset",
    "rbf_three.offset": "edge_embedding.threebody_rbf_expansion.offset",
    "bond_in1.weight": "edge_embedding.edge_linear1.weight",
    "bond_in2.weight": "edge_embedding.edge_linear2.weight",
    "bond_in_norm.weight": "edge_embedding.edge_init_norm.weight",
    "bond_in_norm.bias": "edge_embedding.edge_init_norm.bias",
    "bond_in_proj.weight": "edge_embedding.swish_layer.linear.weight",
    "angle_basis.factor": "three_body_embedding.expansion.factor",
    "angle_basis.freq": "three_body_embedding.expansion.frequencies",
    "angle_in.weight": "three_body_embedding.angle_embedding.weight",
    "angle_proj.weight": "three_body_embedding.swish_layer.linear.weight",
    "stress_head.scalar_in.weight": "force_stress_head.stress_head.feas_wise_linear.weight",
    "stress_head.basis_in.weight": "force_stress_head.stress_head.basis_wise_linear.weight",
    "ref_energy": "reference_energy.fc.weight",
}


#: block parameters kept under another name (``{head}.{tail}`` -> ``{name}{tail}``)
_BLOCK_LINEAR = {"w_src": "source_weight_linear.", "w_tgt": "target_weight_linear.",
                 "envelope": "learnable_envelope."}
#: block residual weights (whole parameters)
_BLOCK_RESIDUAL = {"res_node": "node_res_weight", "res_edge": "edge_res_weight"}
#: block graph-convolution MLPs (ConvMlp) and feed-forward MLPs (Mlp with one hidden layer)
_BLOCK_CONV = {"edge_mlp": "edge_nonlinear_update.", "node_mlp": "node_nonlinear_update."}
_BLOCK_FFN = {"node_ffn": "node_FFN.", "edge_ffn": "edge_FFN."}
_STRESS_BLOCK = {"vec1": "vec1_proj", "vec2": "vec2_proj", "update_in": "update_net.0", "update_out": "update_net.2"}


def _block_name(key: str, parts: list[str], cfg: MatrisConfig) -> str:
    """MatRIS's name of ``key`` = ``blocks.{i}.{sub}.{head}.{tail}`` (an interaction block parameter)."""
    i, sub, rest = parts[1], parts[2], ".".join(parts[3:])
    pre = f"interaction_block.{i}.{_BLOCK[sub]}."
    head, _, tail = rest.partition(".")
    if head in _BLOCK_LINEAR:
        return pre + _BLOCK_LINEAR[head] + tail
    if head in _BLOCK_RESIDUAL:
        return pre + _BLOCK_RESIDUAL[head]
    if head in _BLOCK_CONV:
        gated = cfg.graph_conv_mlp.lower() == "gatemlp"
        hidden = cfg.edge_feat_dim if sub.startswith("line") else cfg.node_feat_dim
        return pre + _BLOCK_CONV[head] + _conv(tail, gated, hidden)
    if head in _BLOCK_FFN:
        return pre + _BLOCK_FFN[head] + _mlp("", tail, 1)
    raise KeyError(key)


def _head_name(key: str, parts: list[str], cfg: MatrisConfig) -> str:
    """MatRIS's name of ``key`` outside the interaction blocks: readout norm and heads."""
    if parts[0] == "readout_norm":
        return key
    rest = ".".join(parts[1:])
    if parts[0] == "energy_mlp":
        return _mlp("energy_head.energy_head.", rest, cfg.mlp_hidden_dims)
    if parts[0] == "magmom_mlp":
        return _mlp("magmom_head.magmom_head.", rest, 2 * cfg.node_feat_dim)
    if parts[0] == "force_mlp":
        return _mlp("force_stress_head.force_head.", rest, cfg.mlp_hidden_dims)
    if parts[:2] == ["stress_head", "blocks"]:
        i, sub, p = parts[2], parts[3], parts[4]
        return f"force_stress_head.stress_head.equivariant_block.{i}.{_STRESS_BLOCK[sub]}.{p}"
    raise KeyError(key)


def matris_name(key: str, cfg: MatrisConfig) -> str:
    """The MatRIS state-dict name of our parameter/buffer ``key``."""
    if key in _SIMPLE:
        return _SIMPLE[key]
    parts = key.split(".")
    if parts[0] == "blocks":
        return _block_name(key, parts, cfg)
    return _head_name(key, parts, cfg)


def _rename_legacy_reference(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``composition_model.fc.weight`` (older checkpoints) as ``reference_energy.fc.weight``."""
    legacy = state.pop("composition_model.fc.weight", None)
    if legacy is None:
        return state
    current = state.setdefault("reference_energy.fc.weight", legacy)
    if current.shape != legacy.shape or not torch.equal(current, legacy):
        raise MatrisCheckpointError("checkpoint has conflicting reference energies "
                                    "(composition_model.fc.weight and reference_energy.fc.weight)")
    return state


def map_state_dict(state: dict[str, Tensor], model: MatrisModel) -> dict[str, Tensor]:
    """Our state dict from a MatRIS one; raises :class:`MatrisCheckpointError` listing every mismatch."""
    cfg = model.cfg
    state = _rename_legacy_reference(dict(state))
    ours = model.state_dict()
    out, used, problems = {}, set(), []
    for key, ref in ours.items():
        name = matris_name(key, cfg)
        if name not in state:
            if key == "ref_energy" and cfg.reference_energy is None:
                out[key] = ref  # no elemental reference: zeros, like MatRIS
                continue
            problems.append(f"missing {name!r} (for {key})")
            continue
        val = state[name]
        used.add(name)
        if key == "ref_energy":
            val = val.reshape(-1) if val.numel() == ref.numel() else val
        if key == "angle_basis.factor":
            val = val.reshape(())
        if tuple(val.shape) != tuple(ref.shape):
            problems.append(f"{name!r} has shape {tuple(val.shape)}, expected {tuple(ref.shape)}")
            continue
        out[key] = val.to(ref.dtype)
    extra = sorted(set(state) - used)
    if extra:
        problems.append(f"{len(extra)} unused checkpoint tensors, e.g. {', '.join(map(repr, extra[:5]))}")
    if problems:
        raise MatrisCheckpointError(
            "checkpoint does not match the MatRIS architecture of its config:\n  " + "\n  ".join(problems))
    return out


#: the format tag of MatRIS checkpoints written by matfunnel (fine-tuned models): our own parameter names
NATIVE_FORMAT = "matfunnel-matris/1"


def save_native(model: MatrisModel, path: str | Path, meta: dict) -> Path:
    """Write ``model`` as a matfunnel MatRIS checkpoint (float32, our names, its config) with ``meta``; atomically.

    Parameters
    ----------
    model
        The model.
    path
        The file (written under a temporary name first, then renamed).
    meta
        JSON-like provenance (base model, training set hash, metrics), stored under ``"meta"``.

    Returns
    -------
    Path
        ``path``.
    """
    import dataclasses

    path = Path(path)
    state = {k: (v.detach().to("cpu", torch.float32).clone() if v.is_floating_point() else v.detach().cpu().clone())
             for k, v in model.state_dict().items()}
    blob = {"format": NATIVE_FORMAT, "config": dataclasses.asdict(model.cfg), "state_dict": state, "meta": meta}
    tmp = path.with_name(path.name + ".part")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def _native_model(ckpt: dict) -> MatrisModel:
    try:
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in ckpt["config"].items()}
        cfg = MatrisConfig(**values)
        model = MatrisModel(cfg)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, KeyError, RuntimeError) as exc:
        raise MatrisCheckpointError(f"matfunnel MatRIS checkpoint does not fit this MatRIS ({exc})") from exc
    return model.eval()


def model_from_dict(ckpt: dict) -> MatrisModel:
    """Build our model from a MatRIS checkpoint dict (``config`` + ``state_dict``; or one :func:`save_native` wrote)."""
    if isinstance(ckpt, dict) and ckpt.get("format") == NATIVE_FORMAT:
        return _native_model(ckpt)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise MatrisCheckpointError("not a MatRIS checkpoint: expected a dict with 'config' and 'state_dict'")
    cfg = MatrisConfig.from_dict(dict(ckpt["config"]))
    problems = cfg.check()
    if problems:
        raise MatrisCheckpointError("unsupported MatRIS configuration:\n  " + "\n  ".join(problems))
    model = MatrisModel(cfg)
    model.load_state_dict(map_state_dict(ckpt["state_dict"], model), strict=True)
    return model.eval()


def load_checkpoint(path: str | Path | None = None, *, model: str = "10m-oam") -> MatrisModel:
    """Our model with the weights of a MatRIS checkpoint file.

    The file is ``path``, by default the matris package's cache (:func:`cached_path`).
    """
    if model not in CHECKPOINT_FILES:
        raise MatrisCheckpointError(f"unknown MatRIS model {model!r}; known: {', '.join(CHECKPOINT_FILES)}")
    p = Path(path).expanduser() if path is not None else cached_path(model)
    if not p.is_file():
        raise MatrisCheckpointMissing(
            f"MatRIS checkpoint not found at {p}. Download {release_url(model)} and either put it at "
            f"{default_path(model)} or pass its path: load_potential('matris-{model}', checkpoint=PATH)."
        )
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # released checkpoints may pickle plain Python objects in their config
        try:
            raw = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise MatrisCheckpointError(f"cannot read MatRIS checkpoint {p}: {exc}") from exc
    except Exception as exc:
        raise MatrisCheckpointError(f"cannot read MatRIS checkpoint {p}: {exc}") from exc
    return model_from_dict(raw)
