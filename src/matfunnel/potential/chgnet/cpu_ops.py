"""Fused CPU kernels (``_cpu_kernels.cpp``) for the edge and angle work of CHGNet, float32.

On the CPU the model's time went to memory-bound elementwise passes (gathers, SiLU, layer norms,
gates, segment sums and their backwards; each reads and writes rows of 64-128 floats) rather than to
its matrix products. :func:`gated` does a whole gated MLP per row in registers: the gathered first
layer, the hidden layer, both layer norms and activations, the edge weight and the segment sum, and
its backward in a second pass that reads back only the saved pre-activations. Tables may come in two
pieces, the edge weight may be a product of two gathered tables, and the input may be a narrow basis
with a separate residual (see :func:`gated`), so the model never builds those (rows, 64-128) tensors; the
backward sums the small tables' gradients itself. :func:`segsum` is a multi-threaded segment sum through a
permutation, :func:`multi_linear` several 128-wide projections of one narrow input, and
:func:`counting_argsort` the index sorts of graph construction.

The kernels are C++ compiled on first use with the system's ``g++`` (``-O3 -march=native -fopenmp``)
into a cache folder (``MATFUNNEL_EXT_DIR``, default ``~/.cache/matfunnel/ext``) keyed by the source, the
compiler and the CPU, and loaded with ctypes; they run on the OpenMP thread pool torch already uses.
Without a compiler, or with ``MATFUNNEL_CPU_KERNELS=0``, everything runs on the pure-torch path, which
gives the same numbers (tested in ``tests/test_chgnet_cpu_ops.py``). Within
:func:`~matfunnel.potential.chgnet.mode.plain_autograd` the model's kernels are off too (:func:`enabled` is False:
their backward passes are not differentiable); graph construction still uses the sorts and the neighbour search.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from matfunnel.potential.chgnet.mode import is_plain

_SRC = Path(__file__).with_name("_cpu_kernels.cpp")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
_lib = None
_failed = False
_lock = threading.Lock()

# argument slots, mirrored from the enums in _cpu_kernels.cpp
(P_TAB0, P_TAB1, P_TAB2, P_IDX0, P_IDX1, P_IDX2, P_X, P_WDT, P_WD, P_W2T, P_W2, P_B2, P_LN, P_W,
 P_SEG, P_OUT, P_SAVE_PRE, P_SAVE_Y, P_GOUT, P_GPRE, P_GX, P_GW, P_GTAB0, P_TABHI0, P_TABHI1, P_TABHI2,
 P_GTAB1, P_WT0, P_WT1, P_GWT0, P_GWT1, P_XRES, P_COUNT) = range(33)
(I_R, I_NT, I_DX, I_HIDDEN, I_MODE, I_RESIDUAL, I_NSEG, I_THREADS, I_SAVED, I_SPLIT0, I_SPLIT1, I_SPLIT2,
 I_N1, I_COUNT) = range(14)
#: table 1's gradient is summed inside the backward kernel (one copy per thread) up to this many bytes of copies
PRIVATE_TABLE_BYTES = 32 << 20


def _cpu_key() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name")):
                flags += line
                if line.startswith("flags"):
                    break
    except OSError:
        flags = platform.processor()
    return flags


def _build() -> Path:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256((_SRC.read_text() + " ".join(_FLAGS) + version + _cpu_key()).encode()).hexdigest()[:16]
    folder = Path(os.environ.get("MATFUNNEL_EXT_DIR") or Path.home() / ".cache" / "matfunnel" / "ext")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"chgnet_cpu_{key}.so"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        out = Path(tmp) / target.name
        proc = subprocess.run([cxx, *_FLAGS, str(_SRC), "-o", str(out)], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"compiling {_SRC.name} failed:\n{proc.stderr[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders each write a complete file
    return target


def library():
    """The loaded kernel library, or None when disabled or unavailable (warns once)."""
    global _lib, _failed
    if _lib is not None or _failed:
        return _lib
    if os.environ.get("MATFUNNEL_CPU_KERNELS", "1") == "0":
        return None
    with _lock:
        if _lib is None and not _failed:
            try:
                lib = ctypes.CDLL(str(_build()))
                lib.gated_fwd.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64),
                                          ctypes.c_float]
                lib.gated_bwd.argtypes = lib.gated_fwd.argtypes
                lib.segsum.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
                lib.multi_linear_bwd.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                                                 ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
                lib.multi_linear_fwd.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p,
                                                 ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
                lib.counting_argsort.restype = ctypes.c_int
                lib.counting_argsort.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
                lib.neighbor_pairs.restype = ctypes.c_int64
                lib.neighbor_pairs.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                               ctypes.c_double, ctypes.c_double, ctypes.c_int64, ctypes.c_void_p,
                                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
                _lib = lib
            except Exception as exc:  # noqa: BLE001 - fall back to the torch path
                _failed = True
                warnings.warn(f"matfunnel: fused CPU kernels unavailable ({exc}); using the torch path",
                              stacklevel=2)
    return _lib


_switch = [True]


@contextlib.contextmanager
def use(flag: bool):
    """Within the block, use the fused CPU kernels (True, where they apply) or the pure-torch path (False)."""
    before = _switch[0]
    _switch[0] = flag
    try:
        yield
    finally:
        _switch[0] = before


def available(device) -> bool:
    """True when the C++ kernels run for work on ``device``: the CPU, switched on (:func:`use`) and built."""
    return _switch[0] and torch.device(device).type == "cpu" and library() is not None


def enabled(x: Tensor) -> bool:
    """True when the fused float32 kernels apply to tensors like ``x`` (float32 on the CPU, not in plain mode)."""
    return x.dtype == torch.float32 and available(x.device) and not is_plain()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def segsum_raw(x: Tensor, offsets: Tensor, perm: Tensor | None) -> Tensor:
    """Rows of ``x`` (through ``perm`` when given) summed into the ``len(offsets) - 1`` sorted segments."""
    x = x.contiguous()
    n = offsets.shape[0] - 1
    out = x.new_empty((n, *x.shape[1:]))
    d = 1
    for s in x.shape[1:]:
        d *= s
    library().segsum(x.data_ptr(), _ptr(perm), offsets.data_ptr(), n, d, out.data_ptr(),
                     torch.get_num_threads())
    return out


def _ptrs(tensors: list[Tensor]):
    """A C array of the tensors' data pointers."""
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


