"""Symmetry-constrained relaxation: forces and stress averaged over each structure's space group.

The space-group operations of every structure are found once with spglib (on the starting
geometry); at each step the forces and stress are replaced by their group averages,
``f_sym[g(i)] = 1/|G| sum_g R_g f_i`` and ``s_sym = 1/|G| sum_g R_g s R_g^T`` (Cartesian rotations from
the current cell), so a symmetric structure stays symmetric (as ASE's ``FixSymmetry`` does for
forces and stress). All structures of a batch are handled in one gather/scatter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import spglib
import torch
from pymatgen.core import Lattice, Structure

from matfunnel.engine.state import DTYPE, SystemState


def _ops(structure: Structure, symprec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return spglib's operations that map the atoms onto atoms of the same element.

    Fractional rotations (K, 3, 3), translations (K, 3) and the atom permutation of each (K, n), atom i -> perm[k, i].
    """
    cell = (structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
    # spglib annotates the cell as nested sequences; it takes numpy arrays (and converts them to arrays itself)
    ds = spglib.get_symmetry(cell, symprec=symprec)  # type: ignore[arg-type]
    frac = structure.frac_coords
    if ds is None:
        return np.eye(3, dtype=int)[None], np.zeros((1, 3)), np.arange(len(structure))[None]
    rots, trans = np.asarray(ds["rotations"]), np.asarray(ds["translations"])
    z = np.asarray(structure.atomic_numbers)
    perms, keep = [], []
    tol = max(symprec, 1e-5) * 10
    for k, (r, t) in enumerate(zip(rots, trans, strict=True)):
        new = frac @ r.T + t
        d = new[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        dist = np.linalg.norm(d @ structure.lattice.matrix, axis=2)
        j = dist.argmin(axis=1)
        if np.all(dist[np.arange(len(frac)), j] < tol) and np.all(z[j] == z) and len(set(j)) == len(j):
            perms.append(j)
            keep.append(k)
    return rots[keep], trans[keep], np.asarray(perms, dtype=np.int64)


def space_group_ops(structure: Structure, symprec: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Fractional rotations (K, 3, 3) and the atom permutation of each op (K, n): atom i -> perm[k, i]."""
    rots, _, perms = _ops(structure, symprec)
    return rots, perms


def _sqrtm_spd(m: np.ndarray, power: float) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * w**power) @ v.T


def symmetrized(structure: Structure, symprec: float = 1e-3) -> Structure:
    """``structure`` moved onto the exact symmetry of the space group spglib finds at ``symprec``.

    This is what ASE's ``FixSymmetry`` does first, with its ``refine_symmetry``: otherwise noise below ``symprec``
    stays, and the symmetrised forces keep it, so the result is only as symmetric as the input.

    The cell's metric ``G = L L^T`` is averaged over the point group (``R^T G R``) and the cell changed to it as
    little as possible (``L' = G'^1/2 G^-1/2 L``); each atom's fractional position is then averaged over its images
    under every operation. Species and properties are kept.
    """
    rots, trans, perms = _ops(structure, symprec)
    if len(rots) <= 1:
        return structure
    lat = structure.lattice.matrix
    g = lat @ lat.T
    g_sym = np.mean([r.T @ g @ r for r in rots], axis=0)
    new_lat = _sqrtm_spd(g_sym, 0.5) @ _sqrtm_spd(g, -0.5) @ lat
    frac = structure.frac_coords
    shift = np.zeros_like(frac)
    for r, t, perm in zip(rots, trans, perms, strict=True):
        d = frac @ r.T + t - frac[perm]  # image of atom i under the op, relative to the atom it lands on
        shift[perm] += d - np.round(d)
    return Structure(Lattice(new_lat), [site.species for site in structure], frac + shift / len(rots),
                     site_properties=structure.site_properties, labels=[site.label for site in structure],
                     properties=dict(structure.properties))


class Symmetrizer:
    """Per-structure symmetry operations, keyed by the state's ``ids``; call it on a state."""

    def __init__(self, symprec: float = 1e-3):
        self.symprec = symprec
        self.ops: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._flat_key: tuple | None = None
        self._flat: tuple | None = None

    def add(self, idx: int, structure: Structure) -> int:
        """Register structure ``idx``; returns the number of operations found."""
        self.ops[idx] = space_group_ops(structure, self.symprec)
        return len(self.ops[idx][0])

    def remove(self, idx: int) -> None:
        """Forget structure ``idx`` (it left the batch): a long run keeps only the operations of its batch."""
        self.ops.pop(idx, None)

    def _flatten(self, state: SystemState):
        key = (tuple(state.ids.tolist()), state.positions.shape[0])
        if key == self._flat_key:
            return self._flat
        dev = state.device
        counts = state.n_atoms.tolist()
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rots, rot_sys, src, dst, pair_op, n_ops = [], [], [], [], [], []
        n_op_total = 0
        for b, idx in enumerate(state.ids.tolist()):
            r, perm = self.ops[idx]
            k, n = perm.shape
            rots.append(r)
            rot_sys.append(np.full(k, b))
            src.append(np.tile(np.arange(n), k) + starts[b])
            dst.append(perm.reshape(-1) + starts[b])
            pair_op.append(np.repeat(np.arange(k), n) + n_op_total)
            n_op_total += k
            n_ops.append(k)
        t = lambda a, dt=torch.long: torch.as_tensor(np.concatenate(a), dtype=dt, device=dev)  # noqa: E731
        self._flat = (t(rots, DTYPE), t(rot_sys), t(src), t(dst), t(pair_op),
                      torch.as_tensor(n_ops, dtype=DTYPE, device=dev))
        self._flat_key = key
        return self._flat

    def __call__[S: SystemState](self, state: S) -> S:
        """Return ``state`` with its forces and stress averaged over each structure's operations."""
        if state.forces is None:
            return state
        rot_frac, rot_sys, src, dst, pair_op, n_ops = self._flatten(state)
        # rows of L are lattice vectors, r = L^T frac: frac' = R frac  =>  r' = (L^T R L^-T) r
        lat_t = state.cell[rot_sys].transpose(1, 2)
        rc = lat_t @ rot_frac @ torch.linalg.inv(lat_t)
        f = torch.bmm(rc[pair_op], state.forces[src].unsqueeze(2)).squeeze(2)
        forces = torch.zeros_like(state.forces).index_add_(0, dst, f) / n_ops[state.batch, None]
        stress = state.stress
        if stress is not None:
            s = rc @ stress[rot_sys] @ rc.transpose(1, 2)
            stress = torch.zeros_like(stress).index_add_(0, rot_sys, s) / n_ops[:, None, None]
        return dataclasses.replace(state, forces=forces, stress=stress)

