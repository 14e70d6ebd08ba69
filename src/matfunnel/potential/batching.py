"""Greedy packing of structures into batches under size budgets (shared by the model backends)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def pack_greedy(
    n_atoms: Sequence[int],
    sizes: Sequence[tuple[float, float]],
    too_big: Callable[[int, float, float], bool],
) -> list[list[int]]:
    """Indices in input order, cut into batches whenever adding the next structure would make
    ``too_big(atoms, edges, angles)`` true; ``sizes`` holds each structure's (edges, angles)
    estimate. A structure that alone is too big gets a batch of its own."""
    batches: list[list[int]] = []
    cur: list[int] = []
    ca, ce, cg = 0, 0.0, 0.0
    for k, (n, (e, a)) in enumerate(zip(n_atoms, sizes)):
        if cur and too_big(ca + n, ce + e, cg + a):
            batches.append(cur)
            cur, ca, ce, cg = [], 0, 0.0, 0.0
        cur.append(k)
        ca, ce, cg = ca + n, ce + e, cg + a
    if cur:
        batches.append(cur)
    return batches
