"""Input conversion and validation shared by every potential backend."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from pymatgen.core import Structure

from matfunnel.common.errors import StructureError
from matfunnel.common.geometry import cell_problem, shortest_lattice_vector
from matfunnel.common.structures import as_structure

MIN_DISTANCE = 0.5  # Angstrom: closer atoms are treated as overlapping


def to_structure(obj, label: str | None = None) -> Structure:
    """Convert an ASE ``Atoms``, a pymatgen ``Structure`` or its dict to a ``Structure``.

    Parameters
    ----------
    obj
        The input.
    label
        Its name, for the error message (default: the formula of an ``Atoms``, else the type's name).

    Returns
    -------
    Structure
        ``obj`` itself when it already is one.

    Raises
    ------
    StructureError
        Anything else, an ``Atoms`` that is not periodic in x, y and z, whose cell has zero volume or whose
        positions are not finite, or a document that does not decode.
    """
    if isinstance(obj, Structure):
        return obj
    if label is None:
        label = obj.get_chemical_formula() if hasattr(obj, "get_chemical_formula") else type(obj).__name__
    return as_structure(obj, label)


def structure_label(struct: Structure, index: int | None = None) -> str:
    """A readable name for ``struct``: its ``label`` property, else its reduced formula (``#index`` appended)."""
    label = struct.properties.get("label") if hasattr(struct, "properties") else None
    if label:
        return str(label)
    formula = struct.composition.reduced_formula if len(struct) else "empty"
    return f"{formula}#{index}" if index is not None else formula


def validate_structure(
    struct: Structure,
    label: str,
    supported_elements: Iterable[int] | None = None,
    min_distance: float = MIN_DISTANCE,
    check_distances: bool = True,
) -> None:
    """Raise ``StructureError`` naming ``label`` if the structure cannot be evaluated.

    ``check_distances=False`` leaves the minimum-distance check to the caller (a potential that checks it on
    its own neighbour graph) and only rejects atoms sitting on the same point, which a graph does not see.
    """
    if len(struct) == 0:
        raise StructureError(label, "the structure has no atoms")
    numbers = site_numbers(struct)
    if numbers is None:
        raise StructureError(label, "the structure is disordered (partial occupancies)")
    lat = struct.lattice.matrix
    # finite fractional coordinates and lattice: finite Cartesian ones (no matrix product needed)
    if not np.all(np.isfinite(lat)) or not np.all(np.isfinite(struct.frac_coords)):
        raise StructureError(label, "lattice or coordinates contain NaN/inf")
    # the cell's geometry before anything is built from it: zero volume, an unphysical density (the memory bombs of
    # tiny and skewed cells), an atom closer to its own periodic image than ``min_distance``
    problem = cell_problem(lat, len(struct), min_distance)
    if problem is not None:
        raise StructureError(label, problem)
    if supported_elements is not None:
        if (numbers == 0).any():
            dummies = sorted({str(getattr(site.specie, "symbol", site.specie))
                              for site, z in zip(struct, numbers, strict=True) if z == 0})
            raise StructureError(label, f"element(s) {', '.join(dummies)} not covered by the potential "
                                        "(dummy species, not chemical elements)")
        supported = frozenset(supported_elements)
        if not _covered(supported)[numbers].all():
            bad = sorted({site.specie.symbol for site in struct if getattr(site.specie, "Z", 0) not in supported})
            raise StructureError(label, f"element(s) {', '.join(bad)} not covered by the potential")
    if not check_distances:
        if coincident_atoms(struct):
            raise StructureError(label, f"atoms closer than {min_distance} A (two atoms on the same point)")
        return
    dmin = min_pair_distance(struct)
    if dmin < min_distance:
        raise StructureError(label, f"atoms closer than {min_distance} A (minimum distance {dmin:.3f} A)")


def site_numbers(struct: Structure) -> np.ndarray | None:
    """Atomic number of every site (0 for a dummy species), or None when a site is disordered or partially occupied.

    One pass over the sites (pymatgen's ``species`` and ``atomic_numbers`` are two slower passes).
    """
    out = np.empty(len(struct), dtype=np.int64)
    for k, site in enumerate(struct):
        comp = site.species
        if len(comp) != 1:
            return None
        for sp, occ in comp.items():
            if occ != 1:
                return None
            z = getattr(sp, "Z", 0)
            out[k] = z if isinstance(z, int) and 0 < z < 128 else 0  # a dummy species' "Z" is not an element
    return out


@lru_cache(maxsize=8)
def _covered(supported: frozenset) -> np.ndarray:
    """Lookup table: ``table[z]`` is whether atomic number ``z`` (0-127; 0 = a dummy species) is supported."""
    table = np.zeros(128, dtype=bool)
    table[[z for z in supported if 0 < z < 128]] = True
    return table


def coincident_atoms(struct: Structure, tol: float = 1e-6) -> bool:
    """Whether two atoms sit on the same point (fractional coordinates equal modulo 1 to ``tol``)."""
    if len(struct) < 2:
        return False
    m = int(round(1 / tol))
    key = np.round(np.mod(struct.frac_coords, 1.0) / tol).astype(np.int64) % m
    # one integer per point (m**3 < 2**63 for tol >= 1e-6): a 1-d sort instead of unique rows
    flat = (key[:, 0] * m + key[:, 1]) * m + key[:, 2] if m <= 2_000_000 else key
    return len(np.unique(flat, axis=0)) < len(struct)


def min_pair_distance(struct: Structure) -> float:
    """Smallest distance between two atoms (periodic images included, self-images too)."""
    if len(struct) <= 200:
        dm = struct.distance_matrix.copy()
        np.fill_diagonal(dm, np.inf)
        d = float(dm.min()) if len(struct) > 1 else np.inf
    else:
        _, _, _, dists = struct.get_neighbor_list(r=min(1.0, MIN_DISTANCE * 2))
        dists = dists[dists > 1e-8]
        d = float(dists.min()) if len(dists) else np.inf
    # self-image distance: the shortest lattice vector (of the reduced cell: a skewed cell's given vectors may all
    # be long while an atom sits next to its own image)
    return min(d, shortest_lattice_vector(struct.lattice.matrix))
