"""Triton kernels for the memory-bound edge/angle pipeline (CUDA), with their backward passes.

Three kernels (autograd is handled by :mod:`~matfunnel.potential.chgnet.ops`, except for :func:`gated`, whose
backward is a kernel here too):

* :func:`gather_sum_raw` - ``out[r] = x0[i0[r]] + x1[i1[r]] (+ x2[i2[r]]) (+ dense[r])``, one pass over the rows
  instead of one pass per term; its backward (one segment sum per source) is done by ``ops``.
* :func:`segment_sum_raw` - ``out[s] = sum_{k in segment s} x[perm[k]]`` for CSR ``offsets`` (optionally through a
  permutation, which fuses the gather of a scatter's sort into the reduction); its backward (a gather) is done by
  :mod:`~matfunnel.potential.chgnet.ops`.
* :func:`gated` - the gated-MLP tail of CHGNet: from ``y = [core | gate]`` before the layer norms,
  ``silu(LN_core(core)) * sigmoid(LN_gate(gate)) * w`` per row, summed over the rows of each segment
  (message + aggregation in one pass: the per-edge message is never written) or written per row
  (angle update). Backward recomputes the forward per row and writes ``dy`` and ``dw``.

Layer-norm affine parameters are frozen model weights (inference), so no gradient is produced for them.

Selection is by :func:`enabled`: on CUDA tensors when triton imports, never on the CPU unless
``TRITON_INTERPRET=1`` is set and :func:`force` asked for it (that is how the CPU tests run them). Only
float32 is handled here; float64 stays on the torch path. Kernels are built on first use so that the
environment seen by ``triton.jit`` is the one at that time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from matfunnel.potential.triton_select import available, enabled, force  # noqa: F401 (re-exported)
from matfunnel.potential.triton_select import pow2 as _pow2


def _k(name: str):
    from matfunnel.potential.chgnet import _triton_kernels

    return getattr(_triton_kernels, name + "_kernel")


def _rows2d(x: Tensor) -> Tensor:
    """A 2-d view with unit column stride (row stride may be anything)."""
    return x if x.stride(-1) == 1 else x.contiguous()


# ---- segment sum ---------------------------------------------------------------------------
def segment_sum_raw(x: Tensor, offsets: Tensor, perm: Tensor | None) -> Tensor:
    """``out[s] = sum(x[perm[k]] for k in range(offsets[s], offsets[s + 1]))`` (``x[k]`` without perm); no autograd."""
    n_seg = offsets.shape[0] - 1
    tail = x.shape[1:]
    d = 1
    for t in tail:
        d *= int(t)
    x2 = x.reshape(x.shape[0], d).contiguous()
    out = x2.new_empty(n_seg, d)
    if n_seg == 0 or d == 0:
        return out.zero_().reshape(n_seg, *tail)
    block_d = min(_pow2(d), 128)
    n_rows = perm.shape[0] if perm is not None else x2.shape[0]
    block_r, segs = _segment_tiles(n_rows, n_seg, max(16, 2048 // block_d))
    grid = (_cdiv(n_seg, segs), _cdiv(d, block_d))
    _k("segment_sum")[grid](out, x2, perm if perm is not None else offsets, offsets, n_seg, d,
                            PERM=perm is not None, SEGS=segs, BLOCK_R=block_r, BLOCK_D=block_d)
    return out.reshape(n_seg, *tail)


def _segment_tiles(n_rows: int, n_seg: int, max_rows: int) -> tuple[int, int]:
    """Rows per tile and segments per program for segments of ``n_rows / n_seg`` rows on average.

    A tile is about one average segment long, and short segments go several to a program (at least 16 rows of
    work each).
    """
    block_r = min(max(_pow2(-(-n_rows // max(n_seg, 1))), 2), max_rows)
    return block_r, max(1, min(8, 16 // block_r))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---- gather sum ----------------------------------------------------------------------------
def gather_sum_raw(xs: list[Tensor], idxs: list[Tensor], dense: Tensor | None) -> Tensor:
    """``sum(x[idx] for x, idx in zip(xs, idxs)) + dense`` for two or three tables, one Triton kernel, no autograd."""
    assert 2 <= len(xs) <= 3
    xs = [_rows2d(x) for x in xs]
    d = xs[0].shape[1]
    n = idxs[0].shape[0]
    out = xs[0].new_empty(n, d)
    if n == 0:
        return out
    block_d = _pow2(d)
    block_r = max(1, 4096 // block_d)
    three = len(xs) == 3
    x2, i2 = (xs[2], idxs[2]) if three else (xs[0], idxs[0])
    dn = dense.contiguous() if dense is not None else out
    _k("gather_sum")[(_cdiv(n, block_r),)](
        out, xs[0], xs[1], x2, dn, idxs[0], idxs[1], i2, xs[0].stride(0), xs[1].stride(0), x2.stride(0), n, d,
        THREE=three, DENSE=dense is not None, BLOCK_R=block_r, BLOCK_D=block_d)
    return out


# ---- gated tail ----------------------------------------------------------------------------
class _Gated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, w, ln, eps, offsets, seg_of_row):
        y = y.contiguous()
        w = w.contiguous() if w is not None else None
        f = y.shape[1] // 2
        segments = offsets is not None
        n_rows = y.shape[0]
        block_f = _pow2(f)
        block_r, segs = max(1, 2048 // block_f), 1
        n_out = offsets.shape[0] - 1 if segments else n_rows
        if segments:
            block_r, segs = _segment_tiles(n_rows, n_out, block_r)
        out = y.new_empty(n_out, f)
        if n_out:
            grid = (_cdiv(n_out, segs),) if segments else (_cdiv(n_rows, block_r),)
            _k("gated_fwd")[grid](out, y, w if w is not None else y, offsets if segments else y, *ln, n_rows, n_out, f,
                                  eps, SEGMENTS=segments, HAS_W=w is not None, SEGS=segs, BLOCK_R=block_r,
                                  BLOCK_F=block_f)
        ctx.save_for_backward(y, w, *ln, seg_of_row)
        ctx.eps, ctx.segments, ctx.has_w = eps, segments, w is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        y, w, gc, bc, gg, bg, seg_of_row = ctx.saved_tensors
        grad = grad.contiguous()
        n_rows, f = y.shape[0], y.shape[1] // 2
        dy = torch.empty_like(y)
        dw = torch.empty_like(w) if ctx.has_w else None
        if n_rows:
            block_f = _pow2(f)
            block_r = max(1, 2048 // block_f)
            _k("gated_bwd")[(_cdiv(n_rows, block_r),)](
                dy, dw if dw is not None else dy, grad, seg_of_row if ctx.segments else y, y,
                w if w is not None else y, gc, bc, gg, bg, n_rows, f, ctx.eps,
                SEGMENTS=ctx.segments, HAS_W=ctx.has_w, BLOCK_R=block_r, BLOCK_F=block_f)
        return dy, dw, None, None, None, None


def gated(y: Tensor, w: Tensor | None, ln: tuple[Tensor, Tensor, Tensor, Tensor], eps: float,
          offsets: Tensor | None = None, seg_of_row: Tensor | None = None) -> Tensor:
    """``silu(LN_c(y[:, :F])) * sigmoid(LN_g(y[:, F:])) * w``, summed per segment when ``offsets`` is given.

    ``ln`` = (core weight, core bias, gate weight, gate bias); rows must be sorted by segment, and
    ``seg_of_row`` (E,) gives each row's segment.
    """
    return _Gated.apply(y, w, tuple(t.contiguous() for t in ln), float(eps), offsets, seg_of_row)
