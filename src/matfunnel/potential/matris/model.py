"""MatRIS on batched graphs: embeddings, interaction blocks with separable attention, readout heads.

The maths follows the MatRIS architecture (HPC-AI-Team/MatRIS, BSD-3); the implementation is ours:

* Embeddings: atoms ``silu(W E[Z])``; bonds ``silu(W_p LayerNorm(W_2 W_1 rbf(r)))`` with a Bessel
  (or Gaussian) radial basis times a polynomial envelope; angles ``silu(W_p W_a b(theta))`` with a
  spherical-Bessel x Legendre (SH) or Fourier three-body basis.
* Each interaction block runs, in order: attention on the line graph (bonds as nodes, angles as
  edges), attention on the atom graph, refinement on the line graph, refinement on the atom graph.
  The line-graph passes run for every bond, also for bonds without any angle and in batches without
  any angle at all (their messages are zero, the node updates still apply), as in MatRIS 1.0; a
  structure therefore gets the same numbers alone or in any batch.
  Attention is *separable*: for every edge a message ``m = MLP([e, h_target, h_source])`` and two
  channel-wise logits ``W_t e`` and ``W_s e``; each node receives the softmax-weighted sums of the
  messages over the edges it is the target of and over those it is the source of, where the softmax
  runs per channel over that node's edges. Refinement multiplies the messages by a learned
  projection of the radial basis (a smooth cutoff) before summing them onto the target node.
* Readout: energy MLP per atom summed per structure, ``|MLP|`` magnetic moments, and either
  conservative forces/stress (autograd of the energy) or the direct heads (edge-wise force MLP
  along the bond directions; an equivariant rank-2 stress head).

Work is done on the undirected edges wherever the two directions share their numbers; the first
layer of every edge MLP is split by input block so node-level and bond-level projections are
computed once and then gathered, instead of multiplying the concatenated edge inputs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import cache
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.potential.matris import triton_ops
from matfunnel.potential.matris.config import MatrisConfig
from matfunnel.potential.matris.graph import MatrisGraph


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function called ``name`` (case-insensitive): silu, relu, gelu, softplus, sigmoid, tanh."""
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "silu": F.silu, "relu": F.relu, "gelu": F.gelu, "softplus": F.softplus,
        "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    }
    return table[name.lower()]


def make_norm(kind: str, dim: int) -> nn.Module:
    """An RMS (``"rms"``) or layer (``"layer"``) norm over ``dim`` features."""
    kind = kind.lower()
    if kind == "rms":
        return nn.RMSNorm(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"unsupported norm {kind!r}")


# ------------------------------------------------------------------------------------------------
# small building blocks


class Mlp(nn.Module):
    """Linear layers with an activation between them; ``hidden`` None/0, an int, or a sequence."""

    def __init__(self, d_in: int, hidden, d_out: int, *, bias: bool, act: str = "silu"):
        super().__init__()
        if hidden in (None, 0):
            dims = [d_in, d_out]
        elif isinstance(hidden, int):
            dims = [d_in, hidden, d_out]
        else:
            dims = [d_in, *hidden, d_out]
        self.lins = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(dims))
        self.act = activation(act)

    @property
    def first(self) -> nn.Linear:
        """The first linear layer."""
        return cast(nn.Linear, self.lins[0])

    def rest(self, h: Tensor) -> Tensor:
        """Continue from the output of the first linear layer."""
        for lin in self.lins[1:]:
            h = lin(self.act(h))
        return h

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to ``x`` (rows are samples)."""
        return self.rest(self.lins[0](x))


def split_first_linear(parts, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``Linear(cat([x_k[idx_k] for k]))`` computed block by block.

    ``parts`` is a list of ``(x_k, idx_k)``; ``idx_k`` None means the rows already line up.
    Projecting before gathering costs one small matmul per distinct row set.
    """
    out = None
    off = 0
    for x, idx in parts:
        y = F.linear(x, weight[:, off:off + x.shape[1]])
        off += x.shape[1]
        if idx is not None:
            y = y.index_select(0, idx)
        out = y if out is None else out + y
    if off != weight.shape[1]:
        raise ValueError(f"input blocks have {off} features, layer expects {weight.shape[1]}")
    if out is None:
        raise ValueError("no input blocks")
    return out if bias is None else out + bias


