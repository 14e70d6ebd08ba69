// Fused CPU kernels for matfunnel's CHGNet (float32), compiled on first use by cpu_ops.py.
//
// gated_fwd / gated_bwd: one pass over the rows (directed edges or angles) of a CHGNet gated MLP:
//   pre  = sum_t table_t[idx_t[r]] (+ X[r] @ Wd^T)          first layer, as gathered projections
//   y    = [silu(pre_c) @ W2c^T + b2c, silu(pre_g) @ W2g^T + b2g]   (hidden layer; or y = pre)
//   m    = silu(LN_c(y_c)) * sigmoid(LN_g(y_g)) (* w[r])
//   out  = segment sum of m over the sorted segment ids seg[r], or per row (+ X[r] as a residual)
// and its backward (gradients of the tables' rows, X and w; the weights are frozen). Rows are
// processed six at a time in registers; nothing of width 128 is written per row except what the
// backward needs (SiLU'(pre) and y, when the caller asks to save them) and the row gradients.
// Variants the model uses to avoid whole passes over (rows, 64-128) tensors:
//   - a table may come in two pieces (short and long bonds), read as if concatenated;
//   - the edge weight may be a product of two gathered tables, w[r] = wt0[idx0[r]] * wt1[idx1[r]];
//   - X may be narrow (<= 32: the angular basis the first block's angle features are a linear map of),
//     with the residual from a separate 64-wide input;
//   - the backward sums the gradients of table 0 (the segment table) and of table 1 (small: atoms, short
//     bonds; one copy per thread) itself, so that only table 2 needs row gradients and a segment sum.
// segsum: rows (optionally through a permutation) summed into sorted segments.
// multi_linear_fwd / _bwd: several 128-wide projections of one narrow input (the long bonds' basis).
// counting_argsort, neighbor_pairs: graph construction.
//
// Threads: OpenMP, from the libgomp torch already loaded (same soname, so one thread pool).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <omp.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
#define TILE 6  // rows per register tile

static inline v16 ld(const float* p) { v16 v; std::memcpy(&v, p, 64); return v; }
static inline void st(float* p, v16 v) { std::memcpy(p, &v, 64); }
static inline v16 splat(float a) { return (v16){} + a; }
static inline float hsum(v16 v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#else
    float s = 0.f;
    for (int i = 0; i < 16; ++i) s += v[i];
    return s;
#endif
}
// store a row of n floats that will not be read again soon (bypasses the cache when 64-byte aligned)
static inline void stream_row(float* dst, const float* src, int n) {
#if defined(__AVX512F__)
    if (((uintptr_t)dst & 63) == 0) {
        for (int j = 0; j < n; j += 16) _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
        return;
    }
#endif
    std::memcpy(dst, src, sizeof(float) * n);
}
static inline void stream_v16(float* dst, v16 v) {
#if defined(__AVX512F__)
    if (((uintptr_t)dst & 63) == 0) {
        _mm512_stream_ps(dst, (__m512)v);
        return;
    }
#endif
    st(dst, v);
}
static inline void prefetch_row(const float* p) {
    for (int k = 0; k < 512; k += 64) __builtin_prefetch((const char*)p + k, 0, 1);
}

// 1 / x to about 1 ulp: the 14-bit estimate and one Newton step (or a division)
static inline v16 recip(v16 x) {
#if defined(__AVX512F__)
    v16 r = (v16)_mm512_rcp14_ps((__m512)x);
    return r * (2.0f - x * r);
#else
    return 1.0f / x;
#endif
}

// exp(x) = 2^n * 2^f with t = x log2(e), n = round(t), f = t - n in [-1/2, 1/2], 2^f by a degree-6
// polynomial (relative error 1e-7; the rounding of t adds |x| * 6e-8, harmless for the bounded
// arguments of SiLU and sigmoid here). On Zen 4 every 512-bit FP instruction takes a whole cycle of
// both FP pipes, so the count matters: 11 instructions against 15 for Cephes' two-step reduction.
// exp(x) for x = k * t / log2(e): the scale k is folded into the first product (k = -1: exp(-t))
template <int K = 1>
static inline v16 vexp(v16 x) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    __m512 t = _mm512_mul_ps((__m512)x, _mm512_set1_ps(K * 1.44269504088896341f));
    t = _mm512_range_ps(t, _mm512_set1_ps(126.0f), 0x02);  // sign(t) * min(|t|, 126): finite, inf-safe
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.5345785095e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399931677e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618489063e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550328776e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264689e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314720574e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return (v16)_mm512_scalef_ps(p, n);
#else
    x = static_cast<float>(K) * x;
    const v16 hi = splat(88.3762626647949f), lo = splat(-87.3365447504019f);
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    const v16 magic = splat(12582912.0f);  // 1.5 * 2^23: round to nearest
    v16 t = x * 1.44269504088896341f + magic;
    v16 n = t - magic;
    vi16 ni = (vi16)t - (vi16)magic;
    v16 r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    v16 p = splat(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    vi16 bits = (vi16)p + (ni << 23);
    return (v16)bits;
#endif
}
static inline v16 vsigmoid(v16 x) { return recip(1.0f + vexp<-1>(x)); }

