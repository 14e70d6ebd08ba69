"""Candidate filters: charge neutrality and structural validity (reported, never raised)."""

from __future__ import annotations

from collections.abc import Iterable

from pymatgen.core import Species, Structure

from matfunnel.common.errors import StructureError
from matfunnel.potential.validate import MIN_DISTANCE, validate_structure


def oxidation_state(key: str) -> float | None:
    """Oxidation state encoded in a species string ("Mn3+" -> 3.0); None for a bare element."""
    try:
        sp = Species.from_str(key)
    except ValueError:
        return None
    return float(sp.oxi_state) if sp.oxi_state is not None else None


def net_charge(counts: Iterable[tuple[float, str]]) -> float | None:
    """Sum of ``count * oxidation state`` over ``(count, species string)`` pairs.

    None if a species has no oxidation state.
    """
    total = 0.0
    for n, key in counts:
        ox = oxidation_state(key)
        if ox is None:
            return None
        total += n * ox
    return total


def check_candidate(struct: Structure, label: str, min_distance: float = MIN_DISTANCE) -> str | None:
    """None if ``struct`` can go to the potential, else the reason (overlap, empty, disorder, ...)."""
    try:
        validate_structure(struct, label, min_distance=min_distance)
    except StructureError as exc:
        return exc.problem
    return None
