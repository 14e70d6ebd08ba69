"""DFT phonon references: one folder per material (phonopy / atomate2 / MDR layout).

A folder holds ``phonopy.yaml`` (optionally ``.xz``/``.gz``/``.bz2``) with the unit cell, the
supercell and primitive matrices and the displacements with their forces, or the forces in a
separate ``FORCE_SETS`` (optionally compressed). :func:`load_reference` returns the phonopy object
with its force constants; anything wrong raises :class:`PhononReferenceError` naming the folder.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

YAML_NAMES = ("phonopy.yaml", "phonopy_disp.yaml", "phonon.yaml")
FORCE_SETS_NAMES = ("FORCE_SETS",)
_OPENERS: dict[str, Callable[..., Any]] = {"": open, ".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


class PhononReferenceError(ValueError):
    """A reference folder cannot be used; the message names the folder."""

    def __init__(self, folder, problem: str):
        self.folder = str(folder)
        self.problem = problem
        super().__init__(f"phonon reference {self.folder!r}: {problem}")


@dataclass
class PhononReference:
    """A loaded reference: phonopy with its force constants, the unit cell and how it was computed."""

    material_id: str
    folder: str
    phonopy: Any  # phonopy.Phonopy with force constants
    structure: Structure  # the unit cell the supercell matrix refers to
    supercell_matrix: list
    primitive_matrix: list
    displacement: float
    n_displacements: int

    @property
    def formula(self) -> str:
        """The reduced formula of the unit cell."""
        return self.structure.composition.reduced_formula

    @property
    def n_supercell_atoms(self) -> int:
        """The number of atoms of the supercell."""
        return len(self.phonopy.supercell)


def _find(folder: Path, names) -> Path | None:
    for name in names:
        for ext in _OPENERS:
            p = folder / f"{name}{ext}"
            if p.is_file():
                return p
    return None


def find_references(root, ids=None) -> list[Path]:
    """Reference folders under ``root`` (sorted), optionally only those named in ``ids``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"reference directory {str(root)!r} not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if ids:
        known = {p.name: p for p in folders}
        missing = [i for i in ids if i not in known]
        if missing:
            raise FileNotFoundError(f"no reference folder(s) {missing} in {str(root)!r}")
        folders = [known[i] for i in ids]
    return folders


def _decompressed(path: Path, tmp: Path) -> Path:
    """Phonopy reads plain text: decompress ``path`` into ``tmp`` if needed."""
    ext = path.suffix if path.suffix in (".xz", ".gz", ".bz2") else ""
    if not ext:
        return path
    out = tmp / path.name[: -len(ext)]
    with _OPENERS[ext](path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def _check_forces(folder, dataset, n_atoms: int) -> int:
    if not dataset:
        raise PhononReferenceError(folder, "no displacement dataset (no displacements or forces in the yaml "
                                           "and no FORCE_SETS)")
    if "first_atoms" in dataset:
        disps = dataset["first_atoms"]
        if not disps:
            raise PhononReferenceError(folder, "the displacement dataset is empty")
        for i, d in enumerate(disps):
            if d.get("forces") is None:
                raise PhononReferenceError(folder, f"displacement {i + 1} has no forces (missing force sets)")
            f = np.asarray(d["forces"])
            if f.shape != (n_atoms, 3):
                raise PhononReferenceError(folder, f"displacement {i + 1} has forces on {f.shape[0]} atoms but the "
                                                   f"supercell has {n_atoms} (mismatched atoms)")
        return len(disps)
    forces = dataset.get("forces")
    if forces is None:
        raise PhononReferenceError(folder, "the displacements have no forces (missing force sets)")
    forces = np.asarray(forces)
    if forces.ndim != 3 or forces.shape[1:] != (n_atoms, 3):
        raise PhononReferenceError(folder, f"forces of shape {forces.shape} do not match the {n_atoms}-atom "
                                           "supercell (mismatched atoms)")
    return forces.shape[0]


def _displacement_distance(dataset) -> float:
    if "first_atoms" in dataset:
        return float(np.linalg.norm(dataset["first_atoms"][0]["displacement"]))
    return float(np.linalg.norm(np.asarray(dataset["displacements"])[0], axis=1).max())


def load_reference(folder) -> PhononReference:
    """Read one reference folder and produce its (symmetrised) force constants."""
    import phonopy

    folder = Path(folder)
    if not folder.is_dir():
        raise PhononReferenceError(folder, "not a directory")
    yaml = _find(folder, YAML_NAMES)
    if yaml is None:
        raise PhononReferenceError(folder, f"no {' / '.join(YAML_NAMES)} (optionally .xz/.gz/.bz2) found")
    fsets = _find(folder, FORCE_SETS_NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fs_path = _decompressed(fsets, Path(tmp)) if fsets else None
            ph = phonopy.load(str(yaml), force_sets_filename=str(fs_path) if fs_path else None,
                              produce_fc=False, log_level=0)
        except Exception as exc:  # noqa: BLE001 - phonopy raises many kinds; name the folder
            raise PhononReferenceError(folder, f"cannot read {yaml.name}"
                                       f"{' / ' + fsets.name if fsets else ''}: {type(exc).__name__}: {exc}") from exc
    n_disp = _check_forces(folder, ph.dataset, len(ph.supercell))
    try:
        ph.produce_force_constants(show_drift=False)
        ph.symmetrize_force_constants(show_drift=False)
    except Exception as exc:  # noqa: BLE001
        raise PhononReferenceError(folder, f"force constants failed: {type(exc).__name__}: {exc}") from exc
    u = ph.unitcell
    structure = Structure(u.cell, list(u.symbols), u.scaled_positions)
    structure.properties["label"] = folder.name
    return PhononReference(material_id=folder.name, folder=str(folder), phonopy=ph, structure=structure,
                           supercell_matrix=np.asarray(ph.supercell_matrix).astype(int).tolist(),
                           primitive_matrix=np.asarray(ph.primitive_matrix).tolist(),
                           displacement=_displacement_distance(ph.dataset), n_displacements=n_disp)