class ConvMlp(nn.Module):
    """The graph-convolution MLP: gated (``act(norm(core)) * sigmoid(norm(gate))``) or plain (``norm(mlp)``)."""

    def __init__(self, d_in: int, hidden, d_out: int, cfg: MatrisConfig):
        super().__init__()
        self.gated = cfg.graph_conv_mlp.lower() == "gatemlp"
        # MatRIS's gated MLP always has biases; the plain one follows use_bias
        bias = True if self.gated else cfg.use_bias
        self.core = Mlp(d_in, hidden, d_out, bias=bias, act=cfg.activation_type)
        self.core_norm = make_norm(cfg.norm_type, d_out)
        if self.gated:
            self.gate = Mlp(d_in, hidden, d_out, bias=bias, act=cfg.activation_type)
            self.gate_norm = make_norm(cfg.norm_type, d_out)
        self.act = activation(cfg.activation_type)

    def forward(self, parts) -> Tensor:
        """The MLP of the concatenated input blocks ``parts`` (as for :func:`split_first_linear`)."""
        if not self.gated:
            first = self.core.first
            return self.core_norm(self.core.rest(split_first_linear(parts, first.weight, first.bias)))
        c0, g0 = self.core.first, self.gate.first
        w = torch.cat([c0.weight, g0.weight], 0)
        b = None if c0.bias is None else torch.cat([c0.bias, g0.bias], 0)
        h = split_first_linear(parts, w, b)
        hc, hg = h.split([c0.out_features, g0.out_features], dim=1)
        core = self.act(self.core_norm(self.core.rest(hc)))
        gate = torch.sigmoid(self.gate_norm(self.gate.rest(hg)))
        return core * gate


def scatter_sum(x: Tensor, index: Tensor, n: int) -> Tensor:
    """``out[v] = sum_{e: index[e] = v} x[e]`` for ``v < n``."""
    return x.new_zeros((n, *x.shape[1:])).index_add_(0, index, x)


def softmax_aggregate(logits: Tensor, values: Tensor, index: Tensor, n: int) -> Tensor:
    """``out[v, c] = sum_{e -> v} softmax_c(logits)[e] * values[e, c]``, softmax per channel over v's edges.

    Computed as a ratio of two segment sums (numerator and normaliser) so the normaliser is never
    gathered back onto the edges. The per-segment maximum is only a shift for stability; it is held
    constant for autograd (the softmax does not depend on it).

    On float32 CUDA tensors (with triton) this is the fused kernel of
    :mod:`~matfunnel.potential.matris.triton_ops` instead (one pass, online softmax).
    """
    if triton_ops.enabled(logits) and values.dtype == logits.dtype and values.device == logits.device:
        return triton_ops.softmax_aggregate(logits, values, index, n)
    d = logits.shape[1]
    with torch.no_grad():
        mx = logits.new_full((n, d), -math.inf).scatter_reduce_(
            0, index[:, None].expand(-1, d), logits, reduce="amax", include_self=True)
    w = torch.exp(logits - mx.index_select(0, index))
    num = scatter_sum(w * values, index, n)
    den = scatter_sum(w, index, n)
    # nodes without edges: 0 / 0 -> 0 (a non-empty segment has den >= 1)
    return num / (den + (den == 0).to(den.dtype))


# ------------------------------------------------------------------------------------------------
# basis functions


