"""Gathers and segment sums with fast backward passes (pure torch, any device).

On the CPU, ``index_add_`` / ``scatter_add_`` (the backward of ``index_select``) are the slowest
operations of the whole model: about 85 ms for 42k x 64 floats into 1k rows on 2 cores, against
about 3 ms for ``torch.segment_reduce`` over the same rows once they are sorted by target, and
about 8 ms for a gather. So every index vector is wrapped in an :class:`Index` that knows, once
per forward, how to sort its rows by target (a stable ``argsort``, or nothing when it is sorted
already), and

* :func:`gather` (``x[idx]``) has the backward ``segment_sum(grad[perm])``,
* :func:`scatter` (sum of rows into ``idx``) is ``segment_sum(x[perm])`` with the backward ``grad[idx]``.

For a sorted index both directions are a single pass without any permutation. On CUDA (float32) the
segment sums and the multi-term gathers run as Triton kernels (:mod:`~matfunnel.potential.chgnet.triton_ops`).

Within :func:`~matfunnel.potential.chgnet.mode.plain_autograd` the three functions are plain ``index_select`` /
``index_add`` (differentiable backward passes, for a loss on forces or stress), on any device and dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from matfunnel.potential.chgnet import cpu_ops, triton_ops
from matfunnel.potential.chgnet.graph import argsort_stable
from matfunnel.potential.chgnet.mode import is_plain


class Index:
    """An index vector ``idx`` (E,) into ``n`` rows, with its target-sorted order and row counts."""

    __slots__ = ("idx", "n", "lengths", "perm", "_offsets")

    def __init__(self, idx: Tensor, n: int, *, is_sorted: bool = False):
        self.idx = idx
        self.n = int(n)
        self.lengths = torch.bincount(idx, minlength=self.n) if idx.numel() else idx.new_zeros(self.n)
        self.perm: Tensor | None = None if is_sorted else argsort_stable(idx)
        self._offsets: Tensor | None = None

    @property
    def offsets(self) -> Tensor:
        """CSR offsets (n + 1,) of the target-sorted rows."""
        if self._offsets is None:
            self._offsets = torch.cat([self.lengths.new_zeros(1), torch.cumsum(self.lengths, 0)])
        return self._offsets

    @property
    def sorted(self) -> bool:
        """Whether ``idx`` is already sorted by target (no permutation needed)."""
        return self.perm is None

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def part(self, lo: int, hi: int) -> Index:
        """The index of rows [lo, hi) (same target size)."""
        if lo == 0 and hi == len(self):
            return self
        return Index(self.idx[lo:hi], self.n, is_sorted=self.sorted)


def _segsum(x: Tensor, ix: Index) -> Tensor:
    """Rows of ``x`` (ordered like ``ix.idx``) summed into ``ix.n`` rows, no autograd."""
    if triton_ops.enabled(x, float64=True):  # float64 too: torch's CUDA segment_reduce is slow
        return triton_ops.segment_sum_raw(x, ix.offsets, ix.perm)
    if cpu_ops.enabled(x) and x.shape[0]:
        return cpu_ops.segsum_raw(x, ix.offsets, ix.perm)
    if ix.perm is not None:
        x = x.index_select(0, ix.perm)
    if x.shape[0] == 0:
        return x.new_zeros((ix.n, *x.shape[1:]))
    return torch.segment_reduce(x.contiguous(), "sum", lengths=ix.lengths, axis=0, unsafe=True)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, ix: Index) -> Tensor:
        ctx.ix = ix
        return x.index_select(0, ix.idx)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _segsum(grad, ctx.ix), None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, ix: Index) -> Tensor:
        ctx.ix = ix
        return _segsum(x, ix)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.index_select(0, ctx.ix.idx), None


class _GatherSum(torch.autograd.Function):
    """sum_k xs[k][ix[k]] (+ dense), one output buffer."""

    @staticmethod
    def forward(ctx, ixs, dense, *xs):
        ctx.ixs = ixs
        ctx.has_dense = dense is not None
        if 2 <= len(xs) <= 3 and triton_ops.enabled(xs[0]):
            return triton_ops.gather_sum_raw(list(xs), [ix.idx for ix in ixs], dense)
        out = xs[0].index_select(0, ixs[0].idx)
        for x, ix in zip(xs[1:], ixs[1:], strict=False):
            out += x.index_select(0, ix.idx)
        if dense is not None:
            out += dense
        return out

    @staticmethod
    def backward(ctx, grad):
        grads = [_segsum(grad, ix) if need else None
                 for ix, need in zip(ctx.ixs, ctx.needs_input_grad[2:], strict=False)]
        return (None, grad if ctx.has_dense and ctx.needs_input_grad[1] else None, *grads)


def gather(x: Tensor, ix: Index) -> Tensor:
    """``x[ix.idx]``; backward is a segment sum (``index_add`` in plain mode)."""
    if not x.requires_grad or is_plain():
        return x.index_select(0, ix.idx)
    return _Gather.apply(x, ix)


def scatter(x: Tensor, ix: Index) -> Tensor:
    """Rows of ``x`` summed into ``ix.n`` rows at ``ix.idx``; backward is a gather."""
    if is_plain():
        return x.new_zeros((ix.n, *x.shape[1:])).index_add(0, ix.idx, x)
    if not x.requires_grad:
        return _segsum(x, ix)
    return _Scatter.apply(x, ix)


def gather_sum(pairs: list[tuple[Tensor, Index]], dense: Tensor | None = None) -> Tensor:
    """``sum(x[ix.idx] for x, ix in pairs) + dense`` in one buffer (separate differentiable ops in plain mode)."""
    if is_plain():
        out = dense
        for x, ix in pairs:
            term = x.index_select(0, ix.idx)
            out = term if out is None else out + term
        assert out is not None, "gather_sum needs at least one pair"
        return out
    xs = [x for x, _ in pairs]
    ixs = [ix for _, ix in pairs]
    return _GatherSum.apply(ixs, dense, *xs)
