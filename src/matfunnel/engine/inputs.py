"""Checks of the engines' arguments: one clear ``ValueError`` naming the argument, before any work starts.

Per-structure problems (a bad geometry, an unsupported element) are not errors here: they become that
structure's error document and the batch goes on. What is checked here is the call itself: a list of labels
or temperatures that does not match the structures, a threshold that can never be met.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MAX_FORCE = 1e3  # eV/A: beyond this a relaxation has blown up


def labels_for(labels: Sequence[str | None] | None, n: int) -> list[str | None]:
    """``labels`` as a list of ``n`` (``[None] * n`` when not given)."""
    if labels is None:
        return [None] * n
    if isinstance(labels, str):
        raise ValueError("labels must be a list with one label per structure, not a string")
    out = list(labels)
    if len(out) != n:
        raise ValueError(f"labels has {len(out)} entries for {n} structures")
    return out


def per_structure(name: str, value, n: int, *, minimum: float | None = None, integer: bool = False) -> list:
    """``value`` for each of ``n`` structures.

    A scalar for all, or a sequence / array of ``n`` values, each finite and at least ``minimum``.
    """
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        vals = [arr.item()] * n
    elif arr.ndim == 1 and arr.shape[0] == n:
        vals = arr.tolist()
    else:
        raise ValueError(f"{name} must be one number or one per structure ({n}), got shape {tuple(arr.shape)}")
    for k, v in enumerate(vals):
        where = "" if arr.ndim == 0 else f" (structure {k})"
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}{where}")
        if minimum is not None and v < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {v}{where}")
        if integer and v != int(v):
            raise ValueError(f"{name} must be a whole number, got {v}{where}")
    return [int(v) for v in vals] if integer else vals


def check_relax_settings(fmax: float, max_steps: int) -> None:
    """A force threshold that can be met and a step limit that is a count."""
    if not (isinstance(fmax, (int, float)) and math.isfinite(fmax) and fmax > 0):
        raise ValueError(f"fmax must be a positive number (eV/A), got {fmax!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"max_steps must be a whole number >= 0, got {max_steps!r}")


__all__ = ["check_relax_settings", "labels_for", "per_structure"]