class _MultiLinear(torch.autograd.Function):
    """``[F.linear(x, w, b) for w, b]`` for a narrow ``x`` (K <= 32) and frozen 128-row weights.

    Forward and backward (the gradient of ``x``) are each one C++ pass over all the outputs.
    """

    @staticmethod
    def forward(ctx, x, padded, transposed, *wb):
        n_out = len(wb) // 2
        ctx.padded, ctx.k = padded, x.shape[1]
        n = x.shape[0]
        outs = [x.new_empty((n, 128)) for _ in range(n_out)]
        if n:
            bs = [b.contiguous() for b in wb[n_out:]]
            library().multi_linear_fwd(x.data_ptr(), x.shape[1], n, _ptrs(transposed), _ptrs(bs), n_out, _ptrs(outs),
                                       torch.get_num_threads())
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        x_grad = None
        use = [(g.contiguous(), w) for g, w in zip(grads, ctx.padded, strict=False) if g is not None]
        if ctx.needs_input_grad[0] and use:
            n = use[0][0].shape[0]
            x_grad = use[0][0].new_empty((n, ctx.k))
            library().multi_linear_bwd(_ptrs([g for g, _ in use]), _ptrs([w for _, w in use]), len(use), n, ctx.k,
                                       x_grad.data_ptr(), torch.get_num_threads())
        return (x_grad, None, None) + (None,) * (2 * len(ctx.padded))


