"""The CHGNet architecture (0.3.0 layout), written for batched inference with forces and stress.

The first linear layer of every gated MLP acts on a concatenation of per-atom, per-bond and
per-angle features. It is applied here as a sum of projections computed once per atom / bond /
angle and then gathered, which is the same function with far fewer multiply-adds on the edge and
angle level (where the work is). Bond features of bonds longer than the bond cutoff never change,
so they are projected once; the angle update of the last block (whose output nothing reads) is
skipped.

Every sum over neighbours is a segment sum over rows sorted by their target: directed edges are
ordered by centre atom and angles by their first directed bond (see :mod:`.ops`), so aggregation
never needs ``index_add_`` (whose CPU kernel was 40% of the time). Edge weights are gathered to
directed edges and angles once per forward and shared by all blocks; the first-bond and centre-atom
terms of an angle are added per directed bond and then expanded. On CUDA the gathers, segment sums
and the gated tail (layer norms, activations, weighting, aggregation) run as Triton kernels
(:mod:`.triton_ops`).

For training, ``forward(..., create_graph=True)`` runs every op as plain differentiable torch
(:func:`.mode.plain_autograd`: no custom Function or kernel, whose backward passes are not differentiable) and
returns outputs attached to the graph, so that a loss on energies, forces and stress backpropagates to the
parameters (double backward through the forces). Site energies are summed per structure in float64: the
energies are float64 in every dtype (a float32 sum over hundreds of atoms drifts by microvolts per atom).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.potential.chgnet import basis, cpu_ops, triton_ops
from matfunnel.potential.chgnet.graph import GraphBatch, argsort_stable
from matfunnel.potential.chgnet.mode import is_plain, plain_autograd
from matfunnel.potential.chgnet.ops import Index, gather, gather_sum, scatter


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

    def frozen(self, name, build):
        """``build(self)``, cached under ``name`` until one of this module's (frozen) parameters changes version.

        The kernels' layouts of the weights are built once, not on every call (an in-place change through
        ``.data`` does not bump the version and is not seen). Only the kernels' paths use it, and those are off
        in plain mode and for trained weights, so no cached layout carries an autograd graph.
        """
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        cache = self.__dict__.setdefault("_frozen", {})
        hit = cache.get(name)
        if hit is None or hit[0] != key:
            hit = cache[name] = (key, build(self))
        return hit[1]

    def message(self, pre: Tensor, w: Tensor | None = None, seg: Index | None = None) -> Tensor:
        """``finish(pre) * w``, summed into the segments of the sorted index ``seg`` when given.

        On CUDA this is one Triton kernel from the pre-norm ``[core | gate]`` (forward and backward), unless
        the weights are trained (the kernel gives no gradient of the layer norms' parameters).
        """
        if triton_ops.enabled(pre) and not self.ln_core.weight.requires_grad:
            if self.hidden:
                w2, b2 = self.frozen("triton", lambda m: (torch.block_diag(m.w2_core, m.w2_gate),
                                                          torch.cat([m.b2_core, m.b2_gate])))
                y = F.linear(F.silu(pre), w2, b2)
            else:
                y = pre
            ln = (self.ln_core.weight, self.ln_core.bias, self.ln_gate.weight, self.ln_gate.bias)
            if seg is None:
                return triton_ops.gated(y, w, ln, self.ln_core.eps)
            assert seg.sorted
            return triton_ops.gated(y, w, ln, self.ln_core.eps, seg.offsets, seg.idx)
        out = self.finish(pre)
        if w is not None:
            out = out * w
        return out if seg is None else scatter(out, seg)

    def fused(self, pairs, x: Tensor | None = None, wd: Tensor | None = None, w: Tensor | None = None,
              seg: Index | None = None, *, reduce: bool = True, residual: bool = False,
              x_res: Tensor | None = None) -> Tensor:
        """The message of first-layer input ``sum(t[ix] for t, ix in pairs) + x @ wd.T``.

        Weighted by ``w`` and segment-summed into ``seg`` (``reduce``), or per row plus ``x`` (``residual``;
        plus ``x_res`` instead when given, for an ``x`` that is a narrower input the residual is a linear map of).

        On the CPU (float32) this is one fused kernel per pass (:mod:`.cpu_ops`); elsewhere the gathers,
        the message and the sum run as separate ops.
        """
        first = pairs[0][0][0] if isinstance(pairs[0][0], tuple) else pairs[0][0]
        if not triton_ops.enabled(first) and cpu_ops.supports(self, pairs, x, w, seg, x_res, residual):
            return cpu_ops.gated(self, pairs, x, wd, w, seg, reduce=reduce, residual=residual, x_res=x_res)
        # a table given as two pieces (lo, hi) is torch.cat([lo, hi]), and a weight given as two tables
        # (t0, t1) is t0[ix0] * t1[ix1] (the first two pairs' indices); only the CPU kernels read them as is
        pairs = [(torch.cat(t) if isinstance(t, tuple) else t, ix) for t, ix in pairs]
        if isinstance(w, tuple):
            w = gather(w[0], pairs[0][1]) * gather(w[1], pairs[1][1])
        dense = None
        if x is not None:
            assert wd is not None, "an input x needs its weight wd"
            dense = F.linear(x, wd)
        pre = gather_sum(pairs, dense)
        if reduce:
            return self.message(pre, w, seg)
        out = self.message(pre, w)
        if not residual:
            return out
        res = x if x_res is None else x_res
        assert res is not None, "a residual needs x or x_res"
        return res + out

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
    """Atom convolution: atom features updated by gated messages over their directed edges."""

    def __init__(self, cfg: Config):
        super().__init__()
        a, b = cfg.atom_fea_dim, cfg.bond_fea_dim
        self.mlp = _Gated(2 * a + b, a, cfg.hidden_dim)
        self.w_out = nn.Parameter(torch.zeros(a, a))
        self.a, self.b = a, b

    def forward(self, h: Tensor, bond: tuple[Tensor, Tensor], plan: _Plan, bw_parts: list[Tensor]) -> Tensor:
        """``bond``: features of the short bonds and the first-layer projection (bias included) of the long ones."""
        a, b = self.a, self.b
        # input layout of the checkpoint: [centre atom, bond, neighbour atom]
        pc = F.linear(h, self.mlp.cols(0, a))
        pn = F.linear(h, self.mlp.cols(a + b, 2 * a + b))
        bond_s, q_long = bond
        # the bond table in two pieces, short then long bonds (not concatenated on the CPU path)
        q = (F.linear(bond_s, self.mlp.cols(a, a + b), self.mlp.b1), q_long)

        def messages(part: _EdgePart, bw: Tensor, pc=pc, pn=pn, q=q) -> Tensor:
            # directed edges sorted by centre: the sum over neighbours is a segment sum
            return self.mlp.fused([(pc, part.center), (pn, part.nbr), (q, part.bond)], w=bw, seg=part.center)

        agg = _run_parts(messages, plan.edge_parts, bw_parts)
        return F.linear(agg, self.w_out) + h


class BondConv(nn.Module):
    """Bond convolution parameters: short-bond features updated over their angles (applied in ``_bond_angle``)."""

    def __init__(self, cfg: Config):
        super().__init__()
        a, b, g = cfg.atom_fea_dim, cfg.bond_fea_dim, cfg.angle_fea_dim
        self.mlp = _Gated(a + 2 * b + g, b, cfg.hidden_dim)
        self.w_out = nn.Parameter(torch.zeros(b, b))
        self.a, self.b, self.g = a, b, g


class AngleUpdate(nn.Module):
    """Angle update parameters: angle features from their bonds and centre atom (applied in ``_bond_angle``)."""

    def __init__(self, cfg: Config):
        super().__init__()
        a, b, g = cfg.atom_fea_dim, cfg.bond_fea_dim, cfg.angle_fea_dim
        self.mlp = _Gated(a + 2 * b + g, g, 0)
        self.a, self.b, self.g = a, b, g


class _EdgePart:
    """Directed edges [lo, hi) of the centre-sorted list (both directions of every edge)."""

    def __init__(self, center: Index, nbr: Index, bond: Index):
        self.center, self.nbr, self.bond = center, nbr, bond


class _AnglePart:
    """Angles [lo, hi): first bond as a position in the directed short list, second as a short bond."""

    def __init__(self, lo: int, hi: int, e1: Index, b2: Index):
        self.lo, self.hi, self.e1, self.b2 = lo, hi, e1, b2


def _bounds(n: int, chunk: int | None) -> list[tuple[int, int]]:
    if chunk is None or n <= chunk:
        return [(0, n)]
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


class _Plan:
    """Every index of a forward pass, with the sort orders their backward passes need."""

    def __init__(self, g: GraphBatch, chunk: int | None):
        n, u, ns = g.atomic_numbers.shape[0], g.n_edges, g.n_short
        src, dst = g.src, g.dst
        self.atom_struct = Index(g.batch, g.n_structures, is_sorted=True)
        self.edge_struct = Index(g.batch.index_select(0, src), g.n_structures)
        self.src, self.dst = Index(src, n), Index(dst, n)
        # every directed edge, sorted by centre atom (stable: canonical directions first)
        centre = torch.cat([src, dst])
        order = argsort_stable(centre)
        center = Index(centre.index_select(0, order), n, is_sorted=True)
        nbr = Index(torch.cat([dst, src]).index_select(0, order), n)
        bond = Index(order % max(u, 1), u)
        self.edge_parts = [_EdgePart(center.part(lo, hi), nbr.part(lo, hi), bond.part(lo, hi))
                           for lo, hi in _bounds(2 * u, chunk)]
        # directed short edges sorted by centre (the bond graph's nodes) and the angles over them
        so = g.short_order
        self.s_center = Index(torch.cat([src[:ns], dst[:ns]]).index_select(0, so), n, is_sorted=True)
        self.s_bond = Index(so % max(ns, 1), ns)
        self.s_orient = 1.0 - 2.0 * (so >= ns).to(torch.float64)
        e1 = Index(g.angle_e1, 2 * ns, is_sorted=True)
        b2 = Index(g.angle_b2, ns)
        self.a_e2 = Index(g.angle_e2, 2 * ns)
        self.a_e1 = e1
        self.angle_parts = [_AnglePart(lo, hi, e1.part(lo, hi), b2.part(lo, hi))
                            for lo, hi in _bounds(g.n_angles, chunk)]


def _in_mode(fn):
    """``fn``, run in plain mode when called from plain mode.

    A checkpoint's recomputation (in the backward pass, possibly on another thread) then takes the same path as
    the forward did.
    """
    if not is_plain():
        return fn

    def plain_fn(*args):
        with plain_autograd():
            return fn(*args)

    return plain_fn


def _run_parts(fn, parts: list, per_part: list) -> Tensor:
    """Sum of fn(part, x) over parts; with several parts, activations are recomputed in backward."""
    if len(parts) == 1:
        return fn(parts[0], per_part[0])
    from torch.utils.checkpoint import checkpoint

    fn = _in_mode(fn)
    total = None
    for part, x in zip(parts, per_part, strict=False):
        out = checkpoint(fn, part, x, use_reentrant=False)
        total = out if total is None else total + out
    assert total is not None  # at least two parts here
    return total


def _run_parts_cat(fn, parts: list, per_part: list) -> Tensor:
    if len(parts) == 1:
        return fn(parts[0], per_part[0])
    from torch.utils.checkpoint import checkpoint

    fn = _in_mode(fn)
    return torch.cat([checkpoint(fn, p, x, use_reentrant=False) for p, x in zip(parts, per_part, strict=False)])


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
        self.readout = nn.ModuleList([nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:], strict=False)])
        for p in self.parameters():
            p.requires_grad_(False)

    # ---- basis functions (fused backward passes in .basis) ----------------------------------
    def _radial(self, d: Tensor, freq: Tensor, cutoff: float) -> Tensor:
        return basis.radial(d, freq, cutoff, self.cfg.cutoff_coeff)

    def _angular(self, cos: Tensor, freq: Tensor) -> Tensor:
        return basis.angular(cos, freq)

    # ---- forward ---------------------------------------------------------------------------
    def forward(
        self,
        g: GraphBatch,
        *,
        compute_forces: bool = True,
        compute_stress: bool = True,
        chunk: int | None = None,
        create_graph: bool = False,
    ) -> dict[str, Tensor]:
        """Energies, forces, stress and magmoms of the structures of ``g``.

        Parameters
        ----------
        g
            The batched graph (:func:`~matfunnel.potential.chgnet.graph.build_graph`).
        compute_forces, compute_stress
            Whether to return forces / stress (gradients of the energy).
        chunk
            Split the edge and angle work into chunks of this many items whose activations are recomputed in
            the backward pass (bounded memory); None: one pass.
        create_graph
            Training: run in plain mode (:func:`~matfunnel.potential.chgnet.mode.plain_autograd`, entered here),
            differentiate the forces and stress with ``create_graph=True`` and return every output attached to
            the autograd graph, so that a loss on them backpropagates to the parameters (those the caller set
            ``requires_grad``). Default: inference, fast kernels, detached outputs.

        Returns
        -------
        dict[str, Tensor]
            ``energy`` (B,) eV, float64 (site energies summed in float64); ``magmoms`` (N,) mu_B,
            ``forces`` (N, 3) eV/A and ``stress`` (B, 3, 3) GPa in the model's dtype.
        """
        if create_graph:
            with plain_autograd():
                return self._forward(g, compute_forces, compute_stress, chunk, True)
        return self._forward(g, compute_forces, compute_stress, chunk, False)

    def _forward(self, g: GraphBatch, compute_forces: bool, compute_stress: bool, chunk: int | None,
                 create_graph: bool) -> dict[str, Tensor]:
        cfg = self.cfg
        dtype = self.atom_embedding.dtype
        n_struct = g.n_structures
        need_grad = compute_forces or compute_stress
        with torch.enable_grad() if need_grad or create_graph else torch.no_grad():
            # geometry (positions, distances, angles, bases) in float64: acos near collinear bonds
            # amplifies float32 rounding; features are then cast to the model dtype
            gdt = torch.float64
            plan = _Plan(g, chunk)
            lattice = g.lattice.to(gdt)
            strain = torch.zeros(n_struct, 3, 3, dtype=gdt, device=lattice.device)
            if need_grad:
                strain.requires_grad_(True)
            eye = torch.eye(3, dtype=gdt, device=lattice.device)
            lat = lattice @ (eye + strain)
            # row vector times matrix as a broadcast sum: a batched 1x3 @ 3x3 bmm is a slow GEMM on the GPU
            pos = (g.frac.to(gdt).unsqueeze(2) * gather(lat, plan.atom_struct)).sum(1)
            if compute_forces and not pos.requires_grad:
                pos.requires_grad_(True)
            shift = (g.image.to(gdt).unsqueeze(2) * gather(lat, plan.edge_struct)).sum(1)
            vec = gather(pos, plan.src) - gather(pos, plan.dst) - shift  # centre - neighbour
            dist = vec.norm(dim=1)
            ns = g.n_short
            rbf_ag = self._radial(dist, self.rbf_freq_ag.to(gdt), cfg.atom_graph_cutoff).to(dtype)
            rbf_bg = self._radial(dist[:ns], self.rbf_freq_bg.to(gdt), cfg.bond_graph_cutoff).to(dtype)
            bond_s = F.linear(rbf_ag[:ns], self.bond_embedding)
            # long bonds keep their embedding (no bond-graph update reaches them), so each atom conv's
            # projection of it is one linear map of the radial basis, one (n_long, 128) table per block (not
            # column blocks of one wide product, whose backward would concatenate the blocks' gradients)
            a_dim = cfg.atom_fea_dim
            atom_convs = cast(Sequence[AtomConv], self.atom_convs)  # nn.ModuleList iterates as plain Modules
            w_long = [conv.mlp.cols(a_dim, a_dim + cfg.bond_fea_dim) @ self.bond_embedding for conv in atom_convs]
            q_long = cpu_ops.multi_linear(rbf_ag[ns:], w_long, [conv.mlp.b1 for conv in atom_convs])
            bw_ag = F.linear(rbf_ag, self.bond_weights_ag)
            bw_bg = F.linear(rbf_bg, self.bond_weights_bg)
            # edge weights of the directed edges, gathered once for all blocks
            bw_edge = [gather(bw_ag, p.bond) for p in plan.edge_parts]
            has_angles = g.n_angles > 0
            if has_angles:
                unit = vec[:ns] / dist[:ns, None]
                u_dir = gather(unit, plan.s_bond) * plan.s_orient[:, None]  # centre -> neighbour direction
                cos = (gather(u_dir, plan.a_e1) * gather(u_dir, plan.a_e2)).sum(1)
                ang_basis = self._angular(cos, self.angle_freq.to(gdt)).to(dtype)
                # the first block also gets the 31-wide basis: its angle features are a linear map of it,
                # so its projections of them are cheaper products of the basis
                angle = (F.linear(ang_basis, self.angle_embedding), ang_basis)
                # an angle's weight is bw_dir[e1] * bw_bg[b2], formed where it is used (in the CPU kernel)
                bw_angle = (gather(bw_bg, plan.s_bond), bw_bg)
            h = self.atom_embedding.index_select(0, g.atomic_numbers - 1)
            magmom = None
            n_blocks = cfg.n_conv - 1
            for k in range(n_blocks):
                h = self.atom_convs[k](h, (bond_s, q_long[k]), plan, bw_edge)
                if has_angles:
                    last = k == n_blocks - 1
                    bond_s, angle = self._bond_angle(k, h, bond_s, angle, plan, bw_angle, last)
                if k == n_blocks - 1:
                    magmom = self.site_wise(h).abs().squeeze(1)
            h = self.atom_convs[-1](h, (bond_s, q_long[-1]), plan, bw_edge)
            h = self.readout_norm(h)
            for layer in self.readout[:-1]:
                h = F.silu(layer(h))
            site = self.readout[-1](h).squeeze(1) + self.atom_ref[g.atomic_numbers - 1]
            # summed in float64: a float32 sum over a structure's atoms drifts with its size
            energy = scatter(site.to(torch.float64), plan.atom_struct)
            assert magmom is not None  # set by the last block before the final atom conv
            out = {"energy": energy, "magmoms": magmom}
            if need_grad:
                inputs = [t for t, want in ((pos, compute_forces), (strain, compute_stress)) if want]
                grads = list(torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph))
                if compute_forces:
                    out["forces"] = (-grads.pop(0)).to(dtype)
                if compute_stress:
                    vol = torch.linalg.det(lattice).abs()
                    out["stress"] = (grads.pop(0) * (EV_A3_TO_GPA / vol)[:, None, None]).to(dtype)
        if not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def _bond_angle(self, k, h, bond_s, angle, plan: _Plan, bw_angle, last):
        bc, au = self.bond_convs[k], self.angle_updates[k]
        a, b, gdim = bc.a, bc.b, bc.g
        # checkpoint input layout: [bond_i, bond_j, angle, centre atom]
        if last:
            wc = bc.mlp.cols(2 * b + gdim, 2 * b + gdim + a)
        else:
            wc = torch.cat([bc.mlp.cols(2 * b + gdim, 2 * b + gdim + a), au.mlp.cols(2 * b + gdim, 2 * b + gdim + a)])
        w_bc = bc.mlp.w1.shape[0]
        pc = F.linear(h, wc)
        pc_b, pc_a = pc.split(w_bc, -1) if not last else (pc, None)
        parts = plan.angle_parts
        sizes = [p.hi - p.lo for p in parts]
        ang_basis = None
        if isinstance(angle, tuple):  # (features, basis): features = basis @ angle_embedding.T
            angle, ang_basis = angle
        angles = [angle] if len(parts) == 1 else list(angle.split(sizes))
        if ang_basis is not None:
            bases = [ang_basis] if len(parts) == 1 else list(ang_basis.split(sizes))
            x_parts = list(zip(bases, angles, strict=False))
        else:
            x_parts = [(a_, None) for a_ in angles]
        emb = self.angle_embedding
        # first bond and centre atom are both per directed short edge: add them there, then expand
        qi = F.linear(bond_s, bc.mlp.cols(0, b), bc.mlp.b1)
        qj = F.linear(bond_s, bc.mlp.cols(b, 2 * b))
        x_dir = gather_sum([(qi, plan.s_bond), (pc_b, plan.s_center)])
        wa_b = bc.mlp.cols(2 * b, 2 * b + gdim)
        if ang_basis is not None:
            wa_b = wa_b @ emb

        def bond_msgs(part: _AnglePart, xs, x_dir=x_dir, qj=qj):
            # angles are sorted by their first bond: the sum over angles is a segment sum
            return bc.mlp.fused([(x_dir, part.e1), (qj, part.b2)], xs[0], wa_b, bw_angle, part.e1)

        agg = scatter(_run_parts(bond_msgs, parts, x_parts), plan.s_bond)
        new_bond = F.linear(agg, bc.w_out) + bond_s
        if last:
            return new_bond, angle
        assert pc_a is not None  # split off above for every block but the last
        ri = F.linear(new_bond, au.mlp.cols(0, b), au.mlp.b1)
        rj = F.linear(new_bond, au.mlp.cols(b, 2 * b))
        y_dir = gather_sum([(ri, plan.s_bond), (pc_a, plan.s_center)])
        wa_a = au.mlp.cols(2 * b, 2 * b + gdim)
        if ang_basis is not None:
            wa_a = wa_a @ emb

        def angle_new(part: _AnglePart, xs, y_dir=y_dir, rj=rj):
            return au.mlp.fused([(y_dir, part.e1), (rj, part.b2)], xs[0], wa_a, seg=part.e1, reduce=False,
                                residual=True, x_res=xs[1])

        return new_bond, _run_parts_cat(angle_new, parts, x_parts)
