"""Structural de-duplication with pymatgen's StructureMatcher, grouped by reduced formula first."""

from __future__ import annotations

from collections.abc import Sequence

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure


def default_matcher() -> StructureMatcher:
    """Pymatgen's default tolerances (ltol 0.2, stol 0.3, angle_tol 5, volume scaled).

    ``primitive_cell=False`` because :func:`dedupe_ranked` reduces every structure to its primitive
    cell once itself; together a supercell, an origin shift or another setting of the same
    structure all match.
    """
    return StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=False, scale=True,
                            attempt_supercell=False)


def _primitive(s: Structure) -> Structure:
    try:
        return s.get_primitive_structure()
    except Exception:  # noqa: BLE001 - fall back to the cell as given
        return s


def dedupe_ranked(
    structures: Sequence[Structure],
    limit: int | None = None,
    matcher: StructureMatcher | None = None,
) -> tuple[list[int], dict[int, int], int]:
    """De-duplicate structures given **best first**; the first of each group is kept.

    A structure is compared only with kept structures of the same reduced formula. Stops once
    ``limit`` unique structures are kept (the rest are not examined).

    Returns ``(kept, duplicate_of, examined)``: indices kept (in input order), a map from each
    duplicate's index to the kept index it matched, and how many structures were examined.
    """
    matcher = matcher or default_matcher()
    kept: list[int] = []
    prims: dict[int, Structure] = {}
    by_formula: dict[str, list[int]] = {}
    duplicate_of: dict[int, int] = {}
    examined = 0

    def prim(k: int) -> Structure:
        if k not in prims:
            prims[k] = _primitive(structures[k])
        return prims[k]

    for i, s in enumerate(structures):
        if limit is not None and len(kept) >= limit:
            break
        examined += 1
        same = by_formula.setdefault(s.composition.reduced_formula, [])
        match = next((j for j in same if matcher.fit(prim(j), prim(i))), None)
        if match is None:
            same.append(i)
            kept.append(i)
        else:
            duplicate_of[i] = match
    return kept, duplicate_of, examined


def dedupe_structures(structures: Sequence[Structure], matcher: StructureMatcher | None = None) -> list[Structure]:
    """Unique structures in input order (first of each group kept)."""
    kept, _, _ = dedupe_ranked(structures, matcher=matcher)
    return [structures[i] for i in kept]
