"""Triton kernels of :mod:`matfunnel.potential.chgnet.triton_ops` (imported on first use only)."""

import triton
import triton.language as tl


@triton.jit
def gather_sum_kernel(out_ptr, x0_ptr, x1_ptr, x2_ptr, d_ptr, i0_ptr, i1_ptr, i2_ptr,
                      s0, s1, s2, n_rows, D,
                      THREE: tl.constexpr, DENSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rm = rows < n_rows
    m2 = rm[:, None] & (cols < D)[None, :]
    i0 = tl.load(i0_ptr + rows, mask=rm, other=0).to(tl.int64)
    i1 = tl.load(i1_ptr + rows, mask=rm, other=0).to(tl.int64)
    acc = tl.load(x0_ptr + i0[:, None] * s0 + cols[None, :], mask=m2, other=0.0)
    acc += tl.load(x1_ptr + i1[:, None] * s1 + cols[None, :], mask=m2, other=0.0)
    if THREE:
        i2 = tl.load(i2_ptr + rows, mask=rm, other=0).to(tl.int64)
        acc += tl.load(x2_ptr + i2[:, None] * s2 + cols[None, :], mask=m2, other=0.0)
    r64 = rows.to(tl.int64)
    if DENSE:
        acc += tl.load(d_ptr + r64[:, None] * D + cols[None, :], mask=m2, other=0.0)
    tl.store(out_ptr + r64[:, None] * D + cols[None, :], acc, mask=m2)


@triton.jit
def _segment_range(off_ptr, seg, n_seg):
    """Rows [lo, hi) of segment ``seg``; past the last segment an empty range (offsets[n_seg] twice)."""
    return tl.load(off_ptr + tl.minimum(seg, n_seg)), tl.load(off_ptr + tl.minimum(seg + 1, n_seg))


@triton.jit
def segment_sum_kernel(out_ptr, x_ptr, perm_ptr, off_ptr, n_seg, D,
                       PERM: tl.constexpr, SEGS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # SEGS consecutive segments per program (a bond's handful of rows would leave most of a program idle)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    for q in tl.static_range(SEGS):
        seg = tl.program_id(0) * SEGS + q
        lo, hi = _segment_range(off_ptr, seg, n_seg)  # nothing is stored past the last segment
        acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=out_ptr.dtype.element_ty)  # float32, or float64 (geometry)
        for start in range(lo, hi, BLOCK_R):
            k = start + tl.arange(0, BLOCK_R)
            km = k < hi
            if PERM:  # noqa: SIM108 - kept as Triton's compile-time (constexpr) branch
                src = tl.load(perm_ptr + k, mask=km, other=0).to(tl.int64)
            else:
                src = k.to(tl.int64)
            acc += tl.load(x_ptr + src[:, None] * D + cols[None, :], mask=km[:, None] & cm[None, :], other=0.0)
        tl.store(out_ptr + seg.to(tl.int64) * D + cols, tl.sum(acc, 0), mask=cm & (seg + 0 * cols < n_seg))


@triton.jit
def layer_norm_rows(x, m2, g, b, F, eps):
    mean = tl.sum(x, 1) / F
    xc = tl.where(m2, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / F + eps)
    xh = xc * rstd[:, None]
    return xh, rstd, xh * g[None, :] + b[None, :]


@triton.jit
def _gated_rows(y_ptr, w_ptr, rows, rm, cols, cm, gc, bc, gg, bg, F, eps, HAS_W: tl.constexpr):
    """The message of ``rows`` (masked by ``rm``; zero outside the mask)."""
    m2 = rm[:, None] & cm[None, :]
    core = tl.load(y_ptr + rows[:, None] * (2 * F) + cols[None, :], mask=m2, other=0.0)
    gate = tl.load(y_ptr + rows[:, None] * (2 * F) + F + cols[None, :], mask=m2, other=0.0)
    _, _, yc = layer_norm_rows(core, m2, gc, bc, F, eps)
    _, _, yg = layer_norm_rows(gate, m2, gg, bg, F, eps)
    msg = yc * tl.sigmoid(yc) * tl.sigmoid(yg)
    if HAS_W:
        msg *= tl.load(w_ptr + rows[:, None] * F + cols[None, :], mask=m2, other=0.0)
    return tl.where(m2, msg, 0.0)


@triton.jit
def gated_fwd_kernel(out_ptr, y_ptr, w_ptr, off_ptr, gc_ptr, bc_ptr, gg_ptr, bg_ptr, n_rows, n_seg, F, eps,
                     SEGMENTS: tl.constexpr, HAS_W: tl.constexpr, SEGS: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_F: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_F)
    cm = cols < F
    gc = tl.load(gc_ptr + cols, mask=cm, other=0.0)
    bc = tl.load(bc_ptr + cols, mask=cm, other=0.0)
    gg = tl.load(gg_ptr + cols, mask=cm, other=0.0)
    bg = tl.load(bg_ptr + cols, mask=cm, other=0.0)
    if SEGMENTS:
        # SEGS consecutive segments per program, each summed over tiles of BLOCK_R rows
        for q in tl.static_range(SEGS):
            seg = pid * SEGS + q
            lo, hi = _segment_range(off_ptr, seg, n_seg)
            acc = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.float32)
            for start in range(lo, hi, BLOCK_R):
                rows = (start + tl.arange(0, BLOCK_R)).to(tl.int64)
                acc += _gated_rows(y_ptr, w_ptr, rows, rows < hi, cols, cm, gc, bc, gg, bg, F, eps, HAS_W)
            tl.store(out_ptr + seg.to(tl.int64) * F + cols, tl.sum(acc, 0), mask=cm & (seg + 0 * cols < n_seg))
    else:
        rows = (pid * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        rm = rows < n_rows
        msg = _gated_rows(y_ptr, w_ptr, rows, rm, cols, cm, gc, bc, gg, bg, F, eps, HAS_W)
        tl.store(out_ptr + rows[:, None] * F + cols[None, :], msg, mask=rm[:, None] & cm[None, :])


@triton.jit
def gated_bwd_kernel(dy_ptr, dw_ptr, g_ptr, seg_ptr, y_ptr, w_ptr, gc_ptr, bc_ptr, gg_ptr, bg_ptr,
                     n_rows, F, eps,
                     SEGMENTS: tl.constexpr, HAS_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_F)
    rm = rows < n_rows
    cm = cols < F
    m2 = rm[:, None] & cm[None, :]
    gc = tl.load(gc_ptr + cols, mask=cm, other=0.0)
    bc = tl.load(bc_ptr + cols, mask=cm, other=0.0)
    gg = tl.load(gg_ptr + cols, mask=cm, other=0.0)
    bg = tl.load(bg_ptr + cols, mask=cm, other=0.0)
    if SEGMENTS:  # noqa: SIM108 - kept as Triton's compile-time (constexpr) branch
        src = tl.load(seg_ptr + rows, mask=rm, other=0).to(tl.int64)
    else:
        src = rows
    g = tl.load(g_ptr + src[:, None] * F + cols[None, :], mask=m2, other=0.0)
    core = tl.load(y_ptr + rows[:, None] * (2 * F) + cols[None, :], mask=m2, other=0.0)
    gate = tl.load(y_ptr + rows[:, None] * (2 * F) + F + cols[None, :], mask=m2, other=0.0)
    xc, rc, yc = layer_norm_rows(core, m2, gc, bc, F, eps)
    xg, rg, yg = layer_norm_rows(gate, m2, gg, bg, F, eps)
    sc = tl.sigmoid(yc)
    s = yc * sc
    t = tl.sigmoid(yg)
    if HAS_W:
        w = tl.load(w_ptr + rows[:, None] * F + cols[None, :], mask=m2, other=0.0)
        tl.store(dw_ptr + rows[:, None] * F + cols[None, :], g * s * t, mask=m2)
        g = g * w
    d_yc = g * t * sc * (1.0 + yc * (1.0 - sc))
    d_yg = g * s * t * (1.0 - t)
    # layer-norm backward: dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * gamma
    dxh = tl.where(m2, d_yc * gc[None, :], 0.0)
    d_core = rc[:, None] * (dxh - (tl.sum(dxh, 1) / F)[:, None] - xc * (tl.sum(dxh * xc, 1) / F)[:, None])
    dxh = tl.where(m2, d_yg * gg[None, :], 0.0)
    d_gate = rg[:, None] * (dxh - (tl.sum(dxh, 1) / F)[:, None] - xg * (tl.sum(dxh * xg, 1) / F)[:, None])
    tl.store(dy_ptr + rows[:, None] * (2 * F) + cols[None, :], d_core, mask=m2)
    tl.store(dy_ptr + rows[:, None] * (2 * F) + F + cols[None, :], d_gate, mask=m2)