def multi_linear(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> list[Tensor]:
    """``[F.linear(x, w, b) for w, b in zip(weights, biases)]``.

    On the CPU kernels' path (float32, ``x`` at most 32 wide, frozen (128, K) weights) the forward and the
    backward (the gradient of ``x``) are one C++ pass each over all the outputs, instead of one narrow GEMM per
    output (the long bonds' projections: MKL runs a (n, 128) @ (128, 31) product at half the speed of a 32-wide
    one).
    """
    ok = (enabled(x) and x.shape[1] <= 32 and x.is_contiguous()
          and all(tuple(w.shape) == (128, x.shape[1]) and not w.requires_grad and not b.requires_grad
                  for w, b in zip(weights, biases, strict=False)))
    if not ok:
        return [torch.nn.functional.linear(x, w, b) for w, b in zip(weights, biases, strict=False)]
    padded = [torch.nn.functional.pad(w, (0, 32 - w.shape[1])).contiguous() for w in weights]  # (128, 32)
    transposed = [w.t().contiguous() for w in weights]  # (K, 128)
    return list(_MultiLinear.apply(x, padded, transposed, *weights, *biases))


def counting_argsort(x: Tensor) -> Tensor | None:
    """Stable argsort of a 1-d int64 CPU tensor by counting sort (O(n)).

    None when the keys span too wide a range or the kernels are off.
    """
    if x.dtype != torch.int64 or not available(x.device):
        return None
    x = x.contiguous()
    out = torch.empty_like(x)
    return out if library().counting_argsort(x.data_ptr(), x.shape[0], out.data_ptr()) else None


def neighbor_pairs(frac: Tensor, lattice: Tensor, n_atoms: Tensor, cutoff: float, self_tol: float):
    """Canonical pairs within ``cutoff`` on the CPU in C++: (i, j, image, d).

    The same pairs as :func:`matfunnel.potential.neighbors.neighbor_pairs`.
    """
    frac = frac.detach().to(torch.float64).contiguous()
    lattice = lattice.detach().to(torch.float64).contiguous()
    counts = n_atoms.detach().to(torch.int64).contiguous()
    n = frac.shape[0]
    vol = torch.linalg.det(lattice).abs().clamp(min=1e-9)
    dens = (counts.to(torch.float64) / vol * counts.to(torch.float64)).sum().item()
    cap = int(dens * 2.2 * 3.1416 / 3 * cutoff**3) + 16 * n + 1024  # about 1.1x the expected pair count
    for _ in range(2):
        oi = torch.empty(cap, dtype=torch.int64)
        oj = torch.empty(cap, dtype=torch.int64)
        oimg = torch.empty(cap, 3, dtype=torch.float64)
        od = torch.empty(cap, dtype=torch.float64)
        total = library().neighbor_pairs(frac.data_ptr(), lattice.data_ptr(), counts.data_ptr(), counts.shape[0],
                                         float(cutoff), float(self_tol), cap, oi.data_ptr(), oj.data_ptr(),
                                         oimg.data_ptr(), od.data_ptr())
        if total <= cap:
            return oi[:total], oj[:total], oimg[:total], od[:total]
        cap = int(total)
    raise RuntimeError("neighbor_pairs: pair count changed between calls")


def _kernel_weights(mlp, wd: Tensor | None) -> tuple:
    """The kernel's layouts of ``mlp``'s frozen weights (and of ``wd``), built once per weight version."""

    def build(m) -> tuple:
        ln = torch.cat([m.ln_core.weight, m.ln_core.bias, m.ln_gate.weight, m.ln_gate.bias]).contiguous()
        w2 = w2t = b2 = None
        if m.hidden:
            w2 = torch.stack([m.w2_core, m.w2_gate]).contiguous()  # (2, 64 out, 64 in)
            w2t = w2.transpose(1, 2).contiguous()
            b2 = torch.cat([m.b2_core, m.b2_gate]).contiguous()
        wdc = wdt = None
        if wd is not None:
            # (128, dx) for the input gradient, zero-padded to 32 columns for a narrow X; (dx, 128) for the forward
            wdc = (torch.nn.functional.pad(wd, (0, 32 - wd.shape[1])) if wd.shape[1] <= 32 else wd).contiguous()
            wdt = wd.t().contiguous()
        return ln, w2, w2t, b2, wdc, wdt

    wd_key = None if wd is None else (wd.data_ptr(), tuple(wd.shape), tuple(wd.stride()))
    return mlp.frozen(("cpu", wd_key), build)


class GatedSpec:
    """What a fused gated MLP needs besides its differentiable inputs (weights are frozen)."""

    def __init__(self, mlp, ixs, seg, wd: Tensor | None, reduce: bool, residual: bool,
                 splits: list[int | None] | None = None):
        self.ixs, self.seg, self.reduce, self.residual = ixs, seg, reduce, residual
        # per table: None, or the row count of the first piece of a table passed as two pieces
        self.splits = splits or [None] * len(ixs)
        self.hidden = bool(mlp.hidden)
        self.eps = float(mlp.ln_core.eps)
        self.ln, self.w2, self.w2t, self.b2, self.wd, self.wdt = _kernel_weights(mlp, wd)

    def pieces(self, flat: list) -> list[tuple]:
        """The flat list of table tensors as one (first piece, second piece or None) per table."""
        out, k = [], 0
        for sp in self.splits:
            out.append((flat[k], flat[k + 1]) if sp is not None else (flat[k], None))
            k += 1 if sp is None else 2
        return out

    def call(self, fn, tabs, x, w, wt=(None, None), xres=None, **buffers):
        """Fill the kernel's pointer and integer argument arrays and call the kernel ``fn`` (forward or backward).

        ``tabs`` are the flat table tensors, ``buffers`` the outputs and saved tensors by slot name.
        """
        p = (ctypes.c_void_p * P_COUNT)()
        iv = (ctypes.c_int64 * I_COUNT)()
        tables = self.pieces(tabs)
        for k, (lo, hi) in enumerate(tables):
            p[P_TAB0 + k] = lo.data_ptr()
            p[P_IDX0 + k] = self.ixs[k].idx.data_ptr()
            if hi is not None:
                p[P_TABHI0 + k] = hi.data_ptr()
                iv[I_SPLIT0 + k] = self.splits[k]
        named = {P_X: x, P_WDT: self.wdt, P_WD: self.wd, P_W2T: self.w2t, P_W2: self.w2, P_B2: self.b2,
                 P_LN: self.ln, P_W: w, P_SEG: None if self.seg is None else self.seg.idx,
                 P_WT0: wt[0], P_WT1: wt[1], P_XRES: xres}
        slots = {"out": P_OUT, "save_pre": P_SAVE_PRE, "save_y": P_SAVE_Y, "gout": P_GOUT, "gpre": P_GPRE,
                 "gx": P_GX, "gw": P_GW, "gtab0": P_GTAB0, "gtab1": P_GTAB1, "gwt0": P_GWT0, "gwt1": P_GWT1}
        named.update({slots[k]: v for k, v in buffers.items()})
        for slot, t in named.items():
            p[slot] = _ptr(t)
        iv[I_R] = len(self.ixs[0])
        iv[I_NT] = len(tables)
        iv[I_DX] = 0 if x is None else x.shape[1]
        iv[I_HIDDEN] = int(self.hidden)
        iv[I_MODE] = 0 if self.reduce else 1
        iv[I_RESIDUAL] = int(self.residual)
        iv[I_NSEG] = 0 if self.seg is None else self.seg.n
        iv[I_THREADS] = torch.get_num_threads()
        iv[I_SAVED] = int(buffers.get("save_y") is not None)
        iv[I_N1] = self.ixs[1].n if len(self.ixs) > 1 else 0
        fn(p, iv, ctypes.c_float(self.eps))


class _GatedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: GatedSpec, x, w, wt0, wt1, xres, *tabs):
        r = len(spec.ixs[0])
        rows_out = spec.seg.n if spec.reduce else r
        out = tabs[0].new_empty((rows_out, 64))
        need = any(ctx.needs_input_grad[1:])
        save_y = tabs[0].new_empty((r, 128)) if need else None
        save_pre = tabs[0].new_empty((r, 128)) if need and spec.hidden else None
        spec.call(library().gated_fwd, tabs, x, w, (wt0, wt1), xres, out=out, save_pre=save_pre, save_y=save_y)
        ctx.spec = spec
        ctx.has_xres = xres is not None
        ctx.save_for_backward(x, w, wt0, wt1, save_pre, save_y, *tabs)
        return out

    @staticmethod
    def backward(ctx, gout):
        spec = ctx.spec  # the forward's GatedSpec
        x, w, wt0, wt1, save_pre, save_y, *tabs = ctx.saved_tensors
        r = len(spec.ixs[0])
        needs = ctx.needs_input_grad
        # per table (not per piece): is a gradient wanted for any of its pieces
        need_tab, k = [], 6
        for sp in spec.splits:
            n_pieces = 1 if sp is None else 2
            need_tab.append(any(needs[k:k + n_pieces]))
            k += n_pieces
        # table 0 is indexed by the sorted segment ids: its gradient is summed inside the kernel
        tab0_in_kernel = need_tab[0] and spec.seg is spec.ixs[0]
        # table 1, when small (atoms, short bonds), too: into one zeroed copy per thread, added up here
        threads = torch.get_num_threads()
        tab1_in_kernel = (len(need_tab) > 1 and need_tab[1] and spec.splits[1] is None
                          and threads * spec.ixs[1].n * 512 <= PRIVATE_TABLE_BYTES)
        need_gpre = (any(need_tab[2:]) or (need_tab[0] and not tab0_in_kernel)
                     or (len(need_tab) > 1 and need_tab[1] and not tab1_in_kernel))
        gpre = gout.new_empty((r, 128)) if need_gpre else None
        gtab0 = gout.new_empty((spec.seg.n, 128)) if tab0_in_kernel else None
        gtab1 = gout.new_zeros((threads, spec.ixs[1].n, 128)) if tab1_in_kernel else None
        narrow = x is not None and x.shape[1] <= 32
        gx = gout.new_empty((r, 32 if narrow else x.shape[1])) if x is not None and needs[1] else None
        gw = gout.new_empty((r, 64)) if w is not None and needs[2] else None
        gwt0 = gout.new_empty((spec.seg.n, 64)) if wt0 is not None and needs[3] else None
        gwt1 = gout.new_zeros((threads, wt1.shape[0], 64)) if wt1 is not None and needs[4] else None
        # the kernel only tests whether a separate residual was given; the residual's gradient is gout itself
        xres_flag = gout if ctx.has_xres else None
        spec.call(library().gated_bwd, tabs, x, w, (wt0, wt1), xres_flag, gout=gout.contiguous(), save_pre=save_pre,
                  save_y=save_y, gpre=gpre, gx=gx, gw=gw, gtab0=gtab0, gtab1=gtab1, gwt0=gwt0, gwt1=gwt1)
        if gx is not None and narrow:
            gx = gx[:, :x.shape[1]]
        if gwt1 is not None:
            gwt1 = gwt1[0] if threads == 1 else gwt1.sum(0)
        gtabs = []
        for k, (ix, want, sp) in enumerate(zip(spec.ixs, need_tab, spec.splits, strict=False)):
            if not want:
                g = None
            elif k == 0 and tab0_in_kernel:
                g = gtab0
            elif k == 1 and tab1_in_kernel:
                g = gtab1[0] if threads == 1 else gtab1.sum(0)
            else:
                g = segsum_raw(gpre, ix.offsets, ix.perm)
            if sp is None:
                gtabs.append(g)
            else:  # the two pieces' gradients are row ranges (views) of the whole table's
                gtabs += [None, None] if g is None else [g[:sp], g[sp:]]
        g_xres = gout if ctx.has_xres and needs[5] else None
        return (None, gx, gw, gwt0, gwt1, g_xres, *gtabs)


