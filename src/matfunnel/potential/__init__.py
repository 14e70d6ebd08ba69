"""Potentials: ``load_potential(name, device)`` and the backends behind it.

Backends register a factory in :data:`REGISTRY`. Loading is cached per process, so a worker loads a
model once and reuses it for every job it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from matfunnel.potential.base import Potential
from matfunnel.potential.errors import StructureError

#: the funnel's default potential
DEFAULT_POTENTIAL = "chgnet-0.3.0"


def _chgnet_reference(device: str, **kw) -> Potential:
    from matfunnel.potential.reference import ChgnetReference

    return ChgnetReference(device=device, **kw)


REGISTRY: dict[str, Callable[..., Potential]] = {
    "chgnet-reference": _chgnet_reference,
    "chgnet-0.3.0": lambda device, **kw: __import__("matfunnel.potential.chgnet.potential", fromlist=["ChgnetPotential"]).ChgnetPotential(device=device, **kw),  # noqa: E501
}


@lru_cache(maxsize=8)
def _load(name: str, device: str) -> Potential:
    return REGISTRY[name](device)


def load_potential(name: str = DEFAULT_POTENTIAL, device: str = "cpu") -> Potential:
    """Return the potential called ``name`` on ``device`` (cached per process)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown potential {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return _load(name, device)


__all__ = ["DEFAULT_POTENTIAL", "REGISTRY", "Potential", "StructureError", "load_potential"]
