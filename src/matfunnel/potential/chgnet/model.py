"""The CHGNet architecture (0.3.0 layout), written for batched inference with forces and stress.

The first linear layer of every gated MLP acts on a concatenation of per-atom, per-bond and
per-angle features. It is applied here as a sum of projections computed once per atom / bond /
angle and then gathered, which is the same function with far fewer multiply-adds on the edge and
angle level (where the work is). Bond features of bonds longer than the bond cutoff never change,
so they are projected once; the angle update of the last block (whose output nothing reads) is
skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matfunnel.potential.chgnet.graph import GraphBatch

EV_A3_TO_GPA = 160.21766208


@dataclass(frozen=True)
class Config:
    """Hyperparameters this implementation supports (those of the 0.3.0 checkpoint)."""

    atom_fea_dim: int = 64
    bond_fea_dim: int = 64
    angle_fea_dim: int = 64
    num_radial: int = 31
    num_angular: int = 31
    n_conv: int = 4
    hidden_dim: int = 64  # atom_conv_hidden_dim == bond_conv_hidden_dim
    mlp_hidden_dims: tuple[int, ...] = (64, 64, 64)
    atom_graph_cutoff: float = 6.0
    bond_graph_cutoff: float = 3.0
    cutoff_coeff: int = 8
    max_num_elements: int = 94


class _Gated(nn.Module):
    """Parameters of a gated MLP: core and gate branches stacked along the output dimension."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int):
        super().__init__()
        first = hidden if hidden else out_dim
        self.w1 = nn.Parameter(torch.zeros(2 * first, in_dim))
        self.b1 = nn.Parameter(torch.zeros(2 * first))
        self.hidden = hidden
        if hidden:
            self.w2_core = nn.Parameter(torch.zeros(out_dim, hidden))
            self.b2_core = nn.Parameter(torch.zeros(out_dim))
            self.w2_gate = nn.Parameter(torch.zeros(out_dim, hidden))
            self.b2_gate = nn.Parameter(torch.zeros(out_dim))
        self.ln_core = nn.LayerNorm(out_dim)
        self.ln_gate = nn.LayerNorm(out_dim)

    def cols(self, lo: int, hi: int) -> Tensor:
        return self.w1[:, lo:hi]

    def finish(self, pre: Tensor) -> Tensor:
        """From the first layer's pre-activation (..., 2*first) to core * gate."""
        h = pre.shape[-1] // 2
        if self.hidden:
            # split (not slicing): its backward is one concatenation instead of zero-fills
            act_core, act_gate = F.silu(pre).split(h, -1)
            core = F.linear(act_core, self.w2_core, self.b2_core)
            gate = F.linear(act_gate, self.w2_gate, self.b2_gate)
        else:
            core, gate = pre.split(h, -1)
        core = F.silu(self.ln_core(core))
        gate = torch.sigmoid(self.ln_gate(gate))
        return core * gate