def supports(mlp, pairs, x: Tensor | None, w=None, seg=None, x_res: Tensor | None = None,
             residual: bool = False) -> bool:
    """Shapes the kernel handles: 64-wide outputs and hidden layer, 128-wide first layer, X 64 wide."""
    tables = [t for tab, _ in pairs for t in (tab if isinstance(tab, tuple) else (tab,))]
    # edge weight as a product of two gathered tables (indexed like tables 0 and 1)
    if isinstance(w, tuple) and (
            len(pairs) < 2 or seg is not pairs[0][1] or isinstance(pairs[1][0], tuple)
            or any(t.shape[1] != 64 or t.dtype != torch.float32 for t in w)
            or torch.get_num_threads() * w[1].shape[0] * 256 > PRIVATE_TABLE_BYTES):
        return False
    if len(pairs) not in (1, 2, 3) or not enabled(tables[0]):
        return False
    if isinstance(pairs[0][0], tuple):
        return False  # the segment table (its gradient is summed in the kernel) comes in one piece
    if any(t.shape[1] != 128 or not t.is_contiguous() or t.dtype != torch.float32 for t in tables):
        return False
    if any(ix.idx.dtype != torch.int64 or not ix.idx.is_contiguous() for _, ix in pairs):
        return False
    if mlp.ln_core.weight.shape[0] != 64 or (mlp.hidden and mlp.hidden != 64):
        return False
    if any(p.requires_grad for p in mlp.parameters()):
        return False  # training: weight gradients are not implemented in the kernel
    if x_res is not None and (x_res.shape[1] != 64 or x_res.dtype != torch.float32):
        return False
    if residual and x_res is None and (x is None or x.shape[1] != 64):
        return False
    return x is None or ((x.shape[1] == 64 or x.shape[1] <= 32) and x.dtype == torch.float32)


