"""The batched optimizers by name: what ``optimizer=`` means in the runner, the makers and the flow specs.

Each optimizer is a pair of pure functions on its own extension of
:class:`~matfunnel.engine.cellfilter.FilterState`, ``init(state, ..., config=...)`` and ``update(state, config)``, and
a frozen config dataclass whose fields are ASE's parameter names. :func:`resolve` turns a name and optional
parameters (a config object or a JSON-able dict, as a spec gives it) into an :class:`Optimizer` and its config.

``fire`` is the Matbench Discovery protocol (ASE's ``FIRE`` + ``FrechetCellFilter``); ``lbfgs`` is ASE's ``LBFGS``
on the same degrees of freedom. :data:`DEFAULT_OPTIMIZER` is the one the funnel uses unless told otherwise; how
it was chosen is measured in ``benchmarks/optimizer_steps.py`` (README, "Relaxation").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from matfunnel.engine.fire import FireConfig, fire_init, fire_update
from matfunnel.engine.lbfgs import LbfgsConfig, lbfgs_init, lbfgs_update


@dataclass(frozen=True)
class Optimizer:
    """A batched optimizer: its name, its state's ``init`` and ``update`` functions and its config type."""

    name: str
    init: Callable[..., Any]
    update: Callable[..., Any]
    config_type: type
    #: the ASE optimizer it reproduces (the reference path and its tests)
    ase_name: str


OPTIMIZERS: dict[str, Optimizer] = {
    "fire": Optimizer("fire", fire_init, fire_update, FireConfig, "FIRE"),
    "lbfgs": Optimizer("lbfgs", lbfgs_init, lbfgs_update, LbfgsConfig, "LBFGS"),
}

#: the funnel's optimizer unless a spec, maker or caller says otherwise
DEFAULT_OPTIMIZER = "fire"


def resolve(name: str | None = None, config: Any = None) -> tuple[Optimizer, Any]:
    """The optimizer called ``name`` (None: :data:`DEFAULT_OPTIMIZER`) and its config.

    Parameters
    ----------
    name : str, optional
        One of :data:`OPTIMIZERS`.
    config : dataclass or mapping, optional
        The optimizer's config object, or a mapping of its parameters (ASE's names); None: its defaults.

    Returns
    -------
    tuple
        The :class:`Optimizer` and its config object.

    Raises
    ------
    ValueError
        An unknown optimizer or parameter, or a config object of another optimizer.
    """
    name = DEFAULT_OPTIMIZER if name is None else str(name).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    opt = OPTIMIZERS[name]
    if config is None:
        return opt, opt.config_type()
    if isinstance(config, opt.config_type):
        return opt, config
    if isinstance(config, Mapping):
        known = {f.name for f in dataclasses.fields(opt.config_type)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown {name} parameter(s) {unknown}; {name} takes {sorted(known)}")
        return opt, opt.config_type(**config)
    raise ValueError(f"the {name} optimizer takes a {opt.config_type.__name__} or a mapping, "
                     f"not a {type(config).__name__}")


__all__ = ["DEFAULT_OPTIMIZER", "OPTIMIZERS", "Optimizer", "resolve"]
