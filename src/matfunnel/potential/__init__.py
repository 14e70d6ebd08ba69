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


def _chgnet_ours(device: str, **kw) -> Potential:
    from matfunnel.potential.chgnet.potential import ChgnetPotential

    return ChgnetPotential(device=device, **kw)


def _matris(model: str) -> Callable[..., Potential]:
    def factory(device: str, **kw) -> Potential:
        from matfunnel.potential.matris.potential import MatrisPotential

        return MatrisPotential(device=device, model=model, **kw)

    return factory


REGISTRY: dict[str, Callable[..., Potential]] = {
    "chgnet-0.3.0": _chgnet_ours,  # matfunnel's own batched CHGNet, official 0.3.0 weights
    "chgnet-reference": _chgnet_reference,  # the chgnet package itself: the parity reference
    # matfunnel's own batched MatRIS; weights from the MatRIS release (checkpoint=PATH)
    "matris-10m-oam": _matris("10m-oam"),
    "matris-10m-mp": _matris("10m-mp"),
    "matris-10m-omat": _matris("10m-omat"),
}


@lru_cache(maxsize=8)
def _load(name: str, device: str) -> Potential:
    return REGISTRY[name](device)


def load_potential(name: str = DEFAULT_POTENTIAL, device: str = "cpu", **kwargs) -> Potential:
    """Return the potential called ``name`` on ``device`` (cached per process).

    Keyword arguments (e.g. ``checkpoint=PATH``) go to the backend's factory; such a call is not cached.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown potential {name!r}; available: {', '.join(sorted(REGISTRY))}")
    if kwargs:
        return REGISTRY[name](device, **kwargs)
    return _load(name, device)


__all__ = ["DEFAULT_POTENTIAL", "REGISTRY", "Potential", "StructureError", "load_potential"]
