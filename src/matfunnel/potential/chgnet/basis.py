"""CHGNet's radial and angular bases with hand-written backward passes (any device, float64).

Each basis maps one scalar per row (a bond length, a bond angle's cosine) to 31 features, and the
forces need only the derivative with respect to that scalar. Autograd through the elementwise
formulas makes about ten passes over (rows, 31) tensors in the backward, one of them a new ``cos``;
here the backward is two weighted row sums of quantities the forward keeps (the sines and cosines; the
radial basis needs one extra ``cos``), which matters on the CPU where these are memory-bound passes.

The forwards and the autograd versions share one implementation of the formulas, so the outputs are
bitwise the same; the gradients agree to rounding (tested in
``tests/test_chgnet_basis.py``). With frequencies that require gradients (training), and within
:func:`~matfunnel.potential.chgnet.mode.plain_autograd` (whose backward must be differentiable), the model
keeps the autograd versions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from matfunnel.potential.chgnet.mode import is_plain


def _envelope(x: Tensor, p: int) -> Tensor:
    """CHGNet's polynomial cutoff envelope of x = d / cutoff (before zeroing from x = 1 on)."""
    xp = x**p
    return 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x


def _radial_parts(d: Tensor, freq: Tensor, cutoff: float, p: int) -> tuple[Tensor, Tensor, Tensor]:
    """The radial basis and the arguments and sines it was made of (kept for the backward)."""
    d = d[:, None]
    arg = freq * (d * (1.0 / cutoff))
    sin = torch.sin(arg)
    out = math.sqrt(2.0 / cutoff) * sin / d
    x = d / cutoff
    return out * torch.where(x < 1, _envelope(x, p), torch.zeros_like(x)), arg, sin


def _angular_parts(cos: Tensor, freq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The angular basis and the sines and cosines it was made of (kept for the backward)."""
    theta = torch.acos(cos * (1 - 1e-6))
    t = theta[:, None] * freq
    s, co = torch.sin(t), torch.cos(t)
    c0 = cos.new_full((cos.shape[0], 1), 1 / math.sqrt(2.0))
    return torch.cat([c0, s, co], 1) / math.sqrt(math.pi), s, co


def radial_reference(d: Tensor, freq: Tensor, cutoff: float, p: int) -> Tensor:
    """sqrt(2/c) sin(f d / c) / d times the polynomial envelope of d / c (zero from the cutoff on); autograd."""
    return _radial_parts(d, freq, cutoff, p)[0]


def angular_reference(cos: Tensor, freq: Tensor) -> Tensor:
    """[1/sqrt(2), sin(theta f), cos(theta f)] / sqrt(pi), theta = acos(cos (1 - 1e-6)); autograd."""
    return _angular_parts(cos, freq)[0]


class _Radial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d: Tensor, freq: Tensor, cutoff: float, p: int) -> Tensor:
        out, arg, sin = _radial_parts(d, freq, cutoff, p)
        ctx.save_for_backward(d, freq, arg, sin)
        ctx.cutoff, ctx.p = cutoff, p
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        d, freq, arg, sin = ctx.saved_tensors
        c, p = ctx.cutoff, ctx.p
        k = math.sqrt(2.0 / c)
        x = d / c
        env = _envelope(x, p)
        denv = -(p * (p + 1) * (p + 2) / 2) * x ** (p - 1) * (1 - x) ** 2  # d env / dx
        inside = (x < 1).to(d.dtype)
        # d out_j / dd = k [ cos(arg_j) f_j / c * env / d + sin(arg_j) (denv / (c d) - env / d^2) ]
        a = k * inside * env / (c * d)
        b = k * inside * (denv / (c * d) - env / (d * d))
        g_cos = (grad * torch.cos(arg)) @ freq
        g_sin = (grad * sin).sum(1)
        return a * g_cos + b * g_sin, None, None, None


class _Angular(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cos: Tensor, freq: Tensor) -> Tensor:
        out, s, co = _angular_parts(cos, freq)
        ctx.save_for_backward(cos, freq, s, co)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, freq, s, co = ctx.saved_tensors
        n = freq.shape[0]
        u = cos * (1 - 1e-6)
        dtheta = -(1 - 1e-6) / torch.sqrt(1 - u * u)  # d theta / d cos
        g_s, g_c = grad[:, 1:1 + n], grad[:, 1 + n:]
        g_theta = ((g_s * co - g_c * s) @ freq) / math.sqrt(math.pi)
        return g_theta * dtheta, None


def radial(d: Tensor, freq: Tensor, cutoff: float, p: int) -> Tensor:
    """The radial basis (rows of ``d``, one column per frequency); fused backward unless ``freq`` is trained.

    Autograd through the formulas (:func:`radial_reference`) in plain mode.
    """
    if freq.requires_grad or is_plain():
        return radial_reference(d, freq, cutoff, p)
    return _Radial.apply(d, freq, cutoff, p)


def angular(cos: Tensor, freq: Tensor) -> Tensor:
    """The angular Fourier basis (1 + 2 len(freq) columns); fused backward unless ``freq`` is trained.

    Autograd through the formulas (:func:`angular_reference`) in plain mode.
    """
    if freq.requires_grad or is_plain():
        return angular_reference(cos, freq)
    return _Angular.apply(cos, freq)
