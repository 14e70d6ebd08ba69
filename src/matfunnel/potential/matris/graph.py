"""MatRIS graphs on top of matfunnel's batched periodic graph builder.

MatRIS uses the same two graphs as CHGNet: an atom graph of all pairs within ``pairwise_cutoff``
(MatRIS's edges are the *directed* pairs; each undirected edge carries one feature row shared by its
two directions), and a line graph whose nodes are the undirected bonds shorter than
``three_body_cutoff`` and whose edges are the angles (every ordered pair of distinct directed short
bonds leaving the same atom). :func:`matfunnel.potential.chgnet.graph.build_graph` builds exactly
these sets, so it is reused; this module only adds the directed-edge indexing and geometry MatRIS
needs.

Directed edge conventions (MatRIS's): a directed edge has a *target* (its centre atom) and a
*source* (the neighbour); its vector is ``x_target - (x_source + image @ L)``. Directed edges
``[0, U)`` are the canonical undirected edges (target = ``src``) and ``[U, 2U)`` their reverses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from matfunnel.potential.chgnet.graph import build_graph

__all__ = ["MatrisGraph", "build_matris_graph"]


@dataclass
class MatrisGraph:
    """The atom graph (undirected edges) and line graph (angles) of a batch of structures."""

    n_atoms: Tensor  # (B,) long
    batch: Tensor  # (N,) long
    numbers: Tensor  # (N,) long atomic numbers
    pos: Tensor  # (N, 3) float64 Cartesian positions (frac @ lattice, unwrapped)
    lattice: Tensor  # (B, 3, 3) float64
    volume: Tensor  # (B,) float64, signed a . (b x c)
    src: Tensor  # (U,) canonical target atom of each undirected edge
    dst: Tensor  # (U,) canonical source atom
    vec: Tensor  # (U, 3) float64, x_src - (x_dst + image @ L)
    n_short: int  # undirected edges [0, n_short) are line-graph nodes
    ang_center: Tensor  # (A,) atom at the angle
    ang_b1: Tensor  # (A,) first bond (line-graph target)
    ang_b2: Tensor  # (A,) second bond (line-graph source)
    ang_sign: Tensor  # (A,) float64 +-1: product of the two bonds' orientations at the centre

    @property
    def n_edges(self) -> int:
        """The number U of undirected edges."""
        return int(self.src.shape[0])

    @property
    def n_angles(self) -> int:
        """The number A of angles (line-graph edges)."""
        return int(self.ang_b1.shape[0])

    @property
    def n_structures(self) -> int:
        """The number B of structures in the batch."""
        return int(self.n_atoms.shape[0])

    def directed(self) -> tuple[Tensor, Tensor]:
        """(target, source) atoms of the 2U directed edges."""
        return torch.cat([self.src, self.dst]), torch.cat([self.dst, self.src])

    def degree(self) -> Tensor:
        """The number of undirected edges at each atom (N,)."""
        return torch.bincount(torch.cat([self.src, self.dst]), minlength=self.numbers.shape[0])


def build_matris_graph(
    frac: Tensor,
    lattice: Tensor,
    numbers: Tensor,
    n_atoms: Tensor,
    *,
    pairwise_cutoff: float = 6.0,
    three_body_cutoff: float = 4.0,
) -> MatrisGraph:
    """Graphs of a batch: ``frac`` (N, 3), ``lattice`` (B, 3, 3) rows are lattice vectors, ``n_atoms`` (B,)."""
    g = build_graph(frac, lattice, numbers, n_atoms, cutoff=pairwise_cutoff, bond_cutoff=three_body_cutoff)
    with torch.no_grad():
        lat = g.lattice
        pos = torch.bmm(g.frac.unsqueeze(1), lat[g.batch]).squeeze(1)
        b_edge = g.batch[g.src]
        shift = torch.bmm(g.image.unsqueeze(1), lat[b_edge]).squeeze(1)
        vec = pos[g.src] - (pos[g.dst] + shift)
        volume = torch.einsum("bi,bi->b", lat[:, 0], torch.linalg.cross(lat[:, 1], lat[:, 2]))
    return MatrisGraph(
        n_atoms=g.n_atoms, batch=g.batch, numbers=g.atomic_numbers, pos=pos, lattice=lat, volume=volume,
        src=g.src, dst=g.dst, vec=vec, n_short=g.n_short, ang_center=g.angle_center, ang_b1=g.angle_b1,
        ang_b2=g.angle_b2, ang_sign=g.angle_sign.to(torch.float64),
    )
