"""Triton kernels of :mod:`matfunnel.potential.matris.triton_ops` (imported on first use only)."""

import triton
import triton.language as tl


@triton.jit
def softmax_aggregate_fwd_kernel(out_ptr, lse_ptr, l_ptr, v_ptr, perm_ptr, off_ptr, D,
                                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """One segment x one channel block: online (streaming) softmax over the segment's rows.

    ``out[s, c] = sum_k softmax_c(l)[k] v[k, c]`` and ``lse[s, c] = log sum_k exp(l[k, c])`` over the rows
    ``perm[offsets[s]:offsets[s + 1]]``; an empty segment gets 0 for both.
    """
    seg = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    lo = tl.load(off_ptr + seg)
    hi = tl.load(off_ptr + seg + 1)
    mx = tl.full([BLOCK_D], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_D], dtype=tl.float32)
    num = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_R):
        k = start + tl.arange(0, BLOCK_R)
        km = k < hi
        row = tl.load(perm_ptr + k, mask=km, other=0).to(tl.int64)
        m2 = km[:, None] & cm[None, :]
        ptr = row[:, None] * D + cols[None, :]
        x = tl.load(l_ptr + ptr, mask=m2, other=0.0)
        x = tl.where(km[:, None], x, float("-inf"))  # padding rows weigh exp(-inf) = 0
        v = tl.load(v_ptr + ptr, mask=m2, other=0.0)
        new_mx = tl.maximum(mx, tl.max(x, 0))
        alpha = tl.exp(mx - new_mx)  # 0 on the first block (mx = -inf)
        w = tl.exp(x - new_mx[None, :])
        den = den * alpha + tl.sum(w, 0)
        num = num * alpha + tl.sum(w * v, 0)
        mx = new_mx
    has = den > 0
    safe = tl.where(has, den, 1.0)
    o64 = seg.to(tl.int64) * D + cols
    tl.store(out_ptr + o64, tl.where(has, num / safe, 0.0), mask=cm)
    tl.store(lse_ptr + o64, tl.where(has, mx + tl.log(safe), 0.0), mask=cm)


@triton.jit
def softmax_aggregate_bwd_kernel(dl_ptr, dv_ptr, g_ptr, l_ptr, v_ptr, idx_ptr, lse_ptr, out_ptr, n_rows, D,
                                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per row ``k`` with segment ``s``: ``p = exp(l - lse[s])``, ``dv = g[s] p``, ``dl = dv (v - out[s])``."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rm = rows < n_rows
    m2 = rm[:, None] & (cols < D)[None, :]
    seg = tl.load(idx_ptr + rows, mask=rm, other=0).to(tl.int64)
    sp = seg[:, None] * D + cols[None, :]
    rp = rows.to(tl.int64)[:, None] * D + cols[None, :]
    x = tl.load(l_ptr + rp, mask=m2, other=0.0)
    v = tl.load(v_ptr + rp, mask=m2, other=0.0)
    lse = tl.load(lse_ptr + sp, mask=m2, other=0.0)
    o = tl.load(out_ptr + sp, mask=m2, other=0.0)
    g = tl.load(g_ptr + sp, mask=m2, other=0.0)
    dv = g * tl.exp(x - lse)
    tl.store(dv_ptr + rp, dv, mask=m2)
    tl.store(dl_ptr + rp, dv * (v - o), mask=m2)
