"""The fused-backward radial and angular bases against autograd through the plain formulas (float64)."""

from __future__ import annotations

import torch

from matfunnel.potential.chgnet import basis


def _freq(n, lo, hi):
    return torch.sort(torch.rand(n, dtype=torch.float64) * (hi - lo) + lo).values


def test_radial_basis_matches_autograd():
    d = torch.rand(2000, dtype=torch.float64) * 6.5 + 0.5  # across the 6 A cutoff
    d[:2] = torch.tensor([6.0, 5.999999])
    d.requires_grad_(True)
    freq = _freq(31, 2.0, 110.0)
    g = torch.randn(2000, 31, dtype=torch.float64)
    out = basis.radial(d, freq, 6.0, 8)
    ref = basis.radial_reference(d, freq, 6.0, 8)
    assert torch.equal(out, ref)
    (a,) = torch.autograd.grad(out, [d], g)
    (b,) = torch.autograd.grad(ref, [d], g)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.all(a[d.detach() >= 6.0] == 0)


def test_angular_basis_matches_autograd():
    cos = torch.rand(3000, dtype=torch.float64) * 2 - 1
    cos[:3] = torch.tensor([1.0, -1.0, 0.99999])  # collinear bonds: the (1 - 1e-6) factor keeps acos finite
    cos.requires_grad_(True)
    freq = _freq(15, 1.0, 17.0)
    g = torch.randn(3000, 31, dtype=torch.float64)
    out = basis.angular(cos, freq)
    ref = basis.angular_reference(cos, freq)
    assert torch.equal(out, ref)
    (a,) = torch.autograd.grad(out, [cos], g)
    (b,) = torch.autograd.grad(ref, [cos], g)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_trained_frequencies_keep_autograd():
    d = (torch.rand(50, dtype=torch.float64) * 5 + 1).requires_grad_(True)
    freq = _freq(31, 2.0, 110.0).requires_grad_(True)
    out = basis.radial(d, freq, 6.0, 8)
    (gf,) = torch.autograd.grad(out.sum(), [freq])
    assert torch.isfinite(gf).all() and gf.abs().sum() > 0
