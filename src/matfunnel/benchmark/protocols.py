"""Matbench Discovery IS2RE relaxation protocols: named presets and the leaderboard models using each.

A leaderboard entry records its relaxation settings in its model YAML under
``hyperparams.evaluation`` (fields ``ase_optimizer``, ``cell_filter``, ``max_force`` in eV/A and
``max_steps``; schema in ``tests/model-schema.yml`` of github.com/janosh/matbench-discovery). The
table :data:`LEADERBOARD` below holds those four values for every entry that has them, read from
``models/<family>/<model_key>.yml`` at commit :data:`SOURCE_COMMIT` (2026-07-16), e.g.
``models/chgnet/chgnet-0.3.0.yml``, ``models/mace/mace-mp-0.yml``, ``models/orb/orb-v3.yml``,
``models/deepmd/dpa3-v2-mptrj.yml``, ``models/nequip/nequip-oam-xl-0.1.yml``. Entries without
relaxation settings (direct predictors: alchembert, alignn, cgcnn, cgcnn-p, esnet, megnet,
voronoi-rf, wrenformer; and bowsr, gnome, alignn-ff) are not listed.

Presets (:data:`PRESETS`) group the entries by settings. Our relaxer
(:mod:`matfunnel.engine.fire`) is ASE's ``FIRE`` with its default parameters (``dt=0.1,
dtmax=1.0, maxstep=0.2, Nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99`` — what the benchmark's
shared runner uses, ``optimizer_cls(filter, logfile=None)``) on ASE's ``FrechetCellFilter`` with
its defaults (``exp_cell_factor`` = number of atoms, no pressure). Presets with another optimizer
(``GOQN``: ASE ``GoodOldQuasiNewton``) or another cell filter (``ExpCellFilter``) are listed so a
user sees what a model was run with, but selecting one raises :class:`UnsupportedProtocol`.

=====================  =====  ================  ======  =====  ==========================================
preset                 opt.   cell filter       fmax    steps  leaderboard models
=====================  =====  ================  ======  =====  ==========================================
mbd-fire-0.05          FIRE   Frechet           0.05    500    chgnet-0.3.0, mace-mp-0, mace-mpa-0,
                                                               sevennet-0, sevennet-l3i5, matris-*-mp*,
                                                               alphanet-v1-mptrj, hienet
mbd-fire-0.03          FIRE   Frechet           0.03    500    grace-1l-oam, grace-2l-oam(-l),
                                                               alphanet-v1-oam
mbd-fire-0.03-300      FIRE   Frechet           0.03    300    grace-2l-mptrj
mbd-fire-0.02          FIRE   Frechet           0.02    500    orb-v2/v3, eqv2, esen, nequix, pet, ...
mbd-fire-0.02-800      FIRE   Frechet           0.02    800    sevennet-mf-ompa, sevennet-omni-i12
mbd-fire-0.01          FIRE   Frechet           0.01    500    grace-3l-oam-l
mbd-fire-exp-0.05      FIRE   ExpCellFilter     0.05    500    m3gnet, dpa3-*, dpa-3.1-*  (unsupported)
mbd-fire-exp-0.02      FIRE   ExpCellFilter     0.02    500    mattersim-v1-5m             (unsupported)
mbd-goqn-0.05          GOQN   Frechet           0.05    500    nequip-*-l-0.1, allegro-*, tace-v1-oam-m
                                                                                           (unsupported)
mbd-goqn-0.005         GOQN   Frechet           0.005   500    nequip-oam-xl-0.1           (unsupported)
=====================  =====  ================  ======  =====  ==========================================

:func:`get_protocol` takes a preset name or a leaderboard model key (the preset that model used);
:func:`resolve_protocol` applies ``fmax`` / ``max_steps`` overrides and records them.

The submission file formats of the current benchmark code (``matbench_discovery/discovery.py``,
``write_discovery_artifacts``; ``contributing.md``) are :data:`DISCOVERY_COLUMNS` for
``<yyyy-mm-dd>-discovery.csv.gz`` (one row per attempted material, formation energy in eV/atom
rounded to 4 decimals, empty where the relaxation or the MP2020 correction failed) and
:data:`GEO_OPT_COLUMNS` for the JSON-lines ``<yyyy-mm-dd>-geo-opt.jsonl.gz`` (one record per
successful relaxation; ``structure`` a pymatgen ``Structure.as_dict()``), which
``scripts/analyze_geo_opt.py`` reads with ``pandas.read_json(path, lines=True)``. Entries
submitted before July 2026 used model-specific column names (``e_form_per_atom_<model>``,
``<model>_structure``, named in the YAML as ``pred_col`` / ``struct_col``); matfunnel's own
``predictions-<model>.csv.gz`` / ``relaxed-structures-<model>.jsonl.gz`` follow that older style.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = [
    "DEFAULT_PROTOCOL",
    "DISCOVERY_COLUMNS",
    "GEO_OPT_COLUMNS",
    "LEADERBOARD",
    "PRESETS",
    "SOURCE_COMMIT",
    "SUPPORTED_CELL_FILTERS",
    "SUPPORTED_OPTIMIZERS",
    "Protocol",
    "UnknownProtocol",
    "UnsupportedProtocol",
    "format_protocols",
    "get_protocol",
    "models_using",
    "resolve_protocol",
]

#: github.com/janosh/matbench-discovery commit the table was read from
SOURCE_COMMIT = "2c7f9fc42d018711dc2f5df573d225ea6d2d17b2"

#: columns of the published ``<yyyy-mm-dd>-discovery.csv.gz`` (in order)
DISCOVERY_COLUMNS = ("material_id", "e_form_per_atom")
#: keys of each record of the published ``<yyyy-mm-dd>-geo-opt.jsonl.gz`` (in order)
GEO_OPT_COLUMNS = ("material_id", "structure", "energy", "converged", "n_steps")

#: what :mod:`matfunnel.engine.fire` implements
SUPPORTED_OPTIMIZERS = ("FIRE",)
SUPPORTED_CELL_FILTERS = ("FrechetCellFilter",)

#: model_key -> (ase_optimizer, cell_filter, max_force eV/A, max_steps), from ``models/*/<key>.yml``
LEADERBOARD: dict[str, tuple[str, str, float, int]] = {
    # FIRE + FrechetCellFilter, 0.05 eV/A, 500 steps
    "alphanet-v1-mptrj": ("FIRE", "FrechetCellFilter", 0.05, 500),
    "chgnet-0.3.0": ("FIRE", "FrechetCellFilter", 0.05, 500),
    "hienet": ("FIRE", "FrechetCellFilter", 0.05, 500),
    "mace-mp-0": ("FIRE", "FrechetCellFilter", 0.05, 500),
    "mace-mpa-0": ("FIRE", "FrechetCellFilter", 0.05, 500),
    "matris-10m-mp": ("FIRE", "FrechetCellFilter", 0.05, 500),
    "matris-v050-mptrj": ("FIRE", "FrechetCellFilter", 0.05, 500),
    "sevennet-0": ("FIRE", "FrechetCellFilter", 0.05, 500),
    "sevennet-l3i5": ("FIRE", "FrechetCellFilter", 0.05, 500),
    # FIRE + FrechetCellFilter, 0.03 eV/A
    "alphanet-v1-oam": ("FIRE", "FrechetCellFilter", 0.03, 500),
    "grace-1l-oam": ("FIRE", "FrechetCellFilter", 0.03, 500),
    "grace-2l-oam": ("FIRE", "FrechetCellFilter", 0.03, 500),
    "grace-2l-oam-l": ("FIRE", "FrechetCellFilter", 0.03, 500),
    "grace-2l-mptrj": ("FIRE", "FrechetCellFilter", 0.03, 300),
    # FIRE + FrechetCellFilter, 0.02 eV/A
    "dpa-4.0-pro-mptrj": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "dpa-4.0.1-pro-mptrj": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "eqnorm-mptrj": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "equflash-29m-oam": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "equflashv2-45m-oam": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "equiformer-v3-mp": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "equiformer-v3-oam": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "eqv2-m-omat-salex-mp": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "eqv2-s-dens-mp": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "esen-30m-mp": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "esen-30m-oam": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "matris-10m-oam": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "nequix-mp-1": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "nequix-mp-1-pft": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "orb-v2": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "orb-v2-mptrj": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "orb-v3": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "pet-oam-xl-1.0.0": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "tace-oam-l": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "tace-oam-rra-preview": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "tece-oam-rra-1.0": ("FIRE", "FrechetCellFilter", 0.02, 500),
    "sevennet-mf-ompa": ("FIRE", "FrechetCellFilter", 0.02, 800),
    "sevennet-omni-i12": ("FIRE", "FrechetCellFilter", 0.02, 800),
    # FIRE + FrechetCellFilter, 0.01 eV/A
    "grace-3l-oam-l": ("FIRE", "FrechetCellFilter", 0.01, 500),
    # FIRE + ExpCellFilter (not in our engine)
    "dpa-3.1-3m-ft": ("FIRE", "ExpCellFilter", 0.05, 500),
    "dpa-3.1-mptrj": ("FIRE", "ExpCellFilter", 0.05, 500),
    "dpa3-v1-mptrj": ("FIRE", "ExpCellFilter", 0.05, 500),
    "dpa3-v1-openlam": ("FIRE", "ExpCellFilter", 0.05, 500),
    "dpa3-v2-mptrj": ("FIRE", "ExpCellFilter", 0.05, 500),
    "dpa3-v2-openlam": ("FIRE", "ExpCellFilter", 0.05, 500),
    "m3gnet": ("FIRE", "ExpCellFilter", 0.05, 500),
    "mattersim-v1-5m": ("FIRE", "ExpCellFilter", 0.02, 500),
    # GOQN (ASE GoodOldQuasiNewton) + FrechetCellFilter (not in our engine)
    "allegro-mp-l-0.1": ("GOQN", "FrechetCellFilter", 0.05, 500),
    "allegro-oam-l-0.1": ("GOQN", "FrechetCellFilter", 0.05, 500),
    "nequip-mp-l-0.1": ("GOQN", "FrechetCellFilter", 0.05, 500),
    "nequip-oam-l-0.1": ("GOQN", "FrechetCellFilter", 0.05, 500),
    "tace-v1-oam-m": ("GOQN", "FrechetCellFilter", 0.05, 500),
    "nequip-oam-xl-0.1": ("GOQN", "FrechetCellFilter", 0.005, 500),
}


class UnknownProtocol(ValueError):
    """Neither a preset name nor a leaderboard model key."""


class UnsupportedProtocol(ValueError):
    """A preset whose optimizer or cell filter matfunnel's relaxer does not implement."""