// acc[i][j] (+)= sum_k A[i*lda + k] * B[k*ldb + 16j .. 16j+15], j < NV (16 NV outputs), i < NB
template <int NB, int NV>
static inline void mmv(const float* __restrict A, int64_t lda, int K, const float* __restrict B, int64_t ldb,
                       v16 (*acc)[NV]) {
    // accumulators in registers (acc may alias A as far as the compiler knows)
    v16 c[NB][NV];
    for (int i = 0; i < NB; ++i)
        for (int j = 0; j < NV; ++j) c[i][j] = acc[i][j];
    for (int k = 0; k < K; ++k) {
        const float* b = B + k * ldb;
        v16 bv[NV];
        for (int j = 0; j < NV; ++j) bv[j] = ld(b + 16 * j);
#pragma GCC unroll 8
        for (int i = 0; i < NB; ++i) {
            float a = A[i * lda + k];
            for (int j = 0; j < NV; ++j) c[i][j] += a * bv[j];
        }
    }
    for (int i = 0; i < NB; ++i)
        for (int j = 0; j < NV; ++j) acc[i][j] = c[i][j];
}
template <int NV>
static void mmvn(int nb, const float* A, int64_t lda, int K, const float* B, int64_t ldb, v16 (*acc)[NV]) {
    switch (nb) {
        case 6: mmv<6, NV>(A, lda, K, B, ldb, acc); break;
        case 5: mmv<5, NV>(A, lda, K, B, ldb, acc); break;
        case 4: mmv<4, NV>(A, lda, K, B, ldb, acc); break;
        case 3: mmv<3, NV>(A, lda, K, B, ldb, acc); break;
        case 2: mmv<2, NV>(A, lda, K, B, ldb, acc); break;
        default: mmv<1, NV>(A, lda, K, B, ldb, acc); break;
    }
}
// 64 outputs (the widths of the model)
static inline void mm64n(int nb, const float* A, int64_t lda, int K, const float* B, int64_t ldb, v16 (*acc)[4]) {
    mmvn<4>(nb, A, lda, K, B, ldb, acc);
}

// argument slots (mirrored in cpu_ops.py)
enum {
    P_TAB0, P_TAB1, P_TAB2, P_IDX0, P_IDX1, P_IDX2, P_X, P_WDT, P_WD, P_W2T, P_W2, P_B2, P_LN, P_W,
    P_SEG, P_OUT, P_SAVE_PRE, P_SAVE_Y, P_GOUT, P_GPRE, P_GX, P_GW, P_GTAB0, P_TABHI0, P_TABHI1, P_TABHI2, P_GTAB1,
    P_WT0, P_WT1, P_GWT0, P_GWT1, P_XRES, P_COUNT
};
enum { I_R, I_NT, I_DX, I_HIDDEN, I_MODE, I_RESIDUAL, I_NSEG, I_THREADS, I_SAVED, I_SPLIT0, I_SPLIT1, I_SPLIT2,
       I_N1, I_COUNT };

struct Args {
    // table t is tab[t] for indices below split[t] and tabhi[t] (rows from split[t] on) above, when tabhi[t]
    // is given: a table kept in two pieces (e.g. short and long bonds) is never concatenated
    const float* tab[3];
    const float* tabhi[3];
    int64_t split[3];
    const int64_t* idx[3];
    const float *X, *WdT, *Wd, *W2T, *W2, *b2, *ln, *w;
    const int64_t* seg;
    float* out;
    float *save_pre, *save_y;
    const float* gout;
    float *gpre, *gX, *gw, *gtab0;
    // gradient of table 1 (a small table: atoms, short bonds) summed in the kernel, one (n1, 128) copy per
    // thread (zeroed by the caller; the caller adds the copies): no row gradient written and summed again
    float* gtab1;
    // the edge weight as a product of two gathered 64-wide tables, w[r] = wt0[idx[0][r]] * wt1[idx[1][r]]
    // (the angles' bond weights; table 0's index is the segment id), and their gradients: gwt0 summed per
    // segment, gwt1 into one (n1, 64) copy per thread (zeroed and added up by the caller)
    const float *wt0, *wt1;
    float *gwt0, *gwt1;
    // the residual added to per-row outputs, when it is not X (X may then be narrow: dx <= 32, e.g. the basis
    // the first block's angle features are a linear map of); its gradient is the caller's (gout itself)
    const float* xres;
    int64_t R, nseg, n1;
    int nt, dx, hidden, mode, residual, threads, saved;
};

