"""Fused Triton kernel for MatRIS's separable attention: segment softmax + weighted aggregation (CUDA).

:func:`softmax_aggregate` computes ``out[v, c] = sum_{e -> v} softmax_c(logits)[e] * values[e, c]`` (softmax
per channel over the edges ``e`` with ``index[e] = v``), the same as the torch path
:func:`matfunnel.potential.matris.model.softmax_aggregate`, in one pass over the edges: the edges are
sorted by target (a stable argsort, CSR offsets), and one program per (target, channel block) streams its
edges with an online softmax (running max, rescaled normaliser and numerator), so neither the weights nor
the weighted messages are written to memory. It also keeps ``lse = max + log(normaliser)`` per target.

Backward is a second kernel, one program per block of edges (no sorting needed):
``p = exp(logits - lse[v])``, ``d values = g[v] p``, ``d logits = p g[v] (values - out[v])``.
When the backward itself is differentiated (``create_graph=True``: training on forces), the gradient is
instead recomputed through the torch path so that it stays differentiable.

Selection is by :func:`enabled`: float32 CUDA tensors when triton imports (``MATFUNNEL_TRITON=0`` turns it
off); on the CPU only when ``TRITON_INTERPRET=1`` is set and :func:`force` asked for it (the tests).
Kernels are built on first use so that ``triton.jit`` sees the environment of that time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from matfunnel.potential.triton_select import available, enabled, force  # noqa: F401 (re-exported)
from matfunnel.potential.triton_select import pow2 as _pow2


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _k(name: str):
    from matfunnel.potential.matris import _triton_kernels

    return getattr(_triton_kernels, name + "_kernel")


def softmax_aggregate_torch(logits: Tensor, values: Tensor, index: Tensor, n: int) -> Tensor:
    """Reference (differentiable to any order): the same maths as the model's torch path."""
    d = logits.shape[1]
    with torch.no_grad():
        mx = logits.new_full((n, d), -math.inf).scatter_reduce_(
            0, index[:, None].expand(-1, d), logits, reduce="amax", include_self=True)
    w = torch.exp(logits - mx.index_select(0, index))
    num = logits.new_zeros(n, d).index_add_(0, index, w * values)
    den = logits.new_zeros(n, d).index_add_(0, index, w)
    return num / (den + (den == 0).to(den.dtype))


class _SoftmaxAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_in, values_in, index, n):
        # the inputs themselves are saved: a create_graph backward must reach their graph
        logits = logits_in.contiguous()
        values = values_in.contiguous()
        e, d = logits.shape
        out = logits.new_empty(n, d)
        lse = logits.new_empty(n, d)
        if n and d:
            if e:
                perm = torch.argsort(index, stable=True)
                counts = torch.bincount(index, minlength=n)
                offsets = torch.zeros(n + 1, dtype=torch.long, device=index.device)
                torch.cumsum(counts, 0, out=offsets[1:])
            else:
                perm = index
                offsets = torch.zeros(n + 1, dtype=torch.long, device=index.device)
            block_d = min(_pow2(d), 64)
            _k("softmax_aggregate_fwd")[(n, _cdiv(d, block_d))](
                out, lse, logits, values, perm, offsets, d, BLOCK_R=16, BLOCK_D=block_d)
        ctx.save_for_backward(logits_in, values_in, index, lse, out)
        ctx.n = n
        return out

    @staticmethod
    def backward(ctx, grad):
        logits, values, index, lse, out = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph: keep the gradient differentiable by going through the torch path
            with torch.enable_grad():
                ref = softmax_aggregate_torch(logits, values, index, ctx.n)
                dl, dv = torch.autograd.grad(ref, (logits, values), grad, create_graph=True, allow_unused=True)
            return dl, dv, None, None
        grad = grad.contiguous()
        logits, values = logits.contiguous(), values.contiguous()
        e, d = logits.shape
        dl = torch.empty_like(logits)
        dv = torch.empty_like(values)
        if e and d:
            block_d = _pow2(d)
            block_r = max(1, 4096 // block_d)
            _k("softmax_aggregate_bwd")[(_cdiv(e, block_r),)](
                dl, dv, grad, logits, values, index, lse, out, e, d, BLOCK_R=block_r, BLOCK_D=block_d)
        return dl, dv, None, None


def softmax_aggregate(logits: Tensor, values: Tensor, index: Tensor, n: int) -> Tensor:
    """``out[v, c] = sum_{e -> v} softmax_c(logits)[e] * values[e, c]`` with the fused kernel.

    ``logits`` and ``values`` are (E, D) float32 on the same device, ``index`` (E,) long in ``[0, n)``.
    """
    return _SoftmaxAggregate.apply(logits, values, index, int(n))