def polynomial_envelope(r_scaled: Tensor, p: float) -> Tensor:
    """Smooth cutoff 1 - (p+1)(p+2)/2 s^p + p(p+2) s^(p+1) - p(p+1)/2 s^(p+2), zero for s >= 1.

    For an integer ``p`` the polynomial is evaluated as ``(1 - s)^3 q(s)`` (it has a triple root at
    s = 1), with ``q(s) = sum_{k=0}^{p-2} (k+1)(k+2)/2 s^k + p(p+1)/2 s^(p-1)``: the same function
    without the cancellation of O(1) terms near the cutoff (MatRIS 1.0 evaluates it this way, so
    float32 results agree to rounding). Other ``p`` use the expanded form.
    """
    if float(p).is_integer() and p >= 1:
        q = torch.full_like(r_scaled, p * (p + 1) / 2)
        for k in range(int(p) - 2, -1, -1):
            q = q * r_scaled + (k + 1) * (k + 2) / 2
        env = (1 - r_scaled) ** 3 * q
    else:
        a = -(p + 1) * (p + 2) / 2
        b = p * (p + 2)
        c = -p * (p + 1) / 2
        env = 1 + r_scaled**p * (a + r_scaled * (b + c * r_scaled))
    return torch.where(r_scaled < 1, env, torch.zeros_like(env))


class BesselBasis(nn.Module):
    """sqrt(2/c) sin(f_k r / c) / r times the envelope; ``f_k`` start at k*pi and may be learned."""

    freq: Tensor

    def __init__(self, n: int, cutoff: float, envelope_exponent: int | None, learnable: bool):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = envelope_exponent
        f = math.pi * torch.arange(1, n + 1, dtype=torch.float32)
        if learnable:
            self.freq = nn.Parameter(f)
        else:
            self.register_buffer("freq", f)

    def forward(self, r: Tensor) -> Tensor:
        """The basis (E, n) at the distances ``r`` (E,)."""
        r = r[:, None]
        out = math.sqrt(2.0 / self.cutoff) * torch.sin(self.freq * (r / self.cutoff)) / r
        if self.p is not None:
            out = out * polynomial_envelope(r / self.cutoff, float(self.p))
        return out


class GaussianBasis(nn.Module):
    """exp(-(r - mu_k)^2 / (2 (2 dmu)^2)) on evenly spaced centres from 0 to the cutoff."""

    offset: Tensor

    def __init__(self, n: int, cutoff: float):
        super().__init__()
        self.register_buffer("offset", torch.linspace(0.0, float(cutoff), n))

    def forward(self, r: Tensor) -> Tensor:
        """The basis (E, n) at the distances ``r`` (E,)."""
        width = 2.0 * (self.offset[1] - self.offset[0])
        return torch.exp(-0.5 * ((r[:, None] - self.offset) / width) ** 2)


@cache
def spherical_bessel_table(n_order: int, n_root: int) -> tuple[tuple[float, ...], ...]:
    """(root, 1/|j_{l+1}(root)|) for the first ``n_root`` positive roots of j_l, l < n_order."""
    import numpy as np
    from scipy.optimize import brentq
    from scipy.special import spherical_jn

    table = []
    for lvl in range(n_order):
        roots = []
        z = np.linspace(1e-3, 60.0, 60_000)
        v = spherical_jn(lvl, z)
        for k in np.nonzero(np.sign(v[:-1]) * np.sign(v[1:]) < 0)[0]:
            roots.append(brentq(lambda t, order=lvl: spherical_jn(order, t), z[k], z[k + 1], xtol=1e-14))
            if len(roots) == n_root:
                break
        table.append(tuple(x for a in roots for x in (a, 1.0 / abs(spherical_jn(lvl + 1, a)))))
    return tuple(table)


def spherical_bessel(order: int, z: Tensor) -> Tensor:
    """The spherical Bessel function j_order(z) in closed form, for order 0..3."""
    s, c = torch.sin(z), torch.cos(z)
    if order == 0:
        return s / z
    if order == 1:
        return s / z**2 - c / z
    if order == 2:
        return (3 / z**2 - 1) * s / z - 3 * c / z**2
    if order == 3:
        return (15 / z**3 - 6 / z) * s / z - (15 / z**2 - 1) * c / z
    raise ValueError("l <= 3")