static Args unpack(void** p, const int64_t* iv) {
    Args a;
    for (int t = 0; t < 3; ++t) {
        a.tab[t] = (const float*)p[P_TAB0 + t];
        a.idx[t] = (const int64_t*)p[P_IDX0 + t];
        a.tabhi[t] = (const float*)p[P_TABHI0 + t];
        a.split[t] = iv[I_SPLIT0 + t];
    }
    a.X = (const float*)p[P_X];
    a.WdT = (const float*)p[P_WDT];
    a.Wd = (const float*)p[P_WD];
    a.W2T = (const float*)p[P_W2T];
    a.W2 = (const float*)p[P_W2];
    a.b2 = (const float*)p[P_B2];
    a.ln = (const float*)p[P_LN];
    a.w = (const float*)p[P_W];
    a.seg = (const int64_t*)p[P_SEG];
    a.out = (float*)p[P_OUT];
    a.save_pre = (float*)p[P_SAVE_PRE];
    a.save_y = (float*)p[P_SAVE_Y];
    a.gout = (const float*)p[P_GOUT];
    a.gpre = (float*)p[P_GPRE];
    a.gX = (float*)p[P_GX];
    a.gw = (float*)p[P_GW];
    a.gtab0 = (float*)p[P_GTAB0];
    a.gtab1 = (float*)p[P_GTAB1];
    a.wt0 = (const float*)p[P_WT0];
    a.wt1 = (const float*)p[P_WT1];
    a.gwt0 = (float*)p[P_GWT0];
    a.gwt1 = (float*)p[P_GWT1];
    a.xres = (const float*)p[P_XRES];
    a.n1 = iv[I_N1];
    a.R = iv[I_R];
    a.nt = (int)iv[I_NT];
    a.dx = (int)iv[I_DX];
    a.hidden = (int)iv[I_HIDDEN];
    a.mode = (int)iv[I_MODE];
    a.residual = (int)iv[I_RESIDUAL];
    a.nseg = iv[I_NSEG];
    a.threads = (int)iv[I_THREADS];
    a.saved = (int)iv[I_SAVED];
    return a;
}

// rows [lo, hi) of thread t of n, moved so that no segment of the sorted ids seg is split
static void thread_rows(const int64_t* seg, int64_t R, int t, int n, int64_t* lo, int64_t* hi) {
    auto cut = [&](int k) -> int64_t {
        int64_t r = R * k / n;
        if (seg) {
            while (r > 0 && r < R && seg[r] == seg[r - 1]) ++r;
        }
        return r;
    };
    *lo = cut(t);
    *hi = cut(t + 1);
}

// 16 lanes (j-th block) of the edge weight of row r: given per row, or a product of two gathered rows
static inline v16 edge_weight(const Args& a, int64_t r, int j) {
    if (a.w) return ld(a.w + r * 64 + 16 * j);
    return ld(a.wt0 + a.idx[0][r] * 64 + 16 * j) * ld(a.wt1 + a.idx[1][r] * 64 + 16 * j);
}

// row idx[t][r] of table t
static inline const float* table_row(const Args& a, int t, int64_t r) {
    const int64_t i = a.idx[t][r];
    if (a.tabhi[t] && i >= a.split[t]) return a.tabhi[t] + (i - a.split[t]) * 128;
    return a.tab[t] + i * 128;
}

