"""CHGNet's radial and angular bases with hand-written backward passes (any device, float64).

Each basis maps one scalar per row (a bond length, a bond angle's cosine) to 31 features, and the
forces need only the derivative with respect to that scalar. Autograd through the elementwise
formulas makes about ten passes over (rows, 31) tensors in the backward, one of them a new ``cos``;
here the backward is two weighted row sums of quantities the forward keeps (the sines and cosines; the
radial basis needs one extra ``cos``), which matters on the CPU where these are memory-bound passes.

The forwards evaluate exactly the formulas of :class:`~.model.CHGNetModel` in the same order, so the
outputs are bitwise those of the autograd versions; the gradients agree to rounding (tested in
``tests/test_chgnet_parity.py``). With frequencies that require gradients (training) the model keeps
the autograd versions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def radial_reference(d: Tensor, freq: Tensor, cutoff: float, p: int) -> Tensor:
    """sqrt(2/c) sin(f d / c) / d times the polynomial envelope of d / c (zero from the cutoff on)."""
    d = d[:, None]
    out = math.sqrt(2.0 / cutoff) * torch.sin(freq * (d * (1.0 / cutoff))) / d
    x = d / cutoff
    xp = x**p
    env = 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
    return out * torch.where(x < 1, env, torch.zeros_like(x))


def angular_reference(cos: Tensor, freq: Tensor) -> Tensor:
    """[1/sqrt(2), sin(theta f), cos(theta f)] / sqrt(pi), theta = acos(cos (1 - 1e-6))."""
    theta = torch.acos(cos * (1 - 1e-6))
    t = theta[:, None] * freq
    c0 = cos.new_full((cos.shape[0], 1), 1 / math.sqrt(2.0))
    return torch.cat([c0, torch.sin(t), torch.cos(t)], 1) / math.sqrt(math.pi)


class _Radial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d: Tensor, freq: Tensor, cutoff: float, p: int) -> Tensor:
        # radial_reference, step by step, keeping the sines for the backward
        d2 = d[:, None]
        arg = freq * (d2 * (1.0 / cutoff))
        sin = torch.sin(arg)
        out = math.sqrt(2.0 / cutoff) * sin / d2
        x = d2 / cutoff
        xp = x**p
        env = 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
        ctx.save_for_backward(d, freq, arg, sin)
        ctx.cutoff, ctx.p = cutoff, p
        return out * torch.where(x < 1, env, torch.zeros_like(x))

    @staticmethod
    def backward(ctx, grad: Tensor):
        d, freq, arg, sin = ctx.saved_tensors
        c, p = ctx.cutoff, ctx.p
        k = math.sqrt(2.0 / c)
        x = d / c
        xp = x**p
        env = 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
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
        theta = torch.acos(cos * (1 - 1e-6))
        t = theta[:, None] * freq
        s, co = torch.sin(t), torch.cos(t)
        c0 = cos.new_full((cos.shape[0], 1), 1 / math.sqrt(2.0))
        ctx.save_for_backward(cos, freq, s, co)
        return torch.cat([c0, s, co], 1) / math.sqrt(math.pi)

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
    """The radial basis (rows of ``d``, one column per frequency); fused backward unless ``freq`` is trained."""
    if freq.requires_grad:
        return radial_reference(d, freq, cutoff, p)
    return _Radial.apply(d, freq, cutoff, p)


def angular(cos: Tensor, freq: Tensor) -> Tensor:
    """The angular Fourier basis (1 + 2 len(freq) columns); fused backward unless ``freq`` is trained."""
    if freq.requires_grad:
        return angular_reference(cos, freq)
    return _Angular.apply(cos, freq)