class AtomConv(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        a, b = cfg.atom_fea_dim, cfg.bond_fea_dim
        self.mlp = _Gated(2 * a + b, a, cfg.hidden_dim)
        self.w_out = nn.Parameter(torch.zeros(a, a))
        self.a, self.b = a, b

    def forward(self, h: Tensor, bond: tuple[Tensor, Tensor], bw: Tensor, src: Tensor, dst: Tensor,
                chunk: int | None) -> Tensor:
        a, b = self.a, self.b
        # input layout of the checkpoint: [centre atom, bond, neighbour atom]
        pc = F.linear(h, self.mlp.cols(0, a))
        pn = F.linear(h, self.mlp.cols(a + b, 2 * a + b))
        wb = self.mlp.cols(a, a + b)
        q = torch.cat([F.linear(bond[0], wb, self.mlp.b1), F.linear(bond[1], wb, self.mlp.b1)])
        n_atoms, n_edges = h.shape[0], src.shape[0]

        def messages(lo: int, hi: int, pc=pc, pn=pn, q=q, bw=bw) -> Tensor:
            sl = _slicer(lo, hi, n_edges)
            s, d = sl(src), sl(dst)
            pre = torch.stack([pc.index_select(0, s) + pn.index_select(0, d),
                               pc.index_select(0, d) + pn.index_select(0, s)]) + sl(q)  # both directions
            m_fwd, m_rev = (self.mlp.finish(pre) * sl(bw)).unbind(0)
            out = h.new_zeros(n_atoms, m_fwd.shape[-1])
            out.index_add_(0, s, m_fwd)
            out.index_add_(0, d, m_rev)
            return out

        agg = _run_chunked(messages, n_edges, chunk)
        return F.linear(agg, self.w_out) + h


class BondConv(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        a, b, g = cfg.atom_fea_dim, cfg.bond_fea_dim, cfg.angle_fea_dim
        self.mlp = _Gated(a + 2 * b + g, b, cfg.hidden_dim)
        self.w_out = nn.Parameter(torch.zeros(b, b))
        self.a, self.b, self.g = a, b, g


class AngleUpdate(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        a, b, g = cfg.atom_fea_dim, cfg.bond_fea_dim, cfg.angle_fea_dim
        self.mlp = _Gated(a + 2 * b + g, g, 0)
        self.a, self.b, self.g = a, b, g


def _slicer(lo: int, hi: int, n: int):
    """Slice [lo, hi) of a tensor, or the tensor itself when that is all of it (no slice backward)."""
    if lo == 0 and hi == n:
        return lambda t: t
    return lambda t: t[lo:hi]


def _run_chunked(fn, n: int, chunk: int | None) -> Tensor:
    """Sum fn(lo, hi) over chunks; with chunking, activations are recomputed in backward."""
    if chunk is None or n <= chunk:
        return fn(0, n)
    from torch.utils.checkpoint import checkpoint

    total = None
    for lo in range(0, n, chunk):
        part = checkpoint(fn, lo, min(lo + chunk, n), use_reentrant=False)
        total = part if total is None else total + part
    return total


def _run_chunked_cat(fn, n: int, chunk: int | None) -> Tensor:
    if chunk is None or n <= chunk:
        return fn(0, n)
    from torch.utils.checkpoint import checkpoint

    return torch.cat([checkpoint(fn, lo, min(lo + chunk, n), use_reentrant=False) for lo in range(0, n, chunk)])


class CHGNetModel(nn.Module):
    """CHGNet energy/force/stress/magmom model over :class:`GraphBatch` inputs."""

    def __init__(self, cfg: Config = Config()):
        super().__init__()
        self.cfg = cfg
        a, b, g = cfg.atom_fea_dim, cfg.bond_fea_dim, cfg.angle_fea_dim
        self.atom_ref = nn.Parameter(torch.zeros(cfg.max_num_elements))
        self.atom_embedding = nn.Parameter(torch.zeros(cfg.max_num_elements, a))
        self.rbf_freq_ag = nn.Parameter(torch.zeros(cfg.num_radial))
        self.rbf_freq_bg = nn.Parameter(torch.zeros(cfg.num_radial))
        self.bond_embedding = nn.Parameter(torch.zeros(b, cfg.num_radial))
        self.bond_weights_ag = nn.Parameter(torch.zeros(a, cfg.num_radial))
        self.bond_weights_bg = nn.Parameter(torch.zeros(b, cfg.num_radial))
        self.angle_freq = nn.Parameter(torch.zeros((cfg.num_angular - 1) // 2))
        self.angle_embedding = nn.Parameter(torch.zeros(g, cfg.num_angular))
        self.atom_convs = nn.ModuleList([AtomConv(cfg) for _ in range(cfg.n_conv)])
        self.bond_convs = nn.ModuleList([BondConv(cfg) for _ in range(cfg.n_conv - 1)])
        self.angle_updates = nn.ModuleList([AngleUpdate(cfg) for _ in range(cfg.n_conv - 1)])
        self.site_wise = nn.Linear(a, 1)
        self.readout_norm = nn.LayerNorm(a)
        dims = (a, *cfg.mlp_hidden_dims, 1)
        self.readout = nn.ModuleList([nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:])])
        for p in self.parameters():
            p.requires_grad_(False)

    # ---- basis functions -------------------------------------------------------------------
    def _radial(self, d: Tensor, freq: Tensor, cutoff: float) -> Tensor:
        p = self.cfg.cutoff_coeff
        d = d[:, None]
        out = math.sqrt(2.0 / cutoff) * torch.sin(freq * (d * (1.0 / cutoff))) / d
        x = d / cutoff
        xp = x**p
        env = 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
        return out * torch.where(x < 1, env, torch.zeros_like(x))

    def _angular(self, cos: Tensor, freq: Tensor) -> Tensor:
        theta = torch.acos(cos * (1 - 1e-6))
        t = theta[:, None] * freq
        c0 = cos.new_full((cos.shape[0], 1), 1 / math.sqrt(2.0))
        return torch.cat([c0, torch.sin(t), torch.cos(t)], 1) / math.sqrt(math.pi)

    # ---- forward ---------------------------------------------------------------------------
    def forward(
        self,
        g: GraphBatch,
        *,
        compute_forces: bool = True,
        compute_stress: bool = True,
        chunk: int | None = None,
    ) -> dict[str, Tensor]:
        """Energies (B,) eV, forces (N, 3) eV/A, stress (B, 3, 3) GPa, magmoms (N,) mu_B."""
        cfg = self.cfg
        dtype = self.atom_embedding.dtype
        n_struct = g.n_structures
        need_grad = compute_forces or compute_stress
        with torch.enable_grad() if need_grad else torch.no_grad():
            # geometry (positions, distances, angles, bases) in float64: acos near collinear bonds
            # amplifies float32 rounding; features are then cast to the model dtype
            gdt = torch.float64
            lattice = g.lattice.to(gdt)
            strain = torch.zeros(n_struct, 3, 3, dtype=gdt, device=lattice.device)
            if need_grad:
                strain.requires_grad_(True)
            eye = torch.eye(3, dtype=gdt, device=lattice.device)
            lat = lattice @ (eye + strain)
            pos = torch.bmm(g.frac.to(gdt).unsqueeze(1), lat.index_select(0, g.batch)).squeeze(1)
            if compute_forces and not pos.requires_grad:
                pos.requires_grad_(True)
            src, dst = g.src, g.dst
            eb = g.batch.index_select(0, src)
            shift = torch.bmm(g.image.to(gdt).unsqueeze(1), lat.index_select(0, eb)).squeeze(1)
            vec = pos.index_select(0, src) - pos.index_select(0, dst) - shift  # centre - neighbour
            dist = vec.norm(dim=1)
            ns = g.n_short
            rbf_ag = self._radial(dist, self.rbf_freq_ag.to(gdt), cfg.atom_graph_cutoff).to(dtype)
            rbf_bg = self._radial(dist[:ns], self.rbf_freq_bg.to(gdt), cfg.bond_graph_cutoff).to(dtype)
            bond_s, bond_l = F.linear(rbf_ag, self.bond_embedding).split([ns, rbf_ag.shape[0] - ns])
            bw_ag = F.linear(rbf_ag, self.bond_weights_ag)
            bw_bg = F.linear(rbf_bg, self.bond_weights_bg)
            has_angles = g.n_angles > 0
            if has_angles:
                unit = vec[:ns] / dist[:ns, None]
                b1, b2, ac = g.angle_b1, g.angle_b2, g.angle_center
                cos = (unit.index_select(0, b1) * unit.index_select(0, b2)).sum(1) * g.angle_sign.to(gdt)
                angle = F.linear(self._angular(cos, self.angle_freq.to(gdt)).to(dtype), self.angle_embedding)
            h = self.atom_embedding.index_select(0, g.atomic_numbers - 1)
            magmom = None
            n_blocks = cfg.n_conv - 1
            for k in range(n_blocks):
                h = self.atom_convs[k](h, (bond_s, bond_l), bw_ag, src, dst, chunk)
                if has_angles:
                    last = k == n_blocks - 1
                    bond_s, angle = self._bond_angle(k, h, bond_s, bw_bg, angle, b1, b2, ac, chunk, last)
                if k == n_blocks - 1:
                    magmom = self.site_wise(h).abs().squeeze(1)
            h = self.atom_convs[-1](h, (bond_s, bond_l), bw_ag, src, dst, chunk)
            h = self.readout_norm(h)
            for layer in self.readout[:-1]:
                h = F.silu(layer(h))
            site = self.readout[-1](h).squeeze(1) + self.atom_ref[g.atomic_numbers - 1]
            energy = torch.zeros(n_struct, dtype=dtype, device=site.device).index_add_(0, g.batch, site)
            out = {"energy": energy.detach(), "magmoms": magmom.detach()}
            if need_grad:
                inputs = [t for t, want in ((pos, compute_forces), (strain, compute_stress)) if want]
                grads = torch.autograd.grad(energy.sum(), inputs)
                grads = list(grads)
                if compute_forces:
                    out["forces"] = (-grads.pop(0)).to(dtype)
                if compute_stress:
                    vol = torch.linalg.det(lattice).abs()
                    out["stress"] = (grads.pop(0) * (EV_A3_TO_GPA / vol)[:, None, None]).to(dtype)
        return out

    def _bond_angle(self, k, h, bond_s, bw_bg, angle, b1, b2, ac, chunk, last):
        bc, au = self.bond_convs[k], self.angle_updates[k]
        a, b, gdim = bc.a, bc.b, bc.g
        # checkpoint input layout: [bond_i, bond_j, angle, centre atom]
        if last:
            wa = bc.mlp.cols(2 * b, 2 * b + gdim)
            wc = bc.mlp.cols(2 * b + gdim, 2 * b + gdim + a)
        else:
            wa = torch.cat([bc.mlp.cols(2 * b, 2 * b + gdim), au.mlp.cols(2 * b, 2 * b + gdim)])
            wc = torch.cat([bc.mlp.cols(2 * b + gdim, 2 * b + gdim + a), au.mlp.cols(2 * b + gdim, 2 * b + gdim + a)])
        w_bc = bc.mlp.w1.shape[0]
        pc = F.linear(h, wc)
        qi = F.linear(bond_s, bc.mlp.cols(0, b), bc.mlp.b1)
        qj = F.linear(bond_s, bc.mlp.cols(b, 2 * b))
        n_short, n_ang = bond_s.shape[0], b1.shape[0]

        pc_b, pc_a = pc.split(w_bc, -1) if not last else (pc, None)
        wa_b, wa_a = wa.split(w_bc, 0) if not last else (wa, None)

        def bond_msgs(lo, hi, angle=angle, pc_b=pc_b, qi=qi, qj=qj, bw_bg=bw_bg):
            sl = _slicer(lo, hi, n_ang)
            i1, i2 = sl(b1), sl(b2)
            pre = qi.index_select(0, i1) + qj.index_select(0, i2) + F.linear(sl(angle), wa_b) + pc_b.index_select(0, sl(ac))
            upd = bc.mlp.finish(pre) * (bw_bg.index_select(0, i1) * bw_bg.index_select(0, i2))
            return upd.new_zeros(n_short, upd.shape[1]).index_add_(0, i1, upd)

        agg = _run_chunked(bond_msgs, n_ang, chunk)
        new_bond = F.linear(agg, bc.w_out) + bond_s
        if last:
            return new_bond, angle
        ri = F.linear(new_bond, au.mlp.cols(0, b), au.mlp.b1)
        rj = F.linear(new_bond, au.mlp.cols(b, 2 * b))

        def angle_new(lo, hi, angle=angle, pc_a=pc_a, ri=ri, rj=rj):
            sl = _slicer(lo, hi, n_ang)
            ang = sl(angle)
            pre = ri.index_select(0, sl(b1)) + rj.index_select(0, sl(b2)) + F.linear(ang, wa_a) + pc_a.index_select(0, sl(ac))
            return ang + au.mlp.finish(pre)

        new_angle = _run_chunked_cat(angle_new, n_ang, chunk)
        return new_bond, new_angle
