"""Batched crystal-graph construction in pure torch (CPU or GPU).

The neighbour search is :mod:`matfunnel.potential.neighbors`'s. Conventions (the same neighbour sets chgnet builds):

* atom graph: every pair ``(i, j, image)`` with ``0 < |x_j + image @ L - x_i| <= cutoff``, including
  self-images and several images of the same neighbour. Each undirected edge is stored once, in
  canonical direction ``i < j`` (or ``i == j`` and ``image`` lexicographically positive); the two
  directed edges are the canonical one and its reverse ``(j, i, -image)``.
* bond graph: undirected edges shorter than ``bond_cutoff``; angles are every ordered pair of
  distinct *directed* short edges sharing their centre atom (a self-image bond and its reverse
  count as two directed edges of the same centre).

Images are relative to the fractional coordinates as given (not wrapped), like pymatgen's.
Undirected edges are ordered short bonds first, so ``bond features[:n_short]`` are the bond-graph
nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from matfunnel.potential.neighbors import SELF_TOL, argsort_stable, exclusive_cumsum, expand_counts, pairs_within

__all__ = ["SELF_TOL", "GraphBatch", "GraphTooLarge", "argsort_stable", "build_angles", "build_graph"]


class GraphTooLarge(ValueError):
    """Some structures' graphs exceed the item limit; counted before their angles were built.

    ``items[b]`` is structure ``b``'s work items (directed edges + angles) when over the limit, else -1.
    """

    def __init__(self, items: list[int], limit: int):
        self.items = items
        self.limit = limit
        over = [k for k in items if k >= 0]
        super().__init__(f"{len(over)} structure(s) over {limit:,} graph items (largest {max(over):,})")


def graph_items(i: Tensor, j: Tensor, n_short: int, batch: Tensor, n_struct: int) -> Tensor:
    """(B,) work items per structure: directed edges plus angles (ordered pairs of short bonds per centre)."""
    n_total = batch.shape[0]
    deg = torch.bincount(torch.cat([i[:n_short], j[:n_short]]), minlength=n_total)
    angles = torch.zeros(n_struct, dtype=torch.long, device=batch.device).index_add_(0, batch, deg * (deg - 1))
    edges = torch.bincount(batch[i], minlength=n_struct)
    return 2 * edges + angles


@dataclass
class GraphBatch:
    """A batch of crystal graphs, concatenated."""

    n_atoms: Tensor  # (B,) long
    batch: Tensor  # (N,) long, structure of each atom
    atomic_numbers: Tensor  # (N,) long
    frac: Tensor  # (N, 3) float64, as given
    lattice: Tensor  # (B, 3, 3) float64, rows are lattice vectors
    src: Tensor  # (U,) long, centre of the canonical directed edge
    dst: Tensor  # (U,) long, neighbour of the canonical directed edge
    image: Tensor  # (U, 3) float64, periodic image of dst
    length: Tensor  # (U,) float64 bond length
    n_short: int  # undirected edges [0, n_short) are shorter than bond_cutoff
    angle_center: Tensor  # (A,) long
    angle_b1: Tensor  # (A,) long, short-bond index of the first bond (aggregation target)
    angle_b2: Tensor  # (A,) long
    angle_sign: Tensor  # (A,) float64, +-1: product of the two directed-edge orientations
    angle_orient: Tensor  # (A, 2) int8, orientation of each bond: +1 canonical (centre = src), -1 reverse
    # directed short edges sorted by centre: position p is directed edge short_order[p] of
    # cat([canonical, reverse]) (so bond short_order[p] % n_short); angles are sorted by angle_e1
    short_order: Tensor  # (2 * n_short,) long
    angle_e1: Tensor  # (A,) long, position of the first directed bond in short_order (non-decreasing)
    angle_e2: Tensor  # (A,) long, position of the second directed bond in short_order

    @property
    def n_structures(self) -> int:
        """Number of structures in the batch."""
        return int(self.n_atoms.shape[0])

    @property
    def n_edges(self) -> int:
        """Number of undirected edges (each stored once, in canonical direction)."""
        return int(self.src.shape[0])

    @property
    def n_angles(self) -> int:
        """Number of angles (ordered pairs of directed short edges sharing their centre)."""
        return int(self.angle_center.shape[0])

    def degree(self) -> Tensor:
        """Number of directed edges leaving each atom."""
        n = self.atomic_numbers.shape[0]
        return torch.bincount(torch.cat([self.src, self.dst]), minlength=n)

    def to(self, device) -> GraphBatch:
        """A copy with every tensor moved to ``device``."""
        kw: dict[str, Any] = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return GraphBatch(**kw)


def build_angles(src: Tensor, dst: Tensor, n_short: int, n_atoms_total: int):
    """Angles over the short (bond-graph) edges ``[0, n_short)``.

    Returns (centre, b1, b2, sign, orientations, order, e1, e2) where b1/b2 are short-bond indices and
    sign = o1 * o2 with o = +1 for the canonical direction (centre = src) and -1 for the reverse (centre = dst);
    ``order`` sorts the directed short edges by centre and e1/e2 are positions in that order (e1 sorted).
    """
    dev = src.device
    sid = torch.arange(n_short, device=dev)
    center = torch.cat([src[:n_short], dst[:n_short]])
    bond = torch.cat([sid, sid])
    orient = torch.cat([torch.ones(n_short, device=dev), -torch.ones(n_short, device=dev)]).to(torch.float64)
    order = argsort_stable(center)
    c_sorted = center[order]
    k = torch.bincount(c_sorted, minlength=n_atoms_total)
    gstart = exclusive_cumsum(k)
    pos = torch.arange(c_sorted.shape[0], device=dev) - gstart[c_sorted]
    e1, t = expand_counts(k[c_sorted] - 1)
    t = t + (t >= pos[e1]).long()
    e2 = gstart[c_sorted[e1]] + t
    d1, d2 = order[e1], order[e2]
    o1, o2 = orient[d1], orient[d2]
    return center[d1], bond[d1], bond[d2], o1 * o2, torch.stack([o1, o2], 1).to(torch.int8), order, e1, e2


def build_graph(
    frac: Tensor,
    lattice: Tensor,
    atomic_numbers: Tensor,
    n_atoms: Tensor,
    cutoff: float = 6.0,
    bond_cutoff: float = 3.0,
    max_candidates: int = 4_000_000,
    max_items: int | None = None,
) -> GraphBatch:
    """Build the atom graph and bond graph of a batch of structures.

    ``frac`` (N, 3) fractional coordinates of all atoms, ``lattice`` (B, 3, 3), ``n_atoms`` (B,). With
    ``max_items``, a structure whose directed edges plus angles exceed it raises :class:`GraphTooLarge` after the
    neighbour search and before the angles (what grows quadratically with the local density) are built.
    """
    dev = frac.device
    with torch.no_grad():
        n_atoms = n_atoms.to(device=dev, dtype=torch.long)
        batch = torch.repeat_interleave(torch.arange(n_atoms.shape[0], device=dev), n_atoms)
        frac = frac.to(torch.float64)
        lattice = lattice.to(device=dev, dtype=torch.float64)
        i, j, image, dist = pairs_within(frac, lattice, n_atoms, cutoff, batch, max_candidates)
        short = dist < bond_cutoff
        # short bonds first, each group ordered by centre atom
        key = (~short).long() * (batch.shape[0] + 1) + i
        order = argsort_stable(key)
        i, j, image, dist = i[order], j[order], image[order], dist[order]
        n_short = int(short.sum())
        if max_items is not None:
            items = graph_items(i, j, n_short, batch, int(n_atoms.shape[0]))
            if bool((items > max_items).any()):
                raise GraphTooLarge([int(k) if k > max_items else -1 for k in items.tolist()], max_items)
        ac, b1, b2, sign, orient, s_order, e1, e2 = build_angles(i, j, n_short, batch.shape[0])
    return GraphBatch(
        n_atoms=n_atoms, batch=batch, atomic_numbers=atomic_numbers.to(device=dev, dtype=torch.long),
        frac=frac, lattice=lattice, src=i, dst=j, image=image, length=dist, n_short=n_short,
        angle_center=ac, angle_b1=b1, angle_b2=b2, angle_sign=sign, angle_orient=orient,
        short_order=s_order, angle_e1=e1, angle_e2=e2,
    )