// pre and y (NB x 128) of rows r0.. r0+nb, and silu'(pre) into ds when given (hidden layer only)
static void first_layers(const Args& a, int64_t r0, int nb, float (*pre)[128], float (*y)[128],
                         float (*ds)[128]) {
    // the gathered rows of the tile after next (random rows of large tables: the prefetcher cannot guess them)
    for (int64_t r = r0 + 2 * TILE; r < r0 + 3 * TILE && r < a.R; ++r)
        for (int t = 1; t < a.nt; ++t) prefetch_row(table_row(a, t, r));
    for (int i = 0; i < nb; ++i) {
        int64_t r = r0 + i;
        v16 acc[8];
        const float* t0 = table_row(a, 0, r);
        for (int j = 0; j < 8; ++j) acc[j] = ld(t0 + 16 * j);
        for (int t = 1; t < a.nt; ++t) {
            const float* tt = table_row(a, t, r);
            for (int j = 0; j < 8; ++j) acc[j] += ld(tt + 16 * j);
        }
        for (int j = 0; j < 8; ++j) st(pre[i] + 16 * j, acc[j]);
    }
    if (a.dx) {
        for (int h = 0; h < 2; ++h) {
            v16 acc[TILE][4];
            for (int i = 0; i < nb; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = ld(pre[i] + 64 * h + 16 * j);
            mm64n(nb, a.X + r0 * a.dx, a.dx, a.dx, a.WdT + 64 * h, 128, acc);
            for (int i = 0; i < nb; ++i)
                for (int j = 0; j < 4; ++j) st(pre[i] + 64 * h + 16 * j, acc[i][j]);
        }
    }
    if (!a.hidden) {
        for (int i = 0; i < nb; ++i) std::memcpy(y[i], pre[i], 128 * sizeof(float));
        return;
    }
    float s[TILE][128] __attribute__((aligned(64)));
    for (int i = 0; i < nb; ++i)
        for (int j = 0; j < 8; ++j) {
            v16 x = ld(pre[i] + 16 * j);
            v16 sg = vsigmoid(x);
            st(s[i] + 16 * j, x * sg);
            if (ds) st(ds[i] + 16 * j, sg * (1.0f + x * (1.0f - sg)));
        }
    for (int h = 0; h < 2; ++h) {
        v16 acc[TILE][4];
        for (int i = 0; i < nb; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] = ld(a.b2 + 64 * h + 16 * j);
        mm64n(nb, s[0] + 64 * h, 128, 64, a.W2T + 4096 * h, 64, acc);
        for (int i = 0; i < nb; ++i)
            for (int j = 0; j < 4; ++j) st(y[i] + 64 * h + 16 * j, acc[i][j]);
    }
}

// Layer-norm statistics of a 64-wide half row, two-pass (stable). Each is a chain of two horizontal sums, a
// square root and a division, about 100 cycles of latency: the kernels take the statistics of a whole tile
// of rows first (independent chains the core overlaps) instead of finishing one row before the next.
struct LnStat {
    float mean, rstd;
};

static inline LnStat ln_stat(const float* y, float eps) {
    v16 v[4];
    for (int j = 0; j < 4; ++j) v[j] = ld(y + 16 * j);
    const float mean = hsum((v[0] + v[1]) + (v[2] + v[3])) * (1.0f / 64);
    v16 sq[2] = {};
    for (int j = 0; j < 4; ++j) {
        v[j] -= mean;
        sq[j & 1] += v[j] * v[j];
    }
    const float var = hsum(sq[0] + sq[1]) * (1.0f / 64);
    return {mean, 1.0f / std::sqrt(var + eps)};
}

// both halves' statistics for the rows of a tile
static inline void tile_ln_stats(const float (*y)[128], int nb, float eps, LnStat* stc, LnStat* stg) {
    for (int i = 0; i < nb; ++i) {
        stc[i] = ln_stat(y[i], eps);
        stg[i] = ln_stat(y[i] + 64, eps);
    }
}

struct LnOut {
    v16 z[4];
    float rstd;
};

static inline LnOut layer_norm(const float* y, LnStat st) {
    LnOut o;
    o.rstd = st.rstd;
    for (int j = 0; j < 4; ++j) o.z[j] = (ld(y + 16 * j) - st.mean) * st.rstd;
    return o;
}

// Flush denormals to zero (and read them as zero) in this thread while a kernel runs: a sigmoid far in
// its tail or a product of small gradients can land below 1.2e-38, where x86 arithmetic takes microcode
// assists; values that small are zero for every result here
struct FlushDenormals {
#if defined(__SSE__)
    unsigned int saved;
    FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
    ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

static inline void store_fence() {
#if defined(__AVX512F__)
    _mm_sfence();
#endif
}

extern "C" void gated_fwd(void** p, const int64_t* iv, float eps) {
    Args a = unpack(p, iv);
    const float *gc = a.ln, *bc = a.ln + 64, *gg = a.ln + 128, *bg = a.ln + 192;
    if (a.mode == 0) std::memset(a.out, 0, sizeof(float) * a.nseg * 64);
#pragma omp parallel num_threads(a.threads)
    {
        FlushDenormals ftz;
        int nthr = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t lo, hi;
        thread_rows(a.seg, a.R, t, nthr, &lo, &hi);
        float pre[TILE][128] __attribute__((aligned(64)));
        float y[TILE][128] __attribute__((aligned(64)));
        float ds[TILE][128] __attribute__((aligned(64)));
        for (int64_t r0 = lo; r0 < hi; r0 += TILE) {
            int nb = (int)(hi - r0 < TILE ? hi - r0 : TILE);
            first_layers(a, r0, nb, pre, y, a.save_pre ? ds : nullptr);
            LnStat stc[TILE], stg[TILE];
            tile_ln_stats(y, nb, eps, stc, stg);
            for (int i = 0; i < nb; ++i) {
                int64_t r = r0 + i;
                if (a.save_y) stream_row(a.save_y + r * 128, y[i], 128);
                if (a.save_pre) stream_row(a.save_pre + r * 128, ds[i], 128);  // silu'(pre)
                LnOut c = layer_norm(y[i], stc[i]), g = layer_norm(y[i] + 64, stg[i]);
                float* o = a.mode == 0 ? a.out + a.seg[r] * 64 : a.out + r * 64;
                for (int j = 0; j < 4; ++j) {
                    v16 lc = c.z[j] * ld(gc + 16 * j) + ld(bc + 16 * j);
                    v16 lg = g.z[j] * ld(gg + 16 * j) + ld(bg + 16 * j);
                    v16 m = lc * vsigmoid(lc) * vsigmoid(lg);
                    if (a.w || a.wt0) m *= edge_weight(a, r, j);
                    if (a.mode == 0) {
                        st(o + 16 * j, ld(o + 16 * j) + m);
                    } else {
                        if (a.residual) m += ld((a.xres ? a.xres : a.X) + r * 64 + 16 * j);
                        stream_v16(o + 16 * j, m);
                    }
                }
            }
        }
        store_fence();
    }
}

extern "C" void gated_bwd(void** p, const int64_t* iv, float eps) {
    Args a = unpack(p, iv);
    const float *gc = a.ln, *bc = a.ln + 64, *gg = a.ln + 128, *bg = a.ln + 192;
    if (a.gtab0) std::memset(a.gtab0, 0, sizeof(float) * a.nseg * 128);
    if (a.gwt0) std::memset(a.gwt0, 0, sizeof(float) * a.nseg * 64);
#pragma omp parallel num_threads(a.threads)
    {
        FlushDenormals ftz;
        int nthr = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t lo, hi;
        thread_rows(a.seg, a.R, t, nthr, &lo, &hi);
        float pre[TILE][128] __attribute__((aligned(64)));  // silu'(pre) in the backward
        float y[TILE][128] __attribute__((aligned(64)));
        float gy[TILE][128] __attribute__((aligned(64)));
        float gp[TILE][128] __attribute__((aligned(64)));
        for (int64_t r0 = lo; r0 < hi; r0 += TILE) {
            int nb = (int)(hi - r0 < TILE ? hi - r0 : TILE);
            if (a.saved) {
                // the next tile's saved rows (streamed out in the forward, so they come from memory)
                for (int64_t r = r0 + TILE; r < r0 + 2 * TILE && r < hi; ++r) {
                    prefetch_row(a.save_y + r * 128);
                    if (a.hidden) prefetch_row(a.save_pre + r * 128);
                }
                for (int i = 0; i < nb; ++i) {
                    std::memcpy(y[i], a.save_y + (r0 + i) * 128, 512);
                    if (a.hidden) std::memcpy(pre[i], a.save_pre + (r0 + i) * 128, 512);
                }
            } else {
                float y2[TILE][128] __attribute__((aligned(64)));
                first_layers(a, r0, nb, y2, y, pre);  // pre <- silu'(pre)
            }
            LnStat stc[TILE], stg[TILE];
            tile_ln_stats(y, nb, eps, stc, stg);
            for (int i = 0; i < nb; ++i) {
                int64_t r = r0 + i;
                const float* go = a.mode == 0 ? a.gout + a.seg[r] * 64 : a.gout + r * 64;
                LnOut c = layer_norm(y[i], stc[i]), g = layer_norm(y[i] + 64, stg[i]);
                v16 glc[4], glg[4];
                for (int j = 0; j < 4; ++j) {
                    v16 lc = c.z[j] * ld(gc + 16 * j) + ld(bc + 16 * j);
                    v16 lg = g.z[j] * ld(gg + 16 * j) + ld(bg + 16 * j);
                    v16 sc = vsigmoid(lc), gate = vsigmoid(lg);
                    v16 core = lc * sc;
                    v16 gm = ld(go + 16 * j);
                    if (a.w) {
                        v16 wv = ld(a.w + r * 64 + 16 * j);
                        if (a.gw) stream_v16(a.gw + r * 64 + 16 * j, gm * core * gate);
                        gm *= wv;
                    } else if (a.wt0) {
                        const float* w0 = a.wt0 + a.idx[0][r] * 64 + 16 * j;
                        const float* w1 = a.wt1 + a.idx[1][r] * 64 + 16 * j;
                        v16 gwv = gm * core * gate;
                        if (a.gwt0) {
                            float* g0 = a.gwt0 + a.idx[0][r] * 64 + 16 * j;  // the segment id: this thread's
                            st(g0, ld(g0) + gwv * ld(w1));
                        }
                        if (a.gwt1) {
                            float* g1 = a.gwt1 + (t * a.n1 + a.idx[1][r]) * 64 + 16 * j;
                            st(g1, ld(g1) + gwv * ld(w0));
                        }
                        gm *= ld(w0) * ld(w1);
                    }
                    glc[j] = gm * gate * (sc * (1.0f + lc * (1.0f - sc))) * ld(gc + 16 * j);
                    glg[j] = gm * core * gate * (1.0f - gate) * ld(gg + 16 * j);
                }
                // layer-norm backward: rstd * (gz - mean(gz) - z * mean(gz * z))
                v16 s1 = {}, s2 = {}, u1 = {}, u2 = {};
                for (int j = 0; j < 4; ++j) {
                    s1 += glc[j];
                    s2 += glc[j] * c.z[j];
                    u1 += glg[j];
                    u2 += glg[j] * g.z[j];
                }
                float m1 = hsum(s1) / 64, m2 = hsum(s2) / 64, n1 = hsum(u1) / 64, n2 = hsum(u2) / 64;
                for (int j = 0; j < 4; ++j) {
                    st(gy[i] + 16 * j, (glc[j] - m1 - c.z[j] * m2) * c.rstd);
                    st(gy[i] + 64 + 16 * j, (glg[j] - n1 - g.z[j] * n2) * g.rstd);
                }
            }
            if (a.hidden) {
                for (int h = 0; h < 2; ++h) {
                    v16 acc[TILE][4] = {};
                    mm64n(nb, gy[0] + 64 * h, 128, 64, a.W2 + 4096 * h, 64, acc);
                    for (int i = 0; i < nb; ++i)
                        for (int j = 0; j < 4; ++j)  // pre holds silu'(pre) here
                            st(gp[i] + 64 * h + 16 * j, acc[i][j] * ld(pre[i] + 64 * h + 16 * j));
                }
            } else {
                for (int i = 0; i < nb; ++i) std::memcpy(gp[i], gy[i], 512);
            }
            for (int i = 0; i < nb; ++i) {
                int64_t r = r0 + i;
                if (a.gpre) stream_row(a.gpre + r * 128, gp[i], 128);
                if (a.gtab0) {
                    float* gt = a.gtab0 + a.seg[r] * 128;
                    for (int j = 0; j < 8; ++j) st(gt + 16 * j, ld(gt + 16 * j) + ld(gp[i] + 16 * j));
                }
                if (a.gtab1) {
                    float* gt = a.gtab1 + (t * a.n1 + a.idx[1][r]) * 128;
                    for (int j = 0; j < 8; ++j) st(gt + 16 * j, ld(gt + 16 * j) + ld(gp[i] + 16 * j));
                }
            }
            if (a.gX && a.dx > 32) {  // Wd (128, 64), gX (R, 64)
                v16 acc[TILE][4] = {};
                if (a.residual && !a.xres)
                    for (int i = 0; i < nb; ++i)
                        for (int j = 0; j < 4; ++j) acc[i][j] = ld(a.gout + (r0 + i) * 64 + 16 * j);
                mm64n(nb, gp[0], 128, 128, a.Wd, 64, acc);
                for (int i = 0; i < nb; ++i)
                    for (int j = 0; j < 4; ++j) stream_v16(a.gX + (r0 + i) * 64 + 16 * j, acc[i][j]);
            } else if (a.gX) {  // narrow X: Wd zero-padded to (128, 32), gX (R, 32)
                v16 acc[TILE][2] = {};
                mmvn<2>(nb, gp[0], 128, 128, a.Wd, 32, acc);
                for (int i = 0; i < nb; ++i)
                    for (int j = 0; j < 2; ++j) stream_v16(a.gX + (r0 + i) * 32 + 16 * j, acc[i][j]);
            }
        }
        store_fence();
    }
}

// out[s] = sum of x[perm[r]] (or x[r]) for r in [off[s], off[s+1]); D floats per row
extern "C" void segsum(const float* x, const int64_t* perm, const int64_t* off, int64_t nseg, int64_t D,
                       float* out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 256)
    for (int64_t s = 0; s < nseg; ++s) {
        float* o = out + s * D;
        int64_t b = off[s], e = off[s + 1];
        if (D % 16 == 0 && D <= 256) {
            v16 acc[16] = {};
            int nv = (int)(D / 16);
            for (int64_t r = b; r < e; ++r) {
                if (perm && r + 8 < e) {  // rows come in random order: fetch ahead
                    const char* ahead = (const char*)(x + perm[r + 8] * D);
                    for (int64_t k = 0; k < D * 4; k += 64) __builtin_prefetch(ahead + k, 0, 0);
                }
                const float* row = x + (perm ? perm[r] : r) * D;
                for (int j = 0; j < nv; ++j) acc[j] += ld(row + 16 * j);
            }
            for (int j = 0; j < nv; ++j) st(o + 16 * j, acc[j]);
        } else {
            for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
            for (int64_t r = b; r < e; ++r) {
                const float* row = x + (perm ? perm[r] : r) * D;
                for (int64_t d = 0; d < D; ++d) o[d] += row[d];
            }
        }
    }
}

// Canonical neighbour pairs within `cutoff` of a batch of periodic structures (cell lists, every image).
// frac (N, 3) and lattice (B, 3, 3) float64; counts (B,). A pair is kept once: i < j, or i == j with a
// lexicographically positive image. Writes up to `cap` pairs (i, j, image relative to the unwrapped
// input coordinates, distance) and returns how many there are (call again with more room if > cap).
extern "C" int64_t neighbor_pairs(const double* frac, const double* lattice, const int64_t* counts, int64_t B,
                                  double cutoff, double self_tol, int64_t cap, int64_t* oi, int64_t* oj,
                                  double* oimg, double* od) {
    int64_t total = 0, base = 0;
    const double r2 = cutoff * cutoff, tol2 = self_tol * self_tol;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t n = counts[b];
        const double* L = lattice + 9 * b;
        const double* a0 = L;
        const double* a1 = L + 3;
        const double* a2 = L + 6;
        auto cross = [](const double* u, const double* v, double* w) {
            w[0] = u[1] * v[2] - u[2] * v[1];
            w[1] = u[2] * v[0] - u[0] * v[2];
            w[2] = u[0] * v[1] - u[1] * v[0];
        };
        double c12[3], c20[3], c01[3];
        cross(a1, a2, c12);
        cross(a2, a0, c20);
        cross(a0, a1, c01);
        double vol = std::fabs(a0[0] * c12[0] + a0[1] * c12[1] + a0[2] * c12[2]);
        double area[3] = {std::sqrt(c12[0] * c12[0] + c12[1] * c12[1] + c12[2] * c12[2]),
                          std::sqrt(c20[0] * c20[0] + c20[1] * c20[1] + c20[2] * c20[2]),
                          std::sqrt(c01[0] * c01[0] + c01[1] * c01[1] + c01[2] * c01[2])};
        int64_t nb[3], reach[3];
        for (int k = 0; k < 3; ++k) {
            double spacing = vol / area[k];
            double f = std::floor(spacing / cutoff);
            nb[k] = (int64_t)(f < 1 ? 1 : (f > 64 ? 64 : f));
            double width = spacing / nb[k];
            reach[k] = (int64_t)std::ceil(cutoff / width * (1 + 1e-9));
        }
        const int64_t nbins = nb[0] * nb[1] * nb[2];
        // wrapped coordinates, bins, atoms sorted by bin (counting sort)
        double* fw = new double[3 * n];
        double* sh = new double[3 * n];
        int64_t* bin = new int64_t[n];
        int64_t* start = new int64_t[nbins + 1]();
        int64_t* sorted = new int64_t[n];
        for (int64_t a = 0; a < n; ++a) {
            int64_t c[3];
            for (int k = 0; k < 3; ++k) {
                double f = frac[3 * (base + a) + k];
                double s = std::floor(f);
                sh[3 * a + k] = s;
                fw[3 * a + k] = f - s;
                int64_t ck = (int64_t)(fw[3 * a + k] * nb[k]);
                c[k] = ck < 0 ? 0 : (ck > nb[k] - 1 ? nb[k] - 1 : ck);
            }
            bin[a] = (c[0] * nb[1] + c[1]) * nb[2] + c[2];
            start[bin[a] + 1]++;
        }
        for (int64_t k = 0; k < nbins; ++k) start[k + 1] += start[k];
        {
            int64_t* fill = new int64_t[nbins];
            for (int64_t k = 0; k < nbins; ++k) fill[k] = start[k];
            for (int64_t a = 0; a < n; ++a) sorted[fill[bin[a]]++] = a;
            delete[] fill;
        }
        for (int64_t i = 0; i < n; ++i) {
            int64_t ci[3] = {bin[i] / (nb[1] * nb[2]), (bin[i] / nb[2]) % nb[1], bin[i] % nb[2]};
            for (int64_t d0 = -reach[0]; d0 <= reach[0]; ++d0)
                for (int64_t d1 = -reach[1]; d1 <= reach[1]; ++d1)
                    for (int64_t d2 = -reach[2]; d2 <= reach[2]; ++d2) {
                        int64_t c[3] = {ci[0] + d0, ci[1] + d1, ci[2] + d2}, img[3], t[3];
                        for (int k = 0; k < 3; ++k) {
                            img[k] = (c[k] >= 0 ? c[k] / nb[k] : -((-c[k] + nb[k] - 1) / nb[k]));
                            t[k] = c[k] - img[k] * nb[k];
                        }
                        int64_t tb = (t[0] * nb[1] + t[1]) * nb[2] + t[2];
                        for (int64_t q = start[tb]; q < start[tb + 1]; ++q) {
                            int64_t j = sorted[q];
                            double image[3];
                            for (int k = 0; k < 3; ++k) image[k] = (double)img[k] + sh[3 * i + k] - sh[3 * j + k];
                            if (j < i) continue;
                            if (j == i) {
                                bool pos = image[0] > 0 || (image[0] == 0 && (image[1] > 0 || (image[1] == 0 && image[2] > 0)));
                                if (!pos) continue;
                            }
                            double df[3];
                            for (int k = 0; k < 3; ++k) df[k] = fw[3 * j + k] + (double)img[k] - fw[3 * i + k];
                            double v[3];
                            for (int k = 0; k < 3; ++k) v[k] = df[0] * a0[k] + df[1] * a1[k] + df[2] * a2[k];
                            double dd = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                            if (dd > r2 || dd <= tol2) continue;
                            if (total < cap) {
                                oi[total] = base + i;
                                oj[total] = base + j;
                                for (int k = 0; k < 3; ++k) oimg[3 * total + k] = image[k];
                                od[total] = std::sqrt(dd);
                            }
                            ++total;
                        }
                    }
        }
        delete[] fw;
        delete[] sh;
        delete[] bin;
        delete[] start;
        delete[] sorted;
        base += n;
    }
    return total;
}

