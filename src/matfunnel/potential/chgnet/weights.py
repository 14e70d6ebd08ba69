"""Load the official CHGNet checkpoint onto :class:`~matfunnel.potential.chgnet.model.CHGNetModel`.

The checkpoint's state dict is mapped key by key onto our parameters. Anything unexpected (missing
or extra keys, wrong shapes, unsupported hyperparameters) is refused with a :class:`CheckpointError`
listing every problem.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from matfunnel.potential.chgnet.model import CHGNetModel, Config

CHECKPOINTS = {"0.3.0": "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"}

#: hyperparameters the architecture here implements, as stored in the checkpoint's model_args
REQUIRED_ARGS = {
    "composition_model": "MPtrj",
    "mlp_first": True,
    "is_intensive": True,
    "update_bond": True,
    "update_angle": True,
    "angle_layer_hidden_dim": 0,
    "learnable_rbf": True,
    "non_linearity": "silu",
    "gMLP_norm": "layer",
    "readout_norm": "layer",
}


class CheckpointError(ValueError):
    """The checkpoint does not fit this architecture."""


def checkpoint_path(version: str = "0.3.0") -> Path:
    """Path of the checkpoint shipped in the installed ``chgnet`` wheel."""
    if version not in CHECKPOINTS:
        raise CheckpointError(f"unknown CHGNet version {version!r}; available: {', '.join(CHECKPOINTS)}")
    try:
        root = importlib.resources.files("chgnet")
    except ModuleNotFoundError as exc:  # pragma: no cover
        raise CheckpointError("the chgnet package (which ships the weights) is not installed") from exc
    return Path(str(root / CHECKPOINTS[version]))


def config_from_args(args: dict) -> Config:
    """The :class:`Config` of a checkpoint's ``model_args``; :class:`CheckpointError` naming every unsupported one."""
    problems = [f"model_args[{k!r}] = {args.get(k)!r}, expected {v!r}" for k, v in REQUIRED_ARGS.items()
                if k in args and args[k] != v]
    hid = {args.get("atom_conv_hidden_dim", 64), args.get("bond_conv_hidden_dim", 64)}
    if len(hid) != 1 or not isinstance(next(iter(hid)), int):
        problems.append(f"atom/bond conv hidden dims must be one int, got {sorted(map(str, hid))}")
    if problems:
        raise CheckpointError("unsupported CHGNet hyperparameters:\n  " + "\n  ".join(problems))
    return Config(
        atom_fea_dim=args.get("atom_fea_dim", 64),
        bond_fea_dim=args.get("bond_fea_dim", 64),
        angle_fea_dim=args.get("angle_fea_dim", 64),
        num_radial=args.get("num_radial", 31),
        num_angular=args.get("num_angular", 31),
        n_conv=args.get("n_conv", 4),
        hidden_dim=next(iter(hid)),
        mlp_hidden_dims=tuple(args.get("mlp_hidden_dims", (64, 64, 64))),
        atom_graph_cutoff=float(args.get("atom_graph_cutoff", 6)),
        bond_graph_cutoff=float(args.get("bond_graph_cutoff", 3)),
        cutoff_coeff=args.get("cutoff_coeff", 8),
    )


def _mapping(cfg: Config) -> dict[str, tuple[list[str], Callable[..., Tensor]]]:
    """Our parameter name -> (checkpoint keys, combine function)."""
    one = lambda t: t  # noqa: E731
    cat = lambda *ts: torch.cat(ts, 0)  # noqa: E731
    m: dict[str, tuple[list[str], Callable]] = {
        "atom_ref": (["composition_model.fc.weight"], lambda w: w.reshape(-1)),
        "atom_embedding": (["atom_embedding.embedding.weight"], one),
        "rbf_freq_ag": (["bond_basis_expansion.rbf_expansion_ag.frequencies"], one),
        "rbf_freq_bg": (["bond_basis_expansion.rbf_expansion_bg.frequencies"], one),
        "bond_embedding": (["bond_embedding.weight"], one),
        "bond_weights_ag": (["bond_weights_ag.weight"], one),
        "bond_weights_bg": (["bond_weights_bg.weight"], one),
        "angle_freq": (["angle_basis_expansion.fourier_expansion.frequencies"], one),
        "angle_embedding": (["angle_embedding.weight"], one),
        "site_wise.weight": (["site_wise.weight"], one),
        "site_wise.bias": (["site_wise.bias"], one),
        "readout_norm.weight": (["readout_norm.weight"], one),
        "readout_norm.bias": (["readout_norm.bias"], one),
    }

    def gated(ours: str, theirs: str, hidden: bool):
        first = "0" if hidden else "1"
        for p in ("weight", "bias"):
            m[f"{ours}.{'w1' if p == 'weight' else 'b1'}"] = (
                [f"{theirs}.mlp_core.layers.{first}.{p}", f"{theirs}.mlp_gate.layers.{first}.{p}"], cat)
            if hidden:
                for br in ("core", "gate"):
                    m[f"{ours}.{'w2' if p == 'weight' else 'b2'}_{br}"] = ([f"{theirs}.mlp_{br}.layers.3.{p}"], one)
            m[f"{ours}.ln_core.{p}"] = ([f"{theirs}.bn1.{p}"], one)
            m[f"{ours}.ln_gate.{p}"] = ([f"{theirs}.bn2.{p}"], one)

    for k in range(cfg.n_conv):
        gated(f"atom_convs.{k}.mlp", f"atom_conv_layers.{k}.twoBody_atom", True)
        m[f"atom_convs.{k}.w_out"] = ([f"atom_conv_layers.{k}.mlp_out.layers.1.weight"], one)
    for k in range(cfg.n_conv - 1):
        gated(f"bond_convs.{k}.mlp", f"bond_conv_layers.{k}.twoBody_bond", True)
        m[f"bond_convs.{k}.w_out"] = ([f"bond_conv_layers.{k}.mlp_out.layers.1.weight"], one)
        gated(f"angle_updates.{k}.mlp", f"angle_layers.{k}.twoBody_bond", False)
    # readout MLP: Linear, SiLU, Linear, SiLU, ..., Dropout, Linear
    n_hidden = len(cfg.mlp_hidden_dims)
    idx = [2 * i for i in range(n_hidden)] + [2 * n_hidden + 1]
    for ours, theirs in enumerate(idx):
        for p in ("weight", "bias"):
            m[f"readout.{ours}.{p}"] = ([f"mlp.layers.{theirs}.{p}"], one)
    return m