def legendre_sh(l_max: int, x: Tensor) -> Tensor:
    """sqrt((2l+1)/4pi) P_l(x) for l = 0..l_max, stacked on the last axis."""
    p = [torch.ones_like(x), x]
    for deg in range(1, l_max):
        p.append(((2 * deg + 1) * x * p[deg] - deg * p[deg - 1]) / (deg + 1))
    return torch.stack([math.sqrt((2 * deg + 1) / (4 * math.pi)) * p[deg] for deg in range(l_max + 1)], dim=-1)


class SphericalThreeBody(nn.Module):
    """MatRIS's SH three-body basis: radial spherical-Bessel terms times Legendre terms.

    Entry ``k`` multiplies the radial term of order ``k // max_l`` and root ``k % max_l`` by the
    angular term of degree ``k // max_n``. MatRIS evaluates the radial part at the length of the
    *unit* bond vector, i.e. at r = 1 A (scaled by the pair cutoff), so it is a constant per entry.
    """

    factor: Tensor

    def __init__(self, max_n: int, max_l: int, cutoff: float):
        super().__init__()
        self.max_n, self.max_l = max_n, max_l
        self.cutoff = float(cutoff)
        self.register_buffer("factor", torch.tensor(math.sqrt(2.0 / self.cutoff**3)))

    def radial(self, r: Tensor) -> Tensor:
        """The normalised spherical-Bessel radial terms (..., max_n * max_l) at the distances ``r``."""
        table = spherical_bessel_table(self.max_n, self.max_l)
        s = r / self.cutoff
        cols = []
        for order in range(self.max_n):
            for j in range(self.max_l):
                root, norm = table[order][2 * j], table[order][2 * j + 1]
                cols.append(norm * spherical_bessel(order, root * s))
        return torch.stack(cols, dim=-1) * self.factor

    def forward(self, cos_theta: Tensor) -> Tensor:
        """The basis (A, max_n * max_l) at the angle cosines ``cos_theta`` (A,)."""
        r = torch.ones((), dtype=cos_theta.dtype, device=cos_theta.device)
        rad = self.radial(r.reshape(1))[0]  # (max_n * max_l,)
        ang = legendre_sh(self.max_l - 1, cos_theta)  # (A, max_l)
        deg = torch.arange(self.max_n * self.max_l, device=cos_theta.device) // self.max_n
        return ang.index_select(1, deg) * rad