// out[r, :K] = sum_t g[t][r, :] @ W[t] for n_tab tables g[t] (n, 128) and weights W[t] (128, 32), the
// columns past K zero (K <= 32): the input gradient of several 128-wide projections of one narrow input
// (the long bonds' radial basis, K = 31, which general GEMMs handle poorly)
extern "C" void multi_linear_bwd(const float* const* g, const float* const* W, int n_tab, int64_t n, int K,
                                 float* out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r0 = 0; r0 < n; r0 += TILE) {
        const int nb = (int)(n - r0 < TILE ? n - r0 : TILE);
        v16 acc[TILE][2] = {};
        for (int t = 0; t < n_tab; ++t) mmvn<2>(nb, g[t] + r0 * 128, 128, 128, W[t], 32, acc);
        for (int i = 0; i < nb; ++i) {
            float tmp[32] __attribute__((aligned(64)));
            st(tmp, acc[i][0]);
            st(tmp + 16, acc[i][1]);
            std::memcpy(out + (r0 + i) * K, tmp, sizeof(float) * K);
        }
    }
}

// Stable argsort of n integer keys by counting sort (keys within a range of at most 4n + 1024 values);
// returns 0 without writing when the range is larger (the caller sorts another way)
extern "C" int counting_argsort(const int64_t* x, int64_t n, int64_t* out) {
    if (n == 0) return 1;
    int64_t lo = x[0], hi = x[0];
    for (int64_t i = 1; i < n; ++i) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    const int64_t range = hi - lo + 1;
    if (range > 4 * n + 1024) return 0;
    int64_t* pos = new int64_t[range + 1]();
    for (int64_t i = 0; i < n; ++i) pos[x[i] - lo + 1]++;
    for (int64_t k = 0; k < range; ++k) pos[k + 1] += pos[k];
    for (int64_t i = 0; i < n; ++i) out[pos[x[i] - lo]++] = i;
    delete[] pos;
    return 1;
}

// out[t][r, :] = x[r, :K] @ WT[t] + b[t] for n_tab weights WT[t] (K, 128) (the transposed (128, K) weights)
// and biases b[t] (128,): several 128-wide projections of one narrow input, written once each
extern "C" void multi_linear_fwd(const float* x, int K, int64_t n, const float* const* WT, const float* const* b,
                                 int n_tab, float* const* out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r0 = 0; r0 < n; r0 += TILE) {
        const int nb = (int)(n - r0 < TILE ? n - r0 : TILE);
        for (int t = 0; t < n_tab; ++t) {
            for (int h = 0; h < 2; ++h) {
                v16 acc[TILE][4];
                for (int i = 0; i < nb; ++i)
                    for (int j = 0; j < 4; ++j) acc[i][j] = ld(b[t] + 64 * h + 16 * j);
                mm64n(nb, x + r0 * K, K, K, WT[t] + 64 * h, 128, acc);
                for (int i = 0; i < nb; ++i)
                    for (int j = 0; j < 4; ++j) stream_v16(out[t] + (r0 + i) * 128 + 64 * h + 16 * j, acc[i][j]);
            }
        }
    }
    store_fence();
}
