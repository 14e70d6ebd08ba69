"""A standard band-structure path for phonopy without seekpath.

The high-symmetry path is Setyawan-Curtarolo's (pymatgen ``HighSymmKpath``), defined on pymatgen's
standard primitive cell; its q-points are mapped onto the primitive cell phonopy actually uses (an
integer change of basis, rotation-free), so the path is correct whatever setting the cell is in.
If no mapping is found (an unusual primitive cell), a generic path Gamma-X-Y-Z-R-Gamma along the
reciprocal axes is used.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from pymatgen.core import Lattice, Structure

log = logging.getLogger(__name__)

GAMMA = "Γ"


def _label(name: str) -> str:
    return GAMMA if name in ("\\Gamma", "Gamma", "GAMMA", "G") else name.replace("_", "").replace("\\", "")


def band_path(primitive: Structure, symprec: float = 1e-3) -> tuple[list[list[list[float]]], list[str], list[bool]]:
    """``(paths, labels, connections)`` in phonopy's ``run_band_structure`` form.

    ``paths`` holds segments of fractional q-points (of ``primitive``'s reciprocal lattice) from
    start to end; labels and connections follow phonopy's conventions.
    """
    try:
        return _standard_path(primitive, symprec)
    except Exception as exc:  # noqa: BLE001 - fall back to a generic path rather than fail
        log.info("standard band path unavailable (%s); using the generic path", exc)
        return _generic_path()


def _standard_path(primitive: Structure, symprec: float):
    from pymatgen.symmetry.bandstructure import HighSymmKpath

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kp = HighSymmKpath(primitive, path_type="setyawan_curtarolo", symprec=symprec)
    std = kp.prim.lattice
    mine = Lattice(primitive.lattice.matrix)
    mapping = mine.find_mapping(std, ltol=1e-3, atol=0.5)
    if mapping is None:
        raise ValueError("the primitive cell does not map onto the standard primitive cell")
    _, _, scale = mapping  # rotated std lattice = scale @ mine
    to_mine = np.linalg.inv(np.asarray(scale, dtype=float)).T
    kpoints = {k: np.asarray(v) @ to_mine for k, v in kp.kpath["kpoints"].items()}
    return _segments(kp.kpath["path"], kpoints)


def _segments(path: list[list[str]], kpoints: dict[str, np.ndarray]):
    paths, labels, connections = [], [], []
    for branch in path:
        for a, b in zip(branch[:-1], branch[1:], strict=False):
            paths.append([list(map(float, kpoints[a])), list(map(float, kpoints[b]))])
        # phonopy: labels for each path's start, plus the end of a disconnected path
        labels += [_label(n) for n in branch]
        connections += [True] * (len(branch) - 2) + [False]
    return paths, labels, connections


def _generic_path():
    pts = {"Γ": [0, 0, 0], "X": [0.5, 0, 0], "Y": [0, 0.5, 0], "Z": [0, 0, 0.5], "R": [0.5, 0.5, 0.5]}
    return _segments([["Γ", "X"], ["Γ", "Y"], ["Γ", "Z"], ["Γ", "R"]], {k: np.array(v, float) for k, v in pts.items()})