class FourierThreeBody(nn.Module):
    """[1/sqrt2, sin(f theta), cos(f theta)] / sqrt(pi) with f = 1..max_f (learnable)."""

    freq: Tensor

    def __init__(self, num_angular: int, learnable: bool):
        super().__init__()
        f = torch.arange(1, (num_angular - 1) // 2 + 1, dtype=torch.float32)
        if learnable:
            self.freq = nn.Parameter(f)
        else:
            self.register_buffer("freq", f)

    def forward(self, theta: Tensor) -> Tensor:
        """The basis (A, num_angular) at the angles ``theta`` (A,) in radians."""
        t = theta[:, None] * self.freq
        const = torch.full_like(theta[:, None], 1 / math.sqrt(2.0))
        return torch.cat([const, torch.sin(t), torch.cos(t)], dim=1) / math.sqrt(math.pi)


# ------------------------------------------------------------------------------------------------
# interaction block


class Attention(nn.Module):
    """Separable graph attention; ``nodes``/``edges`` are atoms/bonds (atom graph) or bonds/angles (line graph)."""

    def __init__(self, d_node: int, d_edge: int, hidden: int, cfg: MatrisConfig):
        super().__init__()
        self.w_src = nn.Linear(d_edge, d_edge, bias=False)
        self.w_tgt = nn.Linear(d_edge, d_edge, bias=False)
        self.edge_mlp = ConvMlp(d_edge + 2 * d_node, hidden, d_edge, cfg)
        self.node_mlp = ConvMlp(d_node + 2 * d_edge, hidden, d_node, cfg)
        self.res_node = nn.Parameter(torch.ones(1, d_node))
        self.res_edge = nn.Parameter(torch.ones(1, d_edge))

    def atom_graph(self, h: Tensor, e: Tensor, tgt: Tensor, src: Tensor, d2u: Tensor) -> tuple[Tensor, Tensor]:
        """Update atoms ``h`` and undirected bonds ``e``; ``tgt``/``src``/``d2u`` index the 2U directed edges."""
        n, u = h.shape[0], e.shape[0]
        m = self.edge_mlp([(e, d2u), (h, tgt), (h, src)])  # (2U, De)
        a_t = self.w_tgt(e).index_select(0, d2u)
        a_s = self.w_src(e).index_select(0, d2u)
        agg_t = softmax_aggregate(a_t, m, tgt, n)
        agg_s = softmax_aggregate(a_s, m, src, n)
        h_new = self.node_mlp([(h, None), (agg_t, None), (agg_s, None)]) + self.res_node * h
        e_new = (m[:u] + m[u:]) / 2 + self.res_edge * e
        return h_new, e_new

    def line_graph(self, e: Tensor, t: Tensor, b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
        """Update bonds ``e`` and angles ``t``; angle ``a`` joins bond ``b1[a]`` (target) and ``b2[a]`` (source)."""
        u = e.shape[0]
        m = self.edge_mlp([(t, None), (e, b1), (e, b2)])  # (A, Dt)
        agg_t = softmax_aggregate(self.w_tgt(t), m, b1, u)
        agg_s = softmax_aggregate(self.w_src(t), m, b2, u)
        e_new = self.node_mlp([(e, None), (agg_t, None), (agg_s, None)]) + self.res_node * e
        return e_new, m + self.res_edge * t


class Refinement(nn.Module):
    """Envelope-weighted message passing with feed-forward updates of nodes and edges."""

    def __init__(self, d_node: int, d_edge: int, hidden: int, n_basis: int, cfg: MatrisConfig, d_atom: int = 0):
        super().__init__()
        self.edge_mlp = ConvMlp(d_atom + 2 * d_node + d_edge, hidden, d_edge, cfg)
        self.node_ffn = Mlp(d_edge, d_node, d_node, bias=cfg.use_bias)
        self.edge_ffn = Mlp(d_edge, d_edge, d_edge, bias=cfg.use_bias)
        self.envelope = nn.Linear(n_basis, d_edge, bias=False)
        self.res_node = nn.Parameter(torch.ones(1, d_node))
        self.res_edge = nn.Parameter(torch.ones(1, d_edge))
        self.smoothed_delta = cfg.use_smoothed_for_delta_edge

    def atom_graph(self, h, e, rbf, tgt, src, d2u):
        """Update atoms ``h`` and bonds ``e``, messages weighted by a projection of the bond basis ``rbf``."""
        n, u = h.shape[0], e.shape[0]
        nl = self.edge_mlp([(e, d2u), (h, tgt), (h, src)])  # (2U, De)
        sm = nl * self.envelope(rbf).index_select(0, d2u)
        dh = self.node_ffn(scatter_sum(sm, tgt, n))
        de = self.edge_ffn(sm if self.smoothed_delta else nl)
        return dh + self.res_node * h, (de[:u] + de[u:]) / 2 + self.res_edge * e

    def line_graph(self, e, t, h, rbf_short, center, b1, b2):
        """Update bonds ``e`` and angles ``t`` (with the atoms ``h`` at the angle ``center``s) on the line graph."""
        u = e.shape[0]
        env = self.envelope(rbf_short)
        w = env.index_select(0, b2) * env.index_select(0, b1)
        nl = self.edge_mlp([(t, None), (h, center), (e, b1), (e, b2)])  # (A, Dt)
        de = self.node_ffn(scatter_sum(nl * w, b1, u))
        dt = self.edge_ffn(nl)
        return de + self.res_node * e, dt + self.res_edge * t


class Block(nn.Module):
    """One interaction block: line-graph and atom-graph attention, then line-graph and atom-graph refinement."""

    def __init__(self, cfg: MatrisConfig):
        super().__init__()
        dn, de, dt = cfg.node_feat_dim, cfg.edge_feat_dim, cfg.three_body_feat_dim
        self.line_attn = Attention(de, dt, de, cfg)
        self.atom_attn = Attention(dn, de, dn, cfg)
        self.line_refine = Refinement(de, dt, de, cfg.num_angular, cfg, d_atom=dn)
        self.atom_refine = Refinement(dn, de, dn, cfg.num_radial, cfg)

    def forward(self, h: Tensor, e: Tensor, t: Tensor, geo: dict) -> tuple[Tensor, Tensor, Tensor]:
        """One interaction block on atoms ``h``, undirected bonds ``e`` and angles ``t`` (possibly no rows)."""
        tgt, src, d2u = geo["tgt"], geo["src"], geo["d2u"]
        e, t = self.line_attn.line_graph(e, t, geo["b1"], geo["b2"])
        h, e = self.atom_attn.atom_graph(h, e, tgt, src, d2u)
        e, t = self.line_refine.line_graph(e, t, h, geo["rbf3"], geo["center"], geo["b1"], geo["b2"])
        h, e = self.atom_refine.atom_graph(h, e, geo["rbf2"], tgt, src, d2u)
        return h, e, t


# ------------------------------------------------------------------------------------------------
# direct heads


def real_sh_l2(v: Tensor) -> Tensor:
    """Unnormalised real harmonics up to l = 2 in MatRIS's component order (9 columns)."""
    x, y, z = v.unbind(-1)
    r3 = math.sqrt(3.0)
    return torch.stack([
        torch.ones_like(x), x, y, z,
        r3 * x * z, r3 * x * y, y * y - 0.5 * (x * x + z * z), r3 * y * z, r3 / 2 * (z * z - x * x),
    ], dim=-1)


def rank2_from_irreps(l0: Tensor, l2: Tensor) -> Tensor:
    """Symmetric 3x3 tensors from their trace part (B,) and l = 2 part (B, 5) in the same order."""
    s2, s3, s6 = 2**-0.5, 3**-0.5, 6**-0.5
    out = l0.new_zeros(l0.shape[0], 3, 3)
    eye = torch.eye(3, dtype=l0.dtype, device=l0.device)
    out = out + l0[:, None, None] * s3 * eye
    basis = l0.new_zeros(5, 3, 3)
    basis[0, 0, 2] = basis[0, 2, 0] = s2
    basis[1, 0, 1] = basis[1, 1, 0] = s2
    basis[2, 0, 0], basis[2, 1, 1], basis[2, 2, 2] = -s6, 2 * s6, -s6
    basis[3, 1, 2] = basis[3, 2, 1] = s2
    basis[4, 0, 0], basis[4, 2, 2] = -s2, s2
    return out + torch.einsum("bk,kij->bij", l2, basis)


class GatedEquivariant(nn.Module):
    """A gated equivariant block: scalars ``s`` gate the channels of the vector features ``v``."""

    def __init__(self, hidden: int, out: int, act: str):
        super().__init__()
        self.out = out
        self.vec1 = nn.Linear(hidden, hidden, bias=False)
        self.vec2 = nn.Linear(hidden, out, bias=False)
        self.update_in = nn.Linear(2 * hidden, hidden)
        self.update_out = nn.Linear(hidden, 2 * out)
        self.act = activation(act)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """New scalars (N, out) and vectors (N, 9, out) from ``s`` (N, hidden) and ``v`` (N, 9, hidden)."""
        norm = torch.linalg.vector_norm(self.vec1(v), dim=-2)
        s, gate = self.update_out(self.act(self.update_in(torch.cat([s, norm], -1)))).split(self.out, dim=-1)
        return self.act(s), gate.unsqueeze(1) * self.vec2(v)


class StressHead(nn.Module):
    """The direct stress head: irreps (l <= 2) per atom from its features and position direction."""

    def __init__(self, dim: int, act: str):
        super().__init__()
        self.scalar_in = nn.Linear(dim, dim, bias=False)
        self.basis_in = nn.Linear(1, dim, bias=False)
        self.blocks = nn.ModuleList([GatedEquivariant(dim, dim // 2, act), GatedEquivariant(dim // 2, 1, act)])

    def forward(self, h: Tensor, direction: Tensor) -> Tensor:
        """The nine real-harmonic components (N, 9) per atom."""
        v = self.basis_in(real_sh_l2(direction).unsqueeze(-1))  # (N, 9, D)
        s = self.scalar_in(h)
        for blk in self.blocks:
            s, v = blk(s, v)
        return v[..., 0]  # (N, 9)


# ------------------------------------------------------------------------------------------------
# the model


class MatrisModel(nn.Module):
    """A MatRIS potential.

    ``forward(graph)`` returns energy (B,) eV, forces (N, 3) eV/A, stress (B, 3, 3) GPa (chgnet sign)
    and magmoms (N,).
    """

    rbf_pair: BesselBasis | GaussianBasis
    rbf_three: BesselBasis | GaussianBasis
    angle_basis: SphericalThreeBody | FourierThreeBody
    ref_energy: Tensor

    def __init__(self, cfg: MatrisConfig):
        super().__init__()
        problems = cfg.check()
        if problems:
            raise ValueError("unsupported MatRIS configuration: " + "; ".join(problems))
        self.cfg = cfg
        dn, de, dt = cfg.node_feat_dim, cfg.edge_feat_dim, cfg.three_body_feat_dim
        self.species = nn.Embedding(cfg.max_num_elements, dn)
        self.species_proj = nn.Linear(dn, dn, bias=False)
        if cfg.distance_expansion.lower() == "bessel":
            self.rbf_pair = BesselBasis(cfg.num_radial, cfg.pairwise_cutoff, cfg.envelope_exponent, cfg.learnable_basis)
            self.rbf_three = BesselBasis(cfg.num_radial, cfg.three_body_cutoff, cfg.envelope_exponent,
                                         cfg.learnable_basis)
        else:
            self.rbf_pair = GaussianBasis(cfg.num_radial, cfg.pairwise_cutoff)
            self.rbf_three = GaussianBasis(cfg.num_radial, cfg.three_body_cutoff)
        self.bond_in1 = nn.Linear(cfg.num_radial, de, bias=False)
        self.bond_in2 = nn.Linear(de, de, bias=False)
        self.bond_in_norm = nn.LayerNorm(de)
        self.bond_in_proj = nn.Linear(de, de, bias=False)
        self.sh = cfg.three_body_expansion.lower() == "sh"
        if self.sh:
            self.angle_basis = SphericalThreeBody(cfg.max_n, cfg.max_l, cfg.pairwise_cutoff)
            n_ang = cfg.max_n * cfg.max_l
        else:
            self.angle_basis = FourierThreeBody(cfg.num_angular, cfg.learnable_basis)
            n_ang = cfg.num_angular
        self.angle_in = nn.Linear(n_ang, dt, bias=False)
        self.angle_proj = nn.Linear(dt, dt, bias=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.readout_norm = make_norm(cfg.norm_type, dn)
        self.energy_mlp = Mlp(dn, cfg.mlp_hidden_dims, 1, bias=True, act=cfg.activation_type)
        self.magmom_mlp = Mlp(dn, 2 * dn, 1, bias=True, act=cfg.activation_type)
        if not cfg.is_conservation:
            self.force_mlp = Mlp(de, cfg.mlp_hidden_dims, 3, bias=True, act=cfg.activation_type)
            self.stress_head = StressHead(de, cfg.activation_type)
        # elemental reference energies (eV per atom of each element), zero unless the checkpoint has them
        self.register_buffer("ref_energy", torch.zeros(cfg.max_num_elements))

    def embed_angles(self, unit: Tensor, g: MatrisGraph) -> Tensor:
        """Angle features (A, three_body_feat_dim) from the unit bond vectors (A may be 0)."""
        dtype = unit.dtype
        cos = (unit.index_select(0, g.ang_b1) * unit.index_select(0, g.ang_b2)).sum(1) * g.ang_sign.to(dtype)
        cos = cos * (1 - 1e-6)
        basis = self.angle_basis(cos) if self.sh else self.angle_basis(torch.acos(cos))
        return F.silu(self.angle_proj(self.angle_in(basis)))

    def forward(
        self,
        g: MatrisGraph,
        *,
        compute_forces: bool = True,
        compute_stress: bool = True,
        compute_magmoms: bool = True,
        create_graph: bool = False,
    ) -> dict[str, Tensor | None]:
        """Energy, forces, stress and magmoms of the structures of ``g`` (a skipped quantity is None)."""
        cfg = self.cfg
        dtype = self.bond_in1.weight.dtype
        autograd = cfg.is_conservation and (compute_forces or compute_stress)
        with torch.set_grad_enabled(autograd or torch.is_grad_enabled()):
            vec = g.vec.to(dtype)
            if autograd:
                vec = vec.detach().requires_grad_(True)
            n_atoms, u, b = g.numbers.shape[0], g.n_edges, g.n_structures
            length = torch.linalg.vector_norm(vec, dim=1)
            unit = vec / length[:, None]
            tgt, src = g.directed()
            d2u = torch.arange(u, device=vec.device).repeat(2)

            # embeddings
            h = F.silu(self.species_proj(self.species(g.numbers - 1)))
            rbf2 = self.rbf_pair(length)
            e = F.silu(self.bond_in_proj(self.bond_in_norm(self.bond_in2(self.bond_in1(rbf2)))))
            geo = {"tgt": tgt, "src": src, "d2u": d2u, "rbf2": rbf2, "rbf3": self.rbf_three(length[:g.n_short]),
                   "b1": g.ang_b1, "b2": g.ang_b2, "center": g.ang_center}
            t = self.embed_angles(unit, g)

            for blk in self.blocks:
                h, e, t = blk(h, e, t, geo)

            h = self.readout_norm(h)
            e_atom = self.energy_mlp(h)[:, 0]
            energy = scatter_sum(e_atom, g.batch, b)
            out: dict[str, Tensor | None] = {"forces": None, "stress": None, "magmoms": None}
            volume = g.volume.to(dtype).abs()  # MatRIS 1.0 divides by |det L|
            if cfg.is_conservation and autograd:
                (grad,) = torch.autograd.grad(energy.sum(), vec, create_graph=create_graph)
                if compute_forces:
                    out["forces"] = scatter_sum(grad, g.dst, n_atoms) - scatter_sum(grad, g.src, n_atoms)
                if compute_stress:
                    w = scatter_sum(vec[:, :, None] * grad[:, None, :], g.batch[g.src], b)
                    out["stress"] = 0.5 * (w + w.transpose(1, 2)) * (EV_A3_TO_GPA / volume)[:, None, None]
            elif not cfg.is_conservation:
                if compute_forces:
                    fe = self.force_mlp(e) * unit
                    out["forces"] = scatter_sum(fe, g.src, n_atoms) - scatter_sum(fe, g.dst, n_atoms)
                if compute_stress:
                    pos = g.pos.to(dtype)
                    direction = pos / (torch.linalg.vector_norm(pos, dim=1) * (1 - 1e-6) + 1e-6)[:, None]
                    irr = self.stress_head(h, direction)
                    counts = g.n_atoms.to(dtype)[:, None]
                    irr = scatter_sum(irr, g.batch, b) / counts
                    out["stress"] = rank2_from_irreps(irr[:, 0], irr[:, 4:9]) * (EV_A3_TO_GPA / volume)[:, None, None]
            if compute_magmoms:
                out["magmoms"] = self.magmom_mlp(h)[:, 0].abs()
            # the elemental references of a checkpoint, as MatRIS 1.0 loads them: per atom for an intensive
            # model (added to energy per atom), per structure otherwise; both ways the sum over the atoms
            ref = scatter_sum(self.ref_energy.to(dtype).index_select(0, g.numbers - 1), g.batch, b)
            out["energy"] = energy + ref
            if not create_graph:
                out = {k: (v.detach() if v is not None else None) for k, v in out.items()}
        return out
