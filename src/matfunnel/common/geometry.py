"""Bounds from a periodic cell's geometry, computed before any neighbour search.

A neighbour graph's size follows from the cell alone: the perpendicular widths of the cell (``volume /
|a_j x a_k|``) say how many periodic images lie within a cutoff along each lattice direction, the number density
(atoms per A^3) how many neighbours an atom has within a sphere, and the shortest lattice vector of the reduced
basis how close an atom is to its own periodic image. These checks let a hostile cell (a 1-atom cell with
1-degree angles: volume 0.007 A^3, nearest image 0.05 A; a 0.3 A cube) be refused in microseconds instead of
growing a graph until the process runs out of memory.

Everything here is numpy on 3x3 matrices: no pymatgen, no torch.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

#: atoms per A^3 above which a cell cannot be physical (diamond, the densest solid at ambient pressure: 0.18;
#: hydrogen at 500 GPa: about 0.9)
MAX_DENSITY = 1.0
#: smallest |det| / (|a| |b| |c|) of a usable cell (all angles within ~0.06 degrees of flat otherwise)
MIN_FLATNESS = 1e-6


def perpendicular_widths(lattice: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of the cell along each lattice direction, A.

    Parameters
    ----------
    lattice
        (3, 3) lattice vectors as rows.

    Returns
    -------
    numpy.ndarray
        (3,) ``volume / |a_j x a_k|`` for each direction ``i`` (0 where the face has no area).
    """
    lat = np.asarray(lattice, dtype=float)
    vol = abs(float(np.linalg.det(lat)))
    areas = np.array([np.linalg.norm(np.cross(lat[(i + 1) % 3], lat[(i + 2) % 3])) for i in range(3)])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(areas > 0, vol / np.where(areas > 0, areas, 1.0), 0.0)


def images_within(lattice: np.ndarray, cutoff: float) -> np.ndarray:
    """Periodic images within ``cutoff`` on each side, per lattice direction: ``ceil(cutoff / width)``."""
    w = perpendicular_widths(lattice)
    with np.errstate(divide="ignore"):
        return np.ceil(cutoff / np.maximum(w, 1e-300)).astype(float)


def _gram_schmidt(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonalised rows of ``b`` and the Gram-Schmidt coefficients ``mu[i, j]``."""
    bstar = np.zeros_like(b)
    mu = np.zeros((3, 3))
    for i in range(3):
        v = b[i].copy()
        for j in range(i):
            mu[i, j] = float(b[i] @ bstar[j]) / max(float(bstar[j] @ bstar[j]), 1e-300)
            v -= mu[i, j] * bstar[j]
        bstar[i] = v
    return bstar, mu


def lll_reduce(lattice: np.ndarray, delta: float = 0.75, max_iter: int = 1000) -> np.ndarray:
    """An LLL-reduced basis (rows) of the same lattice as the non-degenerate 3x3 ``lattice``.

    Parameters
    ----------
    lattice
        (3, 3) lattice vectors as rows.
    delta
        Lovasz condition parameter.
    max_iter
        Bound on the swaps and size reductions (a degenerate input stops there, still a basis of the lattice).

    Returns
    -------
    numpy.ndarray
        (3, 3) reduced basis.
    """
    b = np.array(lattice, dtype=float)
    bstar, mu = _gram_schmidt(b)
    k, it = 1, 0
    while k < 3 and it < max_iter:
        it += 1
        for j in range(k - 1, -1, -1):  # size reduction
            q = round(mu[k, j])
            if q:
                b[k] -= q * b[j]
                bstar, mu = _gram_schmidt(b)
        if bstar[k] @ bstar[k] >= (delta - mu[k, k - 1] ** 2) * (bstar[k - 1] @ bstar[k - 1]):
            k += 1
        else:
            b[[k - 1, k]] = b[[k, k - 1]]
            bstar, mu = _gram_schmidt(b)
            k = max(k - 1, 1)
    return b


def shortest_lattice_vector(lattice: np.ndarray) -> float:
    """Length of the shortest non-zero lattice vector: the distance from any atom to its nearest own image, A.

    The basis is LLL-reduced first; on a reduced 3-d basis the shortest vector has coefficients in {-2 .. 2}, and
    the widths of the reduced cell bound the search in any case.
    """
    red = lll_reduce(lattice)
    best = float(np.min(np.linalg.norm(red, axis=1)))
    n = np.minimum(images_within(red, best), 2).astype(int)
    ranges = [range(-int(m), int(m) + 1) for m in n]
    shifts = np.array([s for s in itertools.product(*ranges) if any(s)], dtype=float)
    if len(shifts):
        best = min(best, float(np.min(np.linalg.norm(shifts @ red, axis=1))))
    return best


def flatness(lattice: np.ndarray) -> float:
    """``|det L| / (|a| |b| |c|)``: 1 for a rectangular cell, 0 for a flat one (scale-free)."""
    lat = np.asarray(lattice, dtype=float)
    norms = np.prod(np.linalg.norm(lat, axis=1))
    return abs(float(np.linalg.det(lat))) / norms if norms > 0 else 0.0


def neighbours_per_atom(density: float, cutoff: float) -> float:
    """Expected neighbours of an atom within ``cutoff`` at ``density`` atoms per A^3 (a uniform cell)."""
    return density * 4.0 / 3.0 * math.pi * cutoff**3


def cell_problem(lattice: np.ndarray, n_atoms: int, min_distance: float = 0.5,
                 max_density: float = MAX_DENSITY) -> str | None:
    """Why a cell of ``n_atoms`` atoms cannot be evaluated, or None: the cheap checks before any neighbour search.

    Parameters
    ----------
    lattice
        (3, 3) lattice vectors as rows, A (finite).
    n_atoms
        Atoms in the cell (at least 1).
    min_distance
        Atoms closer than this (here: an atom and its own periodic image) cannot be evaluated, A.
    max_density
        Atoms per A^3 above which a cell is not physical.

    Returns
    -------
    str or None
        The problem in words (with the numbers and the limit), or None when the cell passes.
    """
    lat = np.asarray(lattice, dtype=float)
    vol = abs(float(np.linalg.det(lat)))
    if vol == 0.0 or not math.isfinite(vol):
        return "the cell has zero volume (its lattice vectors are linearly dependent)"
    flat = flatness(lat)
    if flat < MIN_FLATNESS:
        return f"the cell is degenerate (volume {vol:.3g} A^3; its lattice vectors are nearly in one plane)"
    density = n_atoms / vol
    if density > max_density:
        return (f"number density {density:.3g} atoms/A^3 (volume {vol:.3g} A^3 for {n_atoms} atoms) is not "
                f"physical (at most {max_density:g}; diamond has 0.18)")
    # every non-zero lattice vector is at least as long as the smallest width: only a thin cell needs the search
    if float(perpendicular_widths(lat).min()) >= min_distance:
        return None
    d_img = shortest_lattice_vector(lat)
    if d_img < min_distance:
        return (f"atoms closer than {min_distance} A: every atom is {d_img:.3f} A from its own periodic image "
                "(shortest lattice vector of the reduced cell)")
    return None


__all__ = ["MAX_DENSITY", "cell_problem", "flatness", "images_within", "lll_reduce", "neighbours_per_atom",
           "perpendicular_widths", "shortest_lattice_vector"]
