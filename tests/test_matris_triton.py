"""The fused segment-softmax + aggregation kernel of matfunnel's MatRIS against the pure-torch path.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here
before triton is imported); with CUDA they run on the GPU. Skipped when triton does not import.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import import_triton_for_tests

# these modules import triton only when a kernel is first built, so they may come before TRITON_INTERPRET is set
from matfunnel.potential.matris import model as matris_model
from matfunnel.potential.matris import triton_ops

_triton, DEV = import_triton_for_tests()  # skips this module when triton cannot be used


def _with(flag: bool, fn):
    triton_ops.force(flag)
    try:
        return fn()
    finally:
        triton_ops.force(False)


def _index(rng, n_edges, n, empty_every=3):
    """Unsorted targets; every ``empty_every``-th target receives nothing; target 1 exactly one edge."""
    allowed = np.array([t for t in range(n) if t % empty_every and t != 1]) if n > 2 else np.arange(n)
    idx = rng.choice(allowed, size=n_edges) if n_edges else np.zeros(0, dtype=np.int64)
    if n > 2 and n_edges > 1:
        idx[rng.integers(n_edges)] = 1  # a single-edge segment
    return torch.as_tensor(idx, dtype=torch.long, device=DEV)


@pytest.mark.parametrize("n_edges,n,d", [
    (0, 4, 8), (1, 1, 3), (2, 5, 16), (37, 11, 64), (300, 13, 64), (150, 40, 9), (64, 200, 128), (90, 7, 200),
])
def test_softmax_aggregate_matches_torch(n_edges, n, d):
    rng = np.random.default_rng(n_edges * 1000 + d)
    idx = _index(rng, n_edges, n)
    logits = (torch.randn(n_edges, d, device=DEV) * 3).requires_grad_(True)
    values = torch.randn(n_edges, d, device=DEV, requires_grad=True)
    g = torch.randn(n, d, device=DEV)

    ref = triton_ops.softmax_aggregate_torch(logits, values, idx, n)
    ref_grads = torch.autograd.grad(ref, (logits, values), g, allow_unused=True)
    assert _with(True, lambda: triton_ops.enabled(logits))
    out = _with(True, lambda: matris_model.softmax_aggregate(logits, values, idx, n))
    assert out.grad_fn is not None and "SoftmaxAggregate" in type(out.grad_fn).__name__
    got_grads = torch.autograd.grad(out, (logits, values), g, allow_unused=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, ref_grads, strict=True):
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if n_edges:
        counts = torch.bincount(idx, minlength=n)
        assert torch.all(out[counts == 0] == 0)  # empty segments give zero
        one = counts == 1
        if bool(one.any()):  # a single edge: softmax weight 1, the message itself
            sel = one[idx]  # the edges that are alone on their target
            torch.testing.assert_close(out.detach()[idx[sel]], values.detach()[sel])


def test_torch_path_is_the_default_off_cuda():
    x = torch.randn(5, 4)
    assert not triton_ops.enabled(x)  # not forced
    assert not _with(True, lambda: triton_ops.enabled(x.double()))  # float64 never
    out = matris_model.softmax_aggregate(x.requires_grad_(True), torch.randn(5, 4), torch.tensor([0, 0, 2, 2, 2]), 3)
    assert "SoftmaxAggregate" not in type(out.grad_fn).__name__


def test_double_backward_matches_torch():
    """create_graph=True (training on forces): the gradient stays differentiable."""
    rng = np.random.default_rng(3)
    idx = _index(rng, 40, 9)
    logits = torch.randn(40, 6, device=DEV, requires_grad=True)
    values = torch.randn(40, 6, device=DEV, requires_grad=True)
    g = torch.randn(9, 6, device=DEV)

    def second(fn):
        out = fn(logits, values, idx, 9)
        dl, dv = torch.autograd.grad(out, (logits, values), g, create_graph=True)
        return torch.autograd.grad((dl.sin().sum() + (dv * dv).sum()), (logits, values))

    want = second(triton_ops.softmax_aggregate_torch)
    got = _with(True, lambda: second(triton_ops.softmax_aggregate))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_model_with_kernel_matches_torch_path():
    """A small MatRIS (energy, forces, stress, magmoms) with the kernel selected vs the torch path."""
    from matfunnel.potential.matris import MatrisConfig, MatrisModel
    from matfunnel.potential.matris.graph import build_matris_graph

    torch.manual_seed(5)
    cfg = MatrisConfig(num_layers=2, node_feat_dim=16, edge_feat_dim=24, three_body_feat_dim=20,
                       mlp_hidden_dims=32, pairwise_cutoff=4.0, three_body_cutoff=3.0)
    model = MatrisModel(cfg).to(DEV).eval()
    with torch.no_grad():  # move the ones and zeros off their defaults
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(8)
    frac = torch.as_tensor(np.concatenate([rng.random((4, 3)), [[0, 0, 0], [0.5, 0.5, 0.5]]]))
    lat = torch.as_tensor(np.stack([np.diag([3.6, 3.9, 3.4]) + rng.normal(0, 0.2, (3, 3)), 2.9 * np.eye(3)]))
    z = torch.tensor([3, 8, 26, 8, 11, 17])
    frac, lat, z = frac.to(DEV), lat.to(DEV), z.to(DEV)
    g = build_matris_graph(frac, lat, z, torch.tensor([4, 2], device=DEV), pairwise_cutoff=cfg.pairwise_cutoff,
                           three_body_cutoff=cfg.three_body_cutoff)
    if hasattr(g, "to"):
        g = g.to(DEV)
    assert g.n_angles > 0

    calls = []
    real = triton_ops.softmax_aggregate

    def counting(*a):
        calls.append(1)
        return real(*a)

    want = _with(False, lambda: model(g))
    triton_ops.softmax_aggregate = counting
    try:
        got = _with(True, lambda: model(g))
    finally:
        triton_ops.softmax_aggregate = real
    assert len(calls) == 4 * cfg.num_layers  # atom + line graph, target + source, per block
    for key, tol in (("energy", 1e-5), ("forces", 1e-5), ("stress", 1e-4), ("magmoms", 1e-5)):
        torch.testing.assert_close(got[key], want[key], atol=tol, rtol=1e-4)
