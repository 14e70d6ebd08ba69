"""Hyperparameters of a MatRIS model, as a MatRIS checkpoint stores them (its ``config`` dict).

The names are MatRIS's constructor arguments (the same in matris 0.1 and 1.0), so
``MatrisConfig.from_dict(ckpt["config"])`` reads a checkpoint's configuration directly. Values the
architecture here does not implement are refused with
:class:`MatrisCheckpointError` by :func:`MatrisConfig.check`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace


class MatrisCheckpointError(ValueError):
    """The checkpoint cannot be read or does not fit this architecture."""


@dataclass(frozen=True)
class MatrisConfig:
    """MatRIS hyperparameters under MatRIS's own argument names (defaults: the matris package's)."""

    num_layers: int = 6
    node_feat_dim: int = 128
    edge_feat_dim: int = 128
    three_body_feat_dim: int = 128
    mlp_hidden_dims: int | tuple[int, ...] = (128, 128)
    dropout: float = 0.0
    use_bias: bool = False
    distance_expansion: str = "Bessel"  # "Bessel" | "Gaussian"
    three_body_expansion: str = "SH"  # "SH" | "Fourier"
    num_radial: int = 7
    num_angular: int = 7
    max_l: int = 4
    max_n: int = 4
    envelope_exponent: int = 8
    graph_conv_mlp: str = "GateMLP"  # "GateMLP" | "MLP"
    activation_type: str = "silu"
    norm_type: str = "rms"  # "rms" | "layer"
    pairwise_cutoff: float = 6.0
    three_body_cutoff: float = 4.0
    use_smoothed_for_delta_edge: bool = False
    learnable_basis: bool = True
    is_intensive: bool = True
    is_conservation: bool = True
    reference_energy: str | None = None
    #: not a MatRIS argument: the embedding table size (MatRIS fixes it at 94)
    max_num_elements: int = 94

    @classmethod
    def from_dict(cls, d: dict) -> MatrisConfig:
        """The configuration of a checkpoint's ``config`` dict; unknown keys raise :class:`MatrisCheckpointError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise MatrisCheckpointError(f"unknown MatRIS config keys: {', '.join(unknown)}")
        kw = dict(d)
        hd = kw.get("mlp_hidden_dims")
        if isinstance(hd, Sequence) and not isinstance(hd, str):
            kw["mlp_hidden_dims"] = tuple(int(h) for h in hd)
        return cls(**kw)

    def to_dict(self) -> dict:
        """The ``config`` dict of a MatRIS checkpoint (without ``max_num_elements``, lists for sequences)."""
        d = asdict(self)
        d.pop("max_num_elements")
        if isinstance(d["mlp_hidden_dims"], tuple):
            d["mlp_hidden_dims"] = list(d["mlp_hidden_dims"])
        return d

    def check(self) -> list[str]:
        """What this implementation cannot run (empty if fine)."""
        p = []
        if self.distance_expansion.lower() not in ("bessel", "gaussian"):
            p.append(f"distance_expansion={self.distance_expansion!r} (expected Bessel or Gaussian)")
        if self.three_body_expansion.lower() not in ("sh", "fourier"):
            p.append(f"three_body_expansion={self.three_body_expansion!r} (expected SH or Fourier)")
        if self.three_body_expansion.lower() == "sh" and not (1 <= self.max_l <= 4 and 1 <= self.max_n <= 4):
            p.append(f"max_l={self.max_l}, max_n={self.max_n} (SH basis needs 1..4)")
        if self.three_body_expansion.lower() == "fourier" and self.num_angular % 2 != 1:
            p.append(f"num_angular={self.num_angular} must be odd for the Fourier basis")
        if self.num_angular != self.num_radial:
            # the bond-graph envelope projects the num_radial three-body Bessel basis with a
            # Linear(num_angular, ...), so MatRIS itself only runs when they agree
            p.append(f"num_angular={self.num_angular} != num_radial={self.num_radial}")
        if self.distance_expansion.lower() == "bessel" and not self.envelope_exponent > 0:
            p.append(f"envelope_exponent={self.envelope_exponent} (MatRIS needs a positive exponent)")
        if self.graph_conv_mlp.lower() not in ("gatemlp", "mlp"):
            p.append(f"graph_conv_mlp={self.graph_conv_mlp!r} (expected GateMLP or MLP)")
        if self.norm_type.lower() not in ("rms", "layer"):
            p.append(f"norm_type={self.norm_type!r} (expected rms or layer)")
        if self.activation_type.lower() not in ACTIVATIONS:
            p.append(f"activation_type={self.activation_type!r} (expected one of {sorted(ACTIVATIONS)})")
        if not self.is_conservation and self.edge_feat_dim != self.node_feat_dim:
            p.append("direct force/stress heads need edge_feat_dim == node_feat_dim")
        return p

    def replace(self, **kw) -> MatrisConfig:
        """A copy with the fields ``kw`` changed."""
        return replace(self, **kw)


ACTIVATIONS = {"silu", "relu", "gelu", "softplus", "sigmoid", "tanh"}

#: the published checkpoints' architecture (matbench-discovery's matris-10m-oam / -mp model cards:
#: 10 layers, 6 A pair cutoff, 4.5 A three-body cutoff, 10.4M parameters); all other values are the
#: package defaults. The checkpoint's own ``config`` is what loading uses; these serve the tests.
PUBLISHED = {
    "10m-oam": MatrisConfig(num_layers=10, three_body_cutoff=4.5, reference_energy="omat"),
    "10m-omat": MatrisConfig(num_layers=10, three_body_cutoff=4.5, reference_energy="omat"),
    "10m-mp": MatrisConfig(num_layers=10, three_body_cutoff=4.5, reference_energy="mptrj"),
}
