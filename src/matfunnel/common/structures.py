"""Structure coercion: the one place where a stage's input becomes a pymatgen ``Structure``.

Jobs receive structures as ``Structure`` objects, as their ``as_dict()`` documents (after a trip through
a job store), or as ASE ``Atoms``. :func:`as_structure` accepts all three and gives one clear error for
anything else.
"""

from __future__ import annotations

from typing import Any

from pymatgen.core import IStructure, Structure

from matfunnel.common.errors import StructureError


def as_structure(obj: Any, label: str | None = None) -> Structure:
    """``obj`` as a pymatgen ``Structure``.

    Parameters
    ----------
    obj
        A ``Structure`` (or ``IStructure``), a ``Structure.as_dict()`` document, or an ASE ``Atoms``.
    label
        The structure's name, for the error message.

    Returns
    -------
    Structure
        ``obj`` itself when it already is one.

    Raises
    ------
    StructureError
        ``obj`` is none of these, or a document that does not decode.
    """
    if isinstance(obj, Structure):
        return obj
    if isinstance(obj, IStructure):
        return Structure.from_sites(obj)
    name = label or "input"
    if isinstance(obj, dict):
        try:
            return Structure.from_dict(obj)
        except Exception as exc:  # noqa: BLE001 - any malformed document: one error naming it
            raise StructureError(name, f"not a pymatgen Structure document ({type(exc).__name__}: {exc})") \
                from exc
    if is_atoms(obj):
        return _from_atoms(obj, name)
    raise StructureError(name, f"expected a pymatgen Structure, its dict or ASE Atoms, got {type(obj).__name__}")


def is_atoms(obj: Any) -> bool:
    """Whether ``obj`` is an ASE ``Atoms`` (subclasses such as pymatgen's ``MSONAtoms`` included)."""
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a dependency
        return False
    return isinstance(obj, Atoms)


def _from_atoms(atoms: Any, name: str) -> Structure:
    """An ASE ``Atoms`` as a ``Structure``: fully periodic, a cell with volume, finite positions."""
    import numpy as np
    from pymatgen.io.ase import AseAtomsAdaptor

    pbc = np.asarray(atoms.pbc, dtype=bool).reshape(-1)
    if not pbc.all():
        axes = ", ".join(ax for ax, p in zip("xyz", pbc, strict=False) if not p)
        raise StructureError(name, f"not periodic in {axes} (pbc={pbc.tolist()}); only fully periodic cells are "
                                   "supported")
    try:
        cell = np.asarray(atoms.get_cell()[:], dtype=float)
        positions = np.asarray(atoms.get_positions(), dtype=float)
    except (TypeError, ValueError) as exc:
        raise StructureError(name, f"unreadable cell or positions ({type(exc).__name__})") from exc
    if cell.shape != (3, 3) or not np.isfinite(cell).all():
        raise StructureError(name, "the cell contains NaN/inf")
    if abs(float(np.linalg.det(cell))) == 0.0:
        raise StructureError(name, "the cell has zero volume (lattice vectors missing or linearly dependent)")
    if not np.isfinite(positions).all():
        raise StructureError(name, "coordinates contain NaN/inf")
    try:
        return AseAtomsAdaptor.get_structure(atoms)
    except Exception as exc:  # noqa: BLE001 - whatever the adaptor rejects: one error naming the input
        raise StructureError(name, f"cannot be read as a structure ({type(exc).__name__}: {exc})") from exc


def as_structure_or_none(obj: Any, label: str | None = None) -> Structure | None:
    """:func:`as_structure`, passing ``None`` through (optional structure fields of stored documents)."""
    return None if obj is None else as_structure(obj, label)
