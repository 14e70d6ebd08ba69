"""The fused C++ CPU kernels of chgnet-0.3.0 against the pure-torch path: values and gradients.

Fresh random inputs every run: random gated-MLP weights, tables, sorted and unsorted indices with empty
segments, with and without the dense input, edge weights and residual, on one and two threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matfunnel.potential.chgnet import cpu_ops
from matfunnel.potential.chgnet.graph import build_graph
from matfunnel.potential.chgnet.model import _Gated
from matfunnel.potential.chgnet.ops import Index, scatter
from matfunnel.potential.synthetic import random_structures


@pytest.fixture(scope="module", autouse=True)
def kernels():
    lib = cpu_ops.library()
    assert lib is not None, "the fused CPU kernels did not build (g++ with OpenMP is part of the set-up)"


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _index(rng, n_rows, n_targets, *, sort):
    # every third target receives nothing (empty segments)
    allowed = np.array([t for t in range(n_targets) if t % 3]) if n_targets > 2 else np.arange(n_targets)
    idx = rng.choice(allowed, size=n_rows) if n_rows else np.zeros(0, dtype=np.int64)
    if sort:
        idx = np.sort(idx)
    return Index(torch.as_tensor(idx, dtype=torch.long), n_targets, is_sorted=sort)


def _mlp(rng, hidden):
    torch.manual_seed(int(rng.integers(1 << 31)))
    mlp = _Gated(192, 64, hidden)
    for p in mlp.parameters():
        p.data.normal_(0.0, 0.3)
    for p in mlp.parameters():
        p.requires_grad_(False)
    return mlp


def _assert_matches(out_k, g_k, out_t, g_t):
    """Kernel against torch path: outputs and gradients to float32 rounding (None gradients count as zero)."""
    assert out_k.shape == out_t.shape
    scale = float(out_t.abs().max()) if out_t.numel() else 1.0
    torch.testing.assert_close(out_k, out_t, rtol=1e-5, atol=2e-6 * max(scale, 1.0))
    for a, b in zip(g_k, g_t, strict=False):
        if a is None and b is None:  # an input the output does not depend on
            continue
        b = torch.zeros_like(a) if b is None else b
        a = torch.zeros_like(b) if a is None else a
        s = float(b.abs().max()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6 * max(s, 1.0))


CASES = [  # rows, n_seg, hidden, n_tables, dense x, weight w, reduce (else residual rows)
    (0, 4, 64, 3, False, True, True),
    (1, 1, 64, 3, False, True, True),
    (37, 9, 64, 3, False, True, True),   # atom conv
    (503, 40, 64, 2, True, True, True),  # bond conv
    (211, 30, 0, 2, True, False, False),  # angle update
    (64, 200, 64, 1, False, False, True),
    (129, 17, 0, 3, True, True, True),
]


@pytest.mark.parametrize("rows,n_seg,hidden,n_tab,dense,weight,reduce", CASES)
def test_gated_matches_torch(rows, n_seg, hidden, n_tab, dense, weight, reduce, threads):
    rng = np.random.default_rng()
    mlp = _mlp(rng, hidden)
    seg = _index(rng, rows, n_seg, sort=True)
    ixs = [seg] + [_index(rng, rows, int(rng.integers(1, 50)), sort=False) for _ in range(n_tab - 1)]
    tabs = [torch.randn(ix.n, 128, dtype=torch.float32, requires_grad=True) for ix in ixs]
    x = torch.randn(rows, 64, requires_grad=True) if dense else None
    wd = torch.randn(128, 64) * 0.2 if dense else None
    w = torch.randn(rows, 64, requires_grad=True) if weight else None
    inputs = [t for t in (*tabs, x, w) if t is not None]
    gout_shape = (n_seg, 64) if reduce else (rows, 64)
    gout = torch.randn(gout_shape)

    def run():
        out = mlp.fused(list(zip(tabs, ixs, strict=False)), x, wd, w, seg, reduce=reduce, residual=not reduce)
        grads = torch.autograd.grad(out, inputs, gout, allow_unused=True)
        return out.detach(), grads

    with cpu_ops.use(True):
        assert cpu_ops.supports(mlp, list(zip(tabs, ixs, strict=False)), x)
        out_k, g_k = run()
    with cpu_ops.use(False):
        out_t, g_t = run()
    _assert_matches(out_k, g_k, out_t, g_t)


@pytest.mark.parametrize("rows,n_seg,n_b2,n_tab,dense", [(0, 5, 4, 2, True), (1, 1, 1, 2, True), (503, 40, 33, 2, True),
                                                      (257, 31, 12, 3, False)])
def test_gathered_weight_matches_torch(rows, n_seg, n_b2, n_tab, dense, threads):
    """The edge weight t0[ix0] * t1[ix1] gathered in the kernel (the angles' bond weights) against the torch path."""
    rng = np.random.default_rng()
    mlp = _mlp(rng, 64)
    seg = _index(rng, rows, n_seg, sort=True)
    ixs = [seg, _index(rng, rows, n_b2, sort=False)] + [_index(rng, rows, 19, sort=False)] * (n_tab - 2)
    tabs = [torch.randn(ix.n, 128, requires_grad=True) for ix in ixs]
    x = torch.randn(rows, 64, requires_grad=True) if dense else None
    wd = torch.randn(128, 64) * 0.2 if dense else None
    t0 = torch.randn(n_seg, 64, requires_grad=True)
    t1 = torch.randn(n_b2, 64, requires_grad=True)
    inputs = [t for t in (*tabs, x, t0, t1) if t is not None]
    gout = torch.randn(n_seg, 64)

    def run():
        out = mlp.fused(list(zip(tabs, ixs, strict=False)), x, wd, (t0, t1), seg)
        return out.detach(), torch.autograd.grad(out, inputs, gout, allow_unused=True)

    with cpu_ops.use(True):
        assert cpu_ops.supports(mlp, list(zip(tabs, ixs, strict=False)), x, (t0, t1), seg)
        out_k, g_k = run()
    with cpu_ops.use(False):
        out_t, g_t = run()
    _assert_matches(out_k, g_k, out_t, g_t)


@pytest.mark.parametrize("rows,hidden,reduce,k", [(0, 0, False, 31), (1, 0, False, 31), (211, 0, False, 31),
                                                (503, 64, True, 31), (97, 64, True, 7)])
def test_narrow_input_with_separate_residual_matches_torch(rows, hidden, reduce, k, threads):
    """The first block's angle kernels: X is the 31-wide basis (projected by wd @ embedding), the residual the
    64-wide features; values and every input gradient against the torch path."""
    rng = np.random.default_rng()
    mlp = _mlp(rng, hidden)
    n_seg = 23
    seg = _index(rng, rows, n_seg, sort=True)
    ixs = [seg, _index(rng, rows, 17, sort=False)]
    tabs = [torch.randn(ix.n, 128, requires_grad=True) for ix in ixs]
    basis = torch.randn(rows, k, requires_grad=True)
    feats = torch.randn(rows, 64, requires_grad=True)
    wd = torch.randn(128, k) * 0.2
    w = torch.randn(rows, 64, requires_grad=True) if reduce else None
    inputs = [t for t in (*tabs, basis, feats, w) if t is not None]
    gout = torch.randn((n_seg, 64) if reduce else (rows, 64))

    def run():
        if reduce:
            out = mlp.fused(list(zip(tabs, ixs, strict=False)), basis, wd, w, seg)
        else:
            out = mlp.fused(list(zip(tabs, ixs, strict=False)), basis, wd, None, seg, reduce=False, residual=True,
                            x_res=feats)
        return out.detach(), torch.autograd.grad(out, inputs, gout, allow_unused=True)

    with cpu_ops.use(True):
        assert cpu_ops.supports(mlp, list(zip(tabs, ixs, strict=False)), basis, None, seg,
                                None if reduce else feats, not reduce)
        out_k, g_k = run()
    with cpu_ops.use(False):
        out_t, g_t = run()
    _assert_matches(out_k, g_k, out_t, g_t)


@pytest.mark.parametrize("split_at", [0, 1, "mid", "all"])
def test_two_piece_table_matches_concatenated(split_at, threads):
    """A table passed as (lo, hi) (short and long bonds) reads and differentiates like torch.cat([lo, hi])."""
    rng = np.random.default_rng()
    mlp = _mlp(rng, 64)
    rows, n_seg, n_bond = 301, 23, 57
    seg = _index(rng, rows, n_seg, sort=True)
    ixs = [seg, _index(rng, rows, 19, sort=False), _index(rng, rows, n_bond, sort=False)]
    k = {"mid": n_bond // 2, "all": n_bond}.get(split_at, split_at)
    tabs = [torch.randn(ix.n, 128, requires_grad=True) for ix in ixs[:2]]
    lo = torch.randn(k, 128, requires_grad=True)
    hi = torch.randn(n_bond - k, 128, requires_grad=True)
    w = torch.randn(rows, 64, requires_grad=True)
    gout = torch.randn(n_seg, 64)
    inputs = [*tabs, lo, hi, w]

    def run(bond_table):
        pairs = [(tabs[0], ixs[0]), (tabs[1], ixs[1]), (bond_table, ixs[2])]
        assert cpu_ops.supports(mlp, pairs, None)
        out = mlp.fused(pairs, None, None, w, seg)
        return out.detach(), torch.autograd.grad(out, inputs, gout)

    with cpu_ops.use(True):
        out_split, g_split = run((lo, hi))
        out_cat, g_cat = run(torch.cat([lo, hi]))
    torch.testing.assert_close(out_split, out_cat, rtol=0, atol=0)
    for a, b in zip(g_split, g_cat, strict=False):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("rows,n_seg,width,sort", [(0, 3, 64, True), (1000, 37, 64, False), (517, 600, 128, True),
                                                   (99, 10, 3, False)])
def test_segsum_matches_torch(rows, n_seg, width, sort, threads):
    rng = np.random.default_rng()
    ix = _index(rng, rows, n_seg, sort=sort)
    x = torch.randn(rows, width, requires_grad=True)
    with cpu_ops.use(True):
        out_k = scatter(x, ix)
    ref = torch.zeros(n_seg, width).index_add_(0, ix.idx, x.detach())
    torch.testing.assert_close(out_k.detach(), ref, rtol=1e-5, atol=1e-5)


def test_whole_model_matches_torch_path():
    from matfunnel.potential.chgnet.weights import load_checkpoint

    rng = np.random.default_rng()
    structs = [s for s in random_structures(rng, 12) if len(s) >= 2]
    frac = torch.from_numpy(np.concatenate([s.frac_coords for s in structs]))
    lat = torch.from_numpy(np.stack([s.lattice.matrix for s in structs]))
    z = torch.from_numpy(np.concatenate([np.asarray(s.atomic_numbers) for s in structs]))
    n = torch.tensor([len(s) for s in structs])
    g = build_graph(frac, lat, z, n, cutoff=6.0, bond_cutoff=3.0)
    model = load_checkpoint(None)
    with cpu_ops.use(True):
        a = model(g)
    with cpu_ops.use(False):
        b = model(g)
    assert g.n_angles > 0
    torch.testing.assert_close(a["energy"] / n, b["energy"] / n, rtol=0, atol=2e-6)
    torch.testing.assert_close(a["forces"], b["forces"], rtol=0, atol=5e-5)
    torch.testing.assert_close(a["stress"], b["stress"], rtol=0, atol=5e-4)
    torch.testing.assert_close(a["magmoms"], b["magmoms"], rtol=0, atol=1e-5)


def test_neighbor_pairs_match_torch_cell_lists():
    from matfunnel.potential import neighbors
    from matfunnel.potential.synthetic import supercell

    rng = np.random.default_rng()
    structs = random_structures(rng, 40) + [supercell(rng, 300, proto="fcc", bond=2.6)]
    frac = torch.from_numpy(np.concatenate([s.frac_coords for s in structs]))
    frac[:5] += torch.from_numpy(rng.integers(-2, 3, (5, 3))).double()  # unwrapped coordinates too
    lat = torch.from_numpy(np.stack([s.lattice.matrix for s in structs]))
    n = torch.tensor([len(s) for s in structs])
    batch = torch.repeat_interleave(torch.arange(len(n)), n)

    def pairs(out):
        i, j, img, d = out
        return {(a, b, tuple(m)): dist for a, b, m, dist in
                zip(i.tolist(), j.tolist(), img.round().long().tolist(), d.tolist(), strict=False)}

    ref = pairs(neighbors.neighbor_pairs(frac, lat, batch, 6.0))
    ours = pairs(cpu_ops.neighbor_pairs(frac, lat, n, 6.0, neighbors.SELF_TOL))
    assert len(ref) > 1000
    assert ours.keys() == ref.keys()
    assert max(abs(ours[k] - ref[k]) for k in ref) < 1e-12
    # the dispatching entry point picks the C++ search here and gives the same pairs
    assert pairs(neighbors.pairs_within(frac, lat, n, 6.0)).keys() == ref.keys()


@pytest.mark.parametrize("n,k", [(0, 31), (1, 31), (257, 31), (100, 7)])
def test_multi_linear_matches_torch(n, k, threads):
    rng = np.random.default_rng()
    x = torch.from_numpy(rng.normal(size=(n, k)).astype(np.float32)).requires_grad_(True)
    ws = [torch.randn(128, k) for _ in range(4)]
    bs = [torch.randn(128) for _ in range(4)]
    gouts = [torch.randn(n, 128) for _ in range(4)]
    with cpu_ops.use(True):
        out_k = cpu_ops.multi_linear(x, ws, bs)
        # one output unused: its gradient is None
        (g_k,) = torch.autograd.grad(out_k[:3], [x], gouts[:3])
    out_t = [torch.nn.functional.linear(x, w, b) for w, b in zip(ws, bs, strict=False)]
    (g_t,) = torch.autograd.grad(out_t[:3], [x], gouts[:3])
    for a, b in zip(out_k, out_t, strict=False):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(g_k, g_t, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n,hi", [(0, 5), (1, 1), (1000, 37), (5000, 10**9), (777, 3)])
def test_argsort_stable_matches_numpy(n, hi):
    from matfunnel.potential.chgnet.graph import argsort_stable

    rng = np.random.default_rng()
    x = torch.as_tensor(rng.integers(-2, hi, n), dtype=torch.long)
    want = np.argsort(x.numpy(), kind="stable")
    assert torch.equal(argsort_stable(x), torch.as_tensor(want))


@pytest.mark.parametrize("march", ["x86-64-v2", "x86-64-v3", "x86-64-v4"])
def test_kernels_compile_for_every_x86_vector_width(march, tmp_path):
    """Both code paths (AVX-512 intrinsics and the generic vector fallback) compile, whatever this CPU has.

    ``-march=native`` compiles only the path of the machine at hand; CI once ran on a CPU without
    AVX-512 and the fallback, never compiled before, did not build.
    """
    import platform
    import shutil
    import subprocess

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 targets only")
    cxx = shutil.which("g++")
    flags = [f for f in cpu_ops._FLAGS if not f.startswith("-march")] + [f"-march={march}"]
    proc = subprocess.run([cxx, *flags, str(cpu_ops._SRC), "-o", str(tmp_path / "k.so")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