@dataclass(frozen=True)
class Protocol:
    """One IS2RE relaxation protocol.

    Attributes
    ----------
    name
        Preset name, e.g. ``"mbd-fire-0.05"``.
    optimizer
        ASE optimizer name as written in the model YAMLs (``"FIRE"``, ``"GOQN"``).
    cell_filter
        ASE cell filter name (``"FrechetCellFilter"``, ``"ExpCellFilter"``).
    fmax
        Force convergence threshold, eV/A (``max_force`` in the YAMLs).
    max_steps
        Optimizer step limit.
    """

    name: str
    optimizer: str
    cell_filter: str
    fmax: float
    max_steps: int

    @property
    def supported(self) -> bool:
        """Whether :mod:`matfunnel.engine` can run this protocol."""
        return self.optimizer in SUPPORTED_OPTIMIZERS and self.cell_filter in SUPPORTED_CELL_FILTERS

    @property
    def settings(self) -> tuple[str, str, float, int]:
        """``(optimizer, cell_filter, fmax, max_steps)``, the key :data:`LEADERBOARD` uses."""
        return (self.optimizer, self.cell_filter, self.fmax, self.max_steps)

    @property
    def models(self) -> list[str]:
        """Leaderboard model keys that were run with exactly these settings."""
        return models_using(self)

    def why_unsupported(self) -> str | None:
        """``None`` when supported, else a sentence naming what is missing."""
        missing = []
        if self.optimizer not in SUPPORTED_OPTIMIZERS:
            missing.append(f"optimizer {self.optimizer!r}")
        if self.cell_filter not in SUPPORTED_CELL_FILTERS:
            missing.append(f"cell filter {self.cell_filter!r}")
        if not missing:
            return None
        return (f"protocol {self.name!r} needs the {' and the '.join(missing)}; matfunnel's relaxer implements "
                f"only {'/'.join(SUPPORTED_OPTIMIZERS)} + {'/'.join(SUPPORTED_CELL_FILTERS)} "
                f"(presets it can run: {', '.join(n for n, p in PRESETS.items() if p.supported)})")


