"""When matfunnel's Triton kernels are used (shared by the model backends).

Kernels run for float32 CUDA tensors when triton imports (``MATFUNNEL_TRITON=0`` turns them off);
on the CPU only when a test forces them under ``TRITON_INTERPRET=1``. The pure-torch path is
always there. :func:`suspended` turns them off within a block (differentiable training passes, whose
backward must itself be differentiable: the kernels' backward passes are not).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from functools import lru_cache

import torch
from torch import Tensor

_FORCE = False
#: depth of nested :func:`suspended` blocks in the current thread / context (0: the kernels may run)
_SUSPENDED: contextvars.ContextVar[int] = contextvars.ContextVar("matfunnel_triton_suspended", default=0)


@lru_cache(maxsize=1)
def available() -> bool:
    """Whether triton imports (checked once)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem means no triton
        return False
    return True


def force(on: bool) -> None:
    """Use the kernels on CPU tensors too (only meaningful under ``TRITON_INTERPRET=1``; for tests)."""
    global _FORCE
    _FORCE = bool(on)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Within the block, :func:`enabled` is False for every tensor (nestable; per thread / context).

    Yields
    ------
    None
        Nothing; the kernels are back to their usual selection when the block exits (also on an exception).
    """
    token = _SUSPENDED.set(_SUSPENDED.get() + 1)
    try:
        yield
    finally:
        _SUSPENDED.reset(token)


def is_suspended() -> bool:
    """Whether the current code runs inside a :func:`suspended` block."""
    return _SUSPENDED.get() > 0


def enabled(x: Tensor, *, float64: bool = False) -> bool:
    """Whether the kernels run for ``x`` (float32; also float64 for kernels that accumulate in the input's type)."""
    if x.dtype != torch.float32 and not (float64 and x.dtype == torch.float64):
        return False
    if _SUSPENDED.get():
        return False
    if x.is_cuda:
        return os.environ.get("MATFUNNEL_TRITON", "1") != "0" and available()
    return _FORCE and os.environ.get("TRITON_INTERPRET") == "1" and available()


def pow2(n: int) -> int:
    """The smallest power of two >= n (block sizes)."""
    return 1 << max(int(n) - 1, 0).bit_length()
