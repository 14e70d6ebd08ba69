"""Triton kernels of chgnet-0.3.0 against the pure-torch path: values and gradients.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here
before the kernels are built); with CUDA they run on the GPU. Skipped when triton does not import.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import import_triton_for_tests

_triton, DEV = import_triton_for_tests()  # skips this module when triton cannot be used

from matfunnel.potential.chgnet import ops, triton_ops  # noqa: E402


@pytest.fixture
def use_triton():
    triton_ops.force(True)
    try:
        yield
    finally:
        triton_ops.force(False)


def _with(flag: bool, fn):
    triton_ops.force(flag)
    try:
        return fn()
    finally:
        triton_ops.force(False)


def _index(rng, n_rows, n_targets, *, sort, empty_every=3):
    # targets divisible by empty_every never receive anything (empty segments)
    allowed = np.array([t for t in range(n_targets) if t % empty_every]) if n_targets > 1 else np.arange(n_targets)
    idx = rng.choice(allowed, size=n_rows) if n_rows else np.zeros(0, dtype=np.int64)
    if sort:
        idx = np.sort(idx)
    return ops.Index(torch.as_tensor(idx, dtype=torch.long, device=DEV), n_targets, is_sorted=sort)


@pytest.mark.parametrize("n_rows,n_targets,width,sort", [
    (0, 5, 8, True), (1, 1, 3, False), (37, 11, 64, True), (200, 13, 64, False), (150, 40, 9, False),
    (64, 200, 128, True), (301, 97, 64, False), (500, 61, 9, True), (700, 33, 3, False),
])
def test_scatter_and_gather_match_torch(use_triton, n_rows, n_targets, width, sort):
    rng = np.random.default_rng(n_rows * 1000 + width)
    ix = _index(rng, n_rows, n_targets, sort=sort)
    assert triton_ops.enabled(torch.zeros(1, device=DEV))
    x = torch.randn(n_rows, width, device=DEV, requires_grad=True)
    out = ops.scatter(x, ix)
    ref = torch.zeros(n_targets, width, device=DEV).index_add_(0, ix.idx, x.detach())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(dx, g[ix.idx], atol=0, rtol=0)
    # gather: forward plain, backward a (Triton) segment sum
    y = torch.randn(n_targets, width, device=DEV, requires_grad=True)
    gy = torch.randn(n_rows, width, device=DEV)
    (dy,) = torch.autograd.grad(ops.gather(y, ix), y, gy)
    torch.testing.assert_close(dy, torch.zeros_like(y).index_add_(0, ix.idx, gy), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_rows,three,dense", [(0, True, True), (5, False, False), (300, True, True),
                                                (129, False, True)])
def test_gather_sum_matches_torch(n_rows, three, dense):
    rng = np.random.default_rng(n_rows + 7 * three)
    sizes = (17, 4, 30)[: 3 if three else 2]
    base = torch.randn(17, 96, device=DEV)
    xs = [base.split(64, 1)[0].clone().requires_grad_(True)]  # contiguous copy
    wide = torch.randn(4, 192, device=DEV, requires_grad=True)
    xs.append(wide)
    if three:
        xs.append(torch.randn(30, 64, device=DEV, requires_grad=True))
    ixs = [_index(rng, n_rows, n, sort=k == 0) for k, n in enumerate(sizes)]
    d = torch.randn(n_rows, 64, device=DEV, requires_grad=True) if dense else None

    def run():
        srcs = [xs[0], xs[1].split(64, 1)[1]] + xs[2:]  # a strided view among the sources
        out = ops.gather_sum(list(zip(srcs, ixs, strict=False)), d)
        g = torch.ones_like(out) * torch.arange(out.numel(), device=DEV).reshape(out.shape).sin()
        inputs = xs + ([d] if dense else [])
        return (out, *torch.autograd.grad(out, inputs, g))

    got = _with(True, run)
    want = _with(False, run)
    for a, b in zip(got, want, strict=False):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _gated_torch(y, w, ln, eps, seg):
    f = y.shape[1] // 2
    core = torch.nn.functional.layer_norm(y[:, :f], (f,), ln[0], ln[1], eps)
    gate = torch.nn.functional.layer_norm(y[:, f:], (f,), ln[2], ln[3], eps)
    out = torch.nn.functional.silu(core) * torch.sigmoid(gate)
    if w is not None:
        out = out * w
    if seg is not None:
        out = torch.zeros(seg.n, f, device=y.device, dtype=y.dtype).index_add_(0, seg.idx, out)
    return out


@pytest.mark.parametrize("n_rows,n_seg,f,with_w,segments", [
    (0, 4, 64, True, True), (1, 1, 64, False, False), (90, 12, 64, True, True), (257, 9, 64, False, False),
    (70, 30, 24, True, True), (33, 0, 64, True, False), (333, 101, 64, True, True),
])
def test_gated_kernel_matches_torch(n_rows, n_seg, f, with_w, segments):
    rng = np.random.default_rng(n_rows + f)
    y = (torch.randn(n_rows, 2 * f, device=DEV) * 2 + 0.3).requires_grad_(True)
    w = torch.randn(n_rows, f, device=DEV, requires_grad=True) if with_w else None
    ln = tuple(torch.randn(f, device=DEV) for _ in range(4))
    seg = _index(rng, n_rows, n_seg, sort=True) if segments else None
    g = torch.randn(n_seg if segments else n_rows, f, device=DEV)
    inputs = [y] + ([w] if with_w else [])

    ref = _gated_torch(y, w, ln, 1e-5, seg)
    ref_grads = torch.autograd.grad(ref, inputs, g, allow_unused=True)
    triton_ops.force(True)
    try:
        out = triton_ops.gated(y, w, ln, 1e-5, seg.offsets if seg is not None else None,
                               seg.idx if seg is not None else None)
    finally:
        triton_ops.force(False)
    got_grads = torch.autograd.grad(out, inputs, g, allow_unused=True)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for a, b in zip(got_grads, ref_grads, strict=False):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_model_with_kernels_matches_torch_path():
    """The whole model (energy, forces, stress) with the Triton kernels selected vs the torch path."""
    from matfunnel.potential.chgnet.graph import build_graph
    from matfunnel.potential.chgnet.potential import ChgnetPotential
    from matfunnel.potential.synthetic import random_structure

    rng = np.random.default_rng(11)
    structs = [random_structure(rng, 2, proto="rocksalt", n_species=2, rattle=0.05),
               random_structure(rng, 1, proto="fcc-prim", rattle=0.0)]
    pot = ChgnetPotential(device=DEV)
    g = build_graph(*pot._arrays(structs))
    assert g.n_angles > 0
    want = _with(False, lambda: pot.model(g))
    got = _with(True, lambda: pot.model(g))
    # and the chunked path (parts recomputed in backward) with the kernels
    chunk = min(2 * g.n_edges, g.n_angles) // 2 + 1  # at least two parts on both levels
    chunked = _with(True, lambda: pot.model(g, chunk=chunk))
    for key, tol in (("energy", 1e-4), ("forces", 1e-4), ("stress", 1e-3), ("magmoms", 1e-5)):
        torch.testing.assert_close(got[key], want[key], atol=tol, rtol=1e-4)
        torch.testing.assert_close(chunked[key], want[key], atol=tol, rtol=1e-4)


@pytest.mark.parametrize("n_rows,n_targets,width,sort", [(0, 4, 3, True), (61, 9, 3, False), (300, 40, 9, True)])
def test_float64_segment_sums_match_torch(use_triton, n_rows, n_targets, width, sort):
    """The geometry (float64) also goes through the segment-sum kernel, accumulating in float64."""
    rng = np.random.default_rng(n_rows + width)
    ix = _index(rng, n_rows, n_targets, sort=sort)
    x = torch.randn(n_rows, width, device=DEV, dtype=torch.float64, requires_grad=True)
    out = ops.scatter(x, ix)
    ref = torch.zeros(n_targets, width, device=DEV, dtype=torch.float64).index_add_(0, ix.idx, x.detach())
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    y = torch.randn(n_targets, width, device=DEV, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(n_rows, width, device=DEV, dtype=torch.float64)
    (dy,) = torch.autograd.grad(ops.gather(y, ix), y, gy)
    torch.testing.assert_close(dy, torch.zeros_like(y).index_add_(0, ix.idx, gy), atol=1e-12, rtol=1e-12)