def map_state_dict(state: dict[str, Tensor], model: CHGNetModel) -> dict[str, Tensor]:
    """Our state dict from a CHGNet checkpoint state dict; raise CheckpointError listing problems."""
    mapping = _mapping(model.cfg)
    ours = model.state_dict()
    wanted = {k for keys, _ in mapping.values() for k in keys}
    missing = sorted(wanted - set(state))
    extra = sorted(set(state) - wanted)
    problems = [f"missing key {k}" for k in missing] + [f"unexpected key {k}" for k in extra]
    out = {}
    if not missing:
        for name, (keys, fn) in mapping.items():
            try:
                val = fn(*[state[k] for k in keys])
            except RuntimeError as exc:  # e.g. cat of mismatching shapes
                problems.append(f"cannot combine {keys}: {exc}")
                continue
            if tuple(val.shape) != tuple(ours[name].shape):
                shapes = ", ".join(f"{k} {tuple(state[k].shape)}" for k in keys)
                problems.append(f"wrong shape for {shapes}: expected {tuple(ours[name].shape)} in total")
                continue
            out[name] = val
    if problems:
        raise CheckpointError("checkpoint does not match the CHGNet architecture:\n  " + "\n  ".join(problems))
    return out


#: the format tag of checkpoints written by matfunnel (fine-tuned models): our own parameter names
NATIVE_FORMAT = "matfunnel-chgnet/1"


def save_native(model: CHGNetModel, path: str | Path, meta: dict) -> Path:
    """Write ``model`` as a matfunnel CHGNet checkpoint (parameters in float32, our names) with ``meta``.

    Parameters
    ----------
    model
        The model to save (any device and dtype).
    path
        The file to write; it is written to a temporary name first and renamed, so a crash never leaves half
        a checkpoint under ``path``.
    meta
        JSON-like provenance (base model, training set hash, metrics, ...), stored under ``"meta"``.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    blob = {"format": NATIVE_FORMAT, "config": dataclasses.asdict(model.cfg), "state_dict": state, "meta": meta}
    tmp = path.with_name(path.name + ".part")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def read_native_meta(path: str | Path) -> dict:
    """The ``meta`` record of a matfunnel checkpoint; :class:`CheckpointError` for any other file."""
    raw = _read(Path(path))
    if not (isinstance(raw, dict) and raw.get("format") == NATIVE_FORMAT):
        raise CheckpointError(f"{path} is not a matfunnel CHGNet checkpoint (format {NATIVE_FORMAT!r})")
    return dict(raw.get("meta") or {})


def _read(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def _load_native(raw: dict, path: Path) -> CHGNetModel:
    cfg_d = raw.get("config")
    if not isinstance(cfg_d, dict):
        raise CheckpointError(f"{path}: matfunnel checkpoint without its config")
    try:
        cfg = Config(**{**cfg_d, "mlp_hidden_dims": tuple(cfg_d.get("mlp_hidden_dims", (64, 64, 64)))})
    except TypeError as exc:
        raise CheckpointError(f"{path}: config does not fit this CHGNet ({exc})") from exc
    model = CHGNetModel(cfg)
    try:
        model.load_state_dict(raw["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: parameters do not fit this CHGNet ({exc})") from exc
    return model.eval()


def load_checkpoint(path: str | Path | None = None, *, version: str = "0.3.0") -> CHGNetModel:
    """Build a :class:`CHGNetModel` with the weights from ``path`` (default: the chgnet wheel's).

    ``path`` may be a chgnet checkpoint (its state dict is mapped onto our parameters) or a matfunnel
    checkpoint written by :func:`save_native` (a fine-tuned model).
    """
    path = Path(path) if path is not None else checkpoint_path(version)
    raw = _read(path)
    if isinstance(raw, dict) and raw.get("format") == NATIVE_FORMAT:
        return _load_native(raw, path)
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        raw = raw["model"]
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise CheckpointError(f"{path} is not a CHGNet checkpoint (no model state_dict)")
    cfg = config_from_args(raw.get("model_args", {}))
    model = CHGNetModel(cfg)
    model.load_state_dict(map_state_dict(raw["state_dict"], model), strict=True)
    return model.eval()
