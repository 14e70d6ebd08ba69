"""Periodic neighbour search for batches of structures (pure torch on any device; C++ on the CPU).

Many periodic structures are processed at once with a batched cell list: every structure's cell is
cut into bins at least ``cutoff`` wide (or a single bin when the cell is thinner than the cutoff, in
which case enough periodic images are visited), each atom visits the bins around its own, and the
candidate pairs are filtered by distance. There is no per-structure Python loop; work is split into
chunks only by the number of candidate pairs, so 10k-atom structures fit in memory.

Pairs are ``(i, j, image)`` with ``0 < |x_j + image @ L - x_i| <= cutoff``, self-images and several
images of the same neighbour included, each undirected pair once in canonical direction (``i < j``, or
``i == j`` with ``image`` lexicographically positive). Images are relative to the fractional coordinates
as given (not wrapped), like pymatgen's. Backend-neutral: the crystal-graph builders and the engine's
distance check use it (the C++ search shares the library of chgnet's CPU kernels).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: pairs of atoms closer than this are the same point (pymatgen's numerical_tol)
SELF_TOL = 1e-8


def _cpu_ops():
    """Chgnet's C++ library wrapper (imported on use: the chgnet package imports this module)."""
    from matfunnel.potential.chgnet import cpu_ops

    return cpu_ops


def argsort_stable(x: Tensor) -> Tensor:
    """Stable argsort of a 1-d integer tensor.

    torch's CPU sort of int64 is very slow (about 280 ms for 87k values on 2 cores, against about
    10 ms for numpy's), so CPU tensors are sorted by a C++ counting sort where the keys are indices into
    a table (about 0.3 ms for 143k keys), else by numpy.
    """
    if x.device.type == "cpu":
        import numpy as np

        order = _cpu_ops().counting_argsort(x)
        if order is not None:
            return order
        return torch.from_numpy(np.argsort(x.numpy(), kind="stable"))
    return torch.argsort(x, stable=True)


def exclusive_cumsum(x: Tensor) -> Tensor:
    """``[0, x0, x0 + x1, ...]`` (same length as ``x``)."""
    out = torch.zeros_like(x)
    if x.numel() > 1:
        torch.cumsum(x[:-1], 0, out=out[1:])
    return out


