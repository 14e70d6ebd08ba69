"""Potentials: ``load_potential(name, device, **kwargs)`` and the backends behind it.

Names resolve through :mod:`matfunnel.potential.registry`: built-in names, plug-ins registered under the
``matfunnel.potentials`` entry-point group, and ``torchsim:MODULE:CALLABLE`` / ``ase:MODULE:CALLABLE``
spec strings for any torch-sim model or ASE calculator. Loading is cached per process (name, device and
keyword arguments), so a worker loads a model once and reuses it for every job it runs.
"""

from __future__ import annotations

import json
from functools import lru_cache

from matfunnel.common.errors import StructureError
from matfunnel.potential.base import Potential
from matfunnel.potential.registry import UnknownPotential, WeightsMissing, resolve

#: the funnel's default potential
DEFAULT_POTENTIAL = "chgnet-0.3.0"


def _kwargs_key(kwargs: dict) -> str | None:
    """A hashable key for keyword arguments made of JSON values (None: not cacheable)."""
    try:
        return json.dumps(kwargs, sort_keys=True)
    except TypeError:
        return None


@lru_cache(maxsize=8)
def _load(name: str, device: str, kwargs_json: str) -> Potential:
    return resolve(name).load(device, **json.loads(kwargs_json))


def load_potential(name: str = DEFAULT_POTENTIAL, device: str = "cpu", **kwargs) -> Potential:
    """Return the potential called ``name`` on ``device``.

    Parameters
    ----------
    name
        A registered name (``matfunnel potentials`` lists them), a plug-in's name, or
        ``torchsim:MODULE:CALLABLE`` / ``ase:MODULE:CALLABLE``.
    device
        ``cpu`` or ``cuda[:N]``.
    **kwargs
        Passed to the model's factory (e.g. ``checkpoint=PATH``, ``modal="PBE"``). Calls whose keyword
        arguments are JSON values are cached per process; others build a new potential.

    Raises
    ------
    UnknownPotential
        The name is not known (the message lists what is).
    WeightsMissing
        The model's weights file is absent (the message names the file and its folder).
    """
    key = _kwargs_key(kwargs)
    if key is None:
        return resolve(name).load(device, **kwargs)
    return _load(name, device, key)


def check_potential_name(name: str) -> None:
    """Raise :class:`UnknownPotential` unless ``name`` resolves (nothing is loaded)."""
    resolve(name)


__all__ = ["DEFAULT_POTENTIAL", "Potential", "StructureError", "UnknownPotential", "WeightsMissing",
           "check_potential_name", "load_potential"]