def _preset(name: str, optimizer: str, cell_filter: str, fmax: float, max_steps: int) -> tuple[str, Protocol]:
    return name, Protocol(name, optimizer, cell_filter, fmax, max_steps)


#: the presets, by name (one per distinct set of leaderboard settings)
PRESETS: dict[str, Protocol] = dict([
    _preset("mbd-fire-0.05", "FIRE", "FrechetCellFilter", 0.05, 500),
    _preset("mbd-fire-0.03", "FIRE", "FrechetCellFilter", 0.03, 500),
    _preset("mbd-fire-0.03-300", "FIRE", "FrechetCellFilter", 0.03, 300),
    _preset("mbd-fire-0.02", "FIRE", "FrechetCellFilter", 0.02, 500),
    _preset("mbd-fire-0.02-800", "FIRE", "FrechetCellFilter", 0.02, 800),
    _preset("mbd-fire-0.01", "FIRE", "FrechetCellFilter", 0.01, 500),
    _preset("mbd-fire-exp-0.05", "FIRE", "ExpCellFilter", 0.05, 500),
    _preset("mbd-fire-exp-0.02", "FIRE", "ExpCellFilter", 0.02, 500),
    _preset("mbd-goqn-0.05", "GOQN", "FrechetCellFilter", 0.05, 500),
    _preset("mbd-goqn-0.005", "GOQN", "FrechetCellFilter", 0.005, 500),
])

