"""Plain-autograd mode of the CHGNet model: every custom kernel bypassed, so that backward is differentiable.

For inference the model runs gathers, segment sums, the bases and the gated MLPs through custom
``torch.autograd.Function``s (:mod:`.ops`, :mod:`.basis`), fused C++ CPU kernels (:mod:`.cpu_ops`) and Triton
kernels (:mod:`.triton_ops`). Their backward passes are fast but not themselves differentiable, which a loss on
forces or stress needs (double backward). Within :func:`plain_autograd` each of them falls back to plain torch
ops with the same numbers (``index_select``, ``index_add``, the reference formulas of the bases), on any device
and dtype; outside it nothing changes (one context-variable read per dispatch).

The mode is per thread (a :class:`contextvars.ContextVar`), nestable, and left on exit also after an exception.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from matfunnel.potential import triton_select

#: depth of nested plain_autograd blocks in the current thread / context
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("matfunnel_chgnet_plain", default=0)


@contextlib.contextmanager
def plain_autograd() -> Iterator[None]:
    """Within the block, CHGNet runs on plain differentiable torch ops only (no custom Function or kernel).

    Triton kernels are off too (:func:`matfunnel.potential.triton_select.suspended`). Nestable.

    Yields
    ------
    None
        Nothing; the fast paths are back when the block exits (also on an exception).
    """
    token = _DEPTH.set(_DEPTH.get() + 1)
    try:
        with triton_select.suspended():
            yield
    finally:
        _DEPTH.reset(token)


def is_plain() -> bool:
    """Whether the current code runs inside :func:`plain_autograd`."""
    return _DEPTH.get() > 0