def expand_counts(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For counts c_k return (owner k, rank within owner) for sum(c) items."""
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    rank = torch.arange(owner.shape[0], device=counts.device) - exclusive_cumsum(counts)[owner]
    return owner, rank


def cell_geometry(lattice: Tensor, cutoff: float, max_bins: int = 64) -> tuple[Tensor, Tensor]:
    """Bins per axis and bin search radius per axis for each lattice (B, 3, 3)."""
    a0, a1, a2 = lattice[:, 0], lattice[:, 1], lattice[:, 2]
    vol = torch.linalg.det(lattice).abs()
    areas = torch.stack(
        [torch.linalg.cross(a1, a2).norm(dim=1), torch.linalg.cross(a2, a0).norm(dim=1),
         torch.linalg.cross(a0, a1).norm(dim=1)], dim=1)
    spacing = vol[:, None] / areas  # distance between lattice planes
    nbins = torch.clamp(torch.floor(spacing / cutoff), 1, max_bins).long()
    width = spacing / nbins
    reach = torch.ceil(cutoff / width * (1 + 1e-9)).long()
    return nbins, reach


def neighbor_pairs(
    frac: Tensor, lattice: Tensor, batch: Tensor, cutoff: float, max_candidates: int = 4_000_000
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Canonical undirected pairs within ``cutoff`` for a batch of periodic structures.

    Returns ``(i, j, image, distance)``; ``image`` (float64) is relative to ``frac`` as given.
    """
    dev = frac.device
    frac = frac.to(torch.float64)
    lattice = lattice.to(torch.float64)
    nbins, reach = cell_geometry(lattice, cutoff)
    shift = torch.floor(frac)
    fw = frac - shift  # wrapped into [0, 1]
    nb_a = nbins[batch]
    cell = torch.minimum((fw * nb_a).long(), nb_a - 1).clamp_(min=0)
    bins_per = nbins.prod(dim=1)
    bin_off = exclusive_cumsum(bins_per)
    total_bins = int(bins_per.sum())

    def gbin(b, c):
        nb = nbins[b]
        return bin_off[b] + (c[:, 0] * nb[:, 1] + c[:, 1]) * nb[:, 2] + c[:, 2]

    abin = gbin(batch, cell)
    order = argsort_stable(abin)
    counts = torch.bincount(abin, minlength=total_bins)
    start = exclusive_cumsum(counts)

    # every (atom, bin offset) pair
    span = 2 * reach + 1
    n_off = span.prod(dim=1)
    a_idx, t = expand_counts(n_off[batch])
    ab = batch[a_idx]
    sp = span[ab]
    d2 = t % sp[:, 2]
    t = t // sp[:, 2]
    d1 = t % sp[:, 1]
    d0 = t // sp[:, 1]
    delta = torch.stack([d0, d1, d2], 1) - reach[ab]
    c = cell[a_idx] + delta
    nb = nbins[ab]
    img = torch.div(c, nb, rounding_mode="floor")
    tb = gbin(ab, c - img * nb)
    cnt = counts[tb]

    r2 = cutoff * cutoff
    out_i, out_j, out_img, out_d = [], [], [], []
    csum = torch.cumsum(cnt, 0)
    total = int(csum[-1]) if csum.numel() else 0
    # chunk over (atom, offset) pairs so that at most ~max_candidates pairs exist at once
    bounds = [0]
    if total > max_candidates:
        cuts = torch.searchsorted(csum, torch.arange(max_candidates, total, max_candidates, device=dev))
        bounds += [int(x) for x in cuts.tolist()]
    bounds.append(cnt.shape[0])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        if hi <= lo:
            continue
        owner, rank = expand_counts(cnt[lo:hi])
        owner += lo
        i = a_idx[owner]
        j = order[start[tb[owner]] + rank]
        im = img[owner]
        sh = shift[i] - shift[j]
        image = im.to(torch.float64) + sh  # relative to the unwrapped input coordinates
        # canonical direction only: i < j, or self-image with positive image
        same = i == j
        lexpos = (image[:, 0] > 0) | (
            (image[:, 0] == 0) & ((image[:, 1] > 0) | ((image[:, 1] == 0) & (image[:, 2] > 0))))
        keep = (i < j) | (same & lexpos)
        i, j, image, im = i[keep], j[keep], image[keep], im[keep]
        b = batch[i]
        vec = ((fw[j] + im - fw[i]).unsqueeze(2) * lattice[b]).sum(1)
        dist2 = (vec * vec).sum(1)
        ok = (dist2 <= r2) & (dist2 > SELF_TOL**2)
        out_i.append(i[ok])
        out_j.append(j[ok])
        out_img.append(image[ok])
        out_d.append(dist2[ok].sqrt())
    if not out_i:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return z, z, torch.zeros(0, 3, dtype=torch.float64, device=dev), torch.zeros(0, dtype=torch.float64, device=dev)
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_img), torch.cat(out_d)


def pairs_within(frac: Tensor, lattice: Tensor, n_atoms: Tensor, cutoff: float, batch: Tensor | None = None,
                 max_candidates: int = 4_000_000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`neighbor_pairs` of the structures ``n_atoms`` (B,), by the C++ search on the CPU when it is built."""
    cpu_ops = _cpu_ops()
    if cpu_ops.available(frac.device):
        return cpu_ops.neighbor_pairs(frac.to(torch.float64), lattice.to(torch.float64), n_atoms, cutoff, SELF_TOL)
    if batch is None:
        batch = torch.repeat_interleave(torch.arange(n_atoms.shape[0], device=frac.device), n_atoms.to(frac.device))
    return neighbor_pairs(frac, lattice, batch, cutoff, max_candidates)