#: the benchmark's reference protocol (CHGNet, MACE-MP-0, SevenNet-0, ...)
DEFAULT_PROTOCOL = "mbd-fire-0.05"


def models_using(protocol: Protocol) -> list[str]:
    """Leaderboard model keys whose YAML settings equal ``protocol``'s, sorted."""
    return sorted(k for k, v in LEADERBOARD.items() if v == protocol.settings)


def _lookup(name: str) -> Protocol:
    if name in PRESETS:
        return PRESETS[name]
    if name in LEADERBOARD:
        for p in PRESETS.values():
            if p.settings == LEADERBOARD[name]:
                return p
    raise UnknownProtocol(f"unknown protocol {name!r}: use a preset ({', '.join(PRESETS)}) or a Matbench "
                          f"Discovery model key with relaxation settings (e.g. chgnet-0.3.0, orb-v3)")


def get_protocol(name: str, *, allow_unsupported: bool = False) -> Protocol:
    """The preset called ``name``, or the preset a leaderboard model (``name`` = its model key) used.

    Parameters
    ----------
    name
        A key of :data:`PRESETS` or of :data:`LEADERBOARD`.
    allow_unsupported
        Return presets the engine cannot run as well (for listing).

    Returns
    -------
    Protocol
        The preset.

    Raises
    ------
    UnknownProtocol
        ``name`` is neither a preset nor a leaderboard model key.
    UnsupportedProtocol
        The preset needs an optimizer or cell filter our relaxer lacks (unless ``allow_unsupported``).
    """
    protocol = _lookup(name)
    why = protocol.why_unsupported()
    if why and not allow_unsupported:
        via = f" ({name} was run with it)" if name != protocol.name else ""
        raise UnsupportedProtocol(why.replace(f"protocol {protocol.name!r}", f"protocol {protocol.name!r}{via}", 1))
    return protocol


def resolve_protocol(name: str = DEFAULT_PROTOCOL, *, fmax: float | None = None,
                     max_steps: int | None = None) -> dict:
    """Settings of a run: the preset's, with explicit overrides applied and recorded.

    Parameters
    ----------
    name
        Preset name or leaderboard model key (see :func:`get_protocol`).
    fmax, max_steps
        Overrides; ``None`` keeps the preset's value.

    Returns
    -------
    dict
        ``name``, ``optimizer``, ``cell_filter``, ``fmax``, ``max_steps`` (the values used) and
        ``overrides`` (``{field: {"preset": value, "used": value}}`` for each changed field; empty
        when the run follows the preset exactly).

    Raises
    ------
    UnknownProtocol, UnsupportedProtocol
        See :func:`get_protocol`.
    ValueError
        A non-positive ``fmax`` or a negative ``max_steps``.
    """
    p = get_protocol(name)
    used = {"fmax": p.fmax if fmax is None else float(fmax),
            "max_steps": p.max_steps if max_steps is None else int(max_steps)}
    if not used["fmax"] > 0:
        raise ValueError(f"fmax must be positive, got {used['fmax']}")
    if used["max_steps"] < 0:
        raise ValueError(f"max_steps must be >= 0, got {used['max_steps']}")
    overrides = {k: {"preset": getattr(p, k), "used": v} for k, v in used.items() if v != getattr(p, k)}
    return {"name": p.name, "optimizer": p.optimizer, "cell_filter": p.cell_filter, **used,
            "overrides": overrides}


def protocol_table() -> list[dict]:
    """One row per preset: its settings, ``supported`` and the leaderboard ``models`` using it."""
    return [{**asdict(p), "supported": p.supported, "models": p.models} for p in PRESETS.values()]


def format_protocols() -> str:
    """A text table of the presets (``matfunnel benchmark protocols``)."""
    rows = [["preset", "optimizer", "cell filter", "fmax", "steps", "here", "leaderboard models"]]
    for r in protocol_table():
        rows.append([r["name"], r["optimizer"], r["cell_filter"], f"{r['fmax']:g}", str(r["max_steps"]),
                     "yes" if r["supported"] else "no", ", ".join(r["models"])])
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(c.ljust(wi) for c, wi in zip(r[:-1], w, strict=False)), r[-1]]) for r in rows]
    lines.insert(1, "  ".join("-" * wi for wi in w) + "  " + "-" * 18)
    return "\n".join(lines) + (f"\n\nsource: github.com/janosh/matbench-discovery models/*/*.yml at "
                               f"{SOURCE_COMMIT[:10]} (hyperparams.evaluation)")