def gated(mlp, pairs, x: Tensor | None = None, wd: Tensor | None = None, w: Tensor | None = None,
          seg=None, *, reduce: bool = True, residual: bool = False, x_res: Tensor | None = None) -> Tensor:
    """``mlp.finish(sum(t[ix.idx] for t, ix in pairs) + x @ wd.T) * w``, segment-summed or per row.

    Segment-summed into ``seg`` (``reduce``) or per row (``+ x`` when ``residual``). ``seg`` is a sorted
    :class:`~.ops.Index`; when it is also the first pair's index, that table's gradient is summed inside the
    kernel. A table may be a tuple ``(lo, hi)`` of two pieces, read as ``torch.cat([lo, hi])`` without
    building it, and ``w`` a tuple ``(t0, t1)``, the weight ``t0[ix0] * t1[ix1]`` of the first two pairs'
    indices, gathered in the kernel. ``x`` is 64 wide or at most 32 (a narrow input whose projection is
    cheaper); the residual is ``x_res`` when given, else ``x``.
    """
    splits = [t[0].shape[0] if isinstance(t, tuple) else None for t, _ in pairs]
    spec = GatedSpec(mlp, [ix for _, ix in pairs], seg, wd, reduce, residual, splits)
    xs = None if x is None else x.contiguous()
    wt0 = wt1 = ws = None
    if isinstance(w, tuple):  # w = t0[ix0] * t1[ix1], gathered in the kernel
        wt0, wt1 = (t.contiguous() for t in w)
    elif w is not None:
        ws = w.contiguous()
    flat = [p for t, _ in pairs for p in (t if isinstance(t, tuple) else (t,))]
    xr = x_res.contiguous() if residual and x_res is not None else None
    return _GatedFn.apply(spec, xs, ws, wt0, wt1, xr, *flat)
