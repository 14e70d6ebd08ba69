"""Greedy packing of structures into batches under size budgets (shared by the model backends)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def estimate_sizes(n_atoms, volumes, cutoff: float = 6.0, bond_cutoff: float = 3.0):
    """Rough (directed edges, angles) per structure from atom density, for batching."""
    out = []
    for n, v in zip(n_atoms, volumes, strict=False):
        rho = n / max(v, 1e-6)
        k_edge = rho * 4.0 / 3.0 * math.pi * cutoff**3
        k_bond = rho * 4.0 / 3.0 * math.pi * bond_cutoff**3
        out.append((n * k_edge, n * k_bond * max(k_bond - 1.0, 0.0) + n * 4))
    return out


def pack_greedy(
    n_atoms: Sequence[int],
    sizes: Sequence[tuple[float, float]],
    too_big: Callable[[int, float, float], bool],
) -> list[list[int]]:
    """Indices in input order, cut into batches under ``too_big``.

    A batch is cut whenever adding the next structure would make ``too_big(atoms, edges, angles)`` true;
    ``sizes`` holds each structure's (edges, angles) estimate. A structure that alone is too big gets a batch
    of its own.
    """
    batches: list[list[int]] = []
    cur: list[int] = []
    ca, ce, cg = 0, 0.0, 0.0
    for k, (n, (e, a)) in enumerate(zip(n_atoms, sizes, strict=False)):
        if cur and too_big(ca + n, ce + e, cg + a):
            batches.append(cur)
            cur, ca, ce, cg = [], 0, 0.0, 0.0
        cur.append(k)
        ca, ce, cg = ca + n, ce + e, cg + a
    if cur:
        batches.append(cur)
    return batches


class ItemBudget:
    """Batching by work items (directed edges + angles) for a potential with an atom graph and a bond graph.

    The potential sets ``device``, ``memory_budget``, ``bytes_per_item``, ``graph_cutoffs`` (atom graph, bond
    graph) in A, an explicit atom cap ``_max_atoms`` (or None) and the optional ``max_edges`` / ``max_angles``;
    :meth:`_set_budget` derives ``max_items`` and ``max_atoms`` from them.
    """

    device: str
    memory_budget: int
    bytes_per_item: int
    graph_cutoffs: tuple[float, float]
    _max_atoms: int | None
    max_edges: int | None
    max_angles: int | None
    #: derived by :meth:`_set_budget`
    max_items: int
    max_atoms: int
    #: the item budget never goes below this
    min_items: int = 1_000

    def _set_budget(self) -> None:
        self.max_items = max(self.min_items, self.memory_budget // self.bytes_per_item)
        # on a GPU the item budget is what binds for crystals (relax-like cells: ~120 items per atom); the atom
        # cap only bounds the per-atom tensors of sparse cells. A fixed 20k cap left an H100 a third idle in
        # batched relaxations (benchmarks/NOTES.md, fifth session).
        gpu = str(self.device).startswith("cuda")
        self.max_atoms = self._max_atoms or (max(20_000, self.max_items // 40) if gpu else 4_000)

    def too_big(self, n_atoms: int, edges: float, angles: float) -> bool:
        """Whether a batch of that many atoms, directed edges and angles exceeds this potential's budgets."""
        if n_atoms > self.max_atoms or edges + angles > self.max_items:
            return True
        return (self.max_edges is not None and edges > self.max_edges) or (
            self.max_angles is not None and angles > self.max_angles)

    def retained_bytes_per_item(self) -> float:
        """Bytes per work item a single structure needs at least (a potential that chunks its work needs less)."""
        return float(self.bytes_per_item)

    def budget_problem(self, n_atoms: int, volume: float) -> str | None:
        """Why one structure of ``n_atoms`` atoms in ``volume`` A^3 cannot be evaluated within the memory budget.

        Parameters
        ----------
        n_atoms
            Atoms in the structure.
        volume
            Its cell volume, A^3.

        Returns
        -------
        str or None
            The estimate against the budget in words, or None when it fits (batches are then split to fit).
        """
        edges, angles = self.work_estimate(n_atoms, volume)
        need = (edges + angles) * self.retained_bytes_per_item()
        if need <= self.memory_budget:
            return None
        return (f"estimated memory {need / 2**30:.1f} GiB ({edges + angles:.3g} graph items for {n_atoms} atoms) "
                f"exceeds the memory budget of {self.memory_budget / 2**30:.1f} GiB; too large to evaluate here "
                "(a larger memory_budget on a machine that has the memory would allow it)")

    def work_estimate(self, n_atoms: int, volume: float) -> tuple[float, float]:
        """Estimated (directed edges, angles) of one structure, for :meth:`too_big` sums."""
        return estimate_sizes([n_atoms], [volume], *self.graph_cutoffs)[0]

    def plan_batches(self, n_atoms: list[int], volumes: list[float]) -> list[list[int]]:
        """Greedy batches (lists of indices, input order) under the memory / atom / edge / angle budgets."""
        return pack_greedy(n_atoms, estimate_sizes(n_atoms, volumes, *self.graph_cutoffs), self.too_big)
