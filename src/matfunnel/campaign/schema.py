"""The campaign spec's schema: the type, range or enumeration of every key, checked before any work.

:func:`check_spec` validates a spec mapping whose sections already hold the makers' defaults (the defaults
live on the makers, once; :mod:`matfunnel.campaign.spec` fills them in) and returns every problem at once,
one ``key.path: problem`` line each. Types are strict: ``"false"`` is not a boolean, ``"300"`` not an
integer, ``true`` not a number; an integer is accepted where a number is due. The ranges:

- ``chemsys``: 1 to :data:`MAX_ELEMENTS` distinct element symbols joined by ``-`` (``Li-Mn-O``);
- ``name``: names the run folder: 1 to 64 of ``A-Z a-z 0-9 . _ -``, not starting with ``.``;
- ``candidates``: ``sources`` a non-empty list of distinct :data:`~matfunnel.candidates.generate.SOURCES`;
  ``structures`` a list of paths relative to the spec's folder that stay inside it (no absolute path, no
  ``..``, no symlink out), and only with ``user`` among the sources; ``max_candidates`` 1-100000;
  ``max_sites`` 1-500; ``charge_neutral`` a boolean (an empty ``structures``, ``kwargs`` or ``settings``
  is the empty list or mapping);
- ``potential``: ``name`` text or null; ``device`` ``cpu``, ``cuda`` or ``cuda:N`` (whether it exists is
  checked when the run starts); ``kwargs`` a mapping whose keys are keyword-argument names;
- ``relax``: ``fmax`` in (0, 10] eV/Å (above 10 every structure "converges" at once); ``max_steps``
  1-1000000; ``batch_size`` 1-100000; ``relax_cell`` a boolean; ``optimizer`` one of the engine's optimizers
  (``fire``, ``lbfgs``) with ``optimizer_config`` its parameters; ``committee_relax`` ``primary`` or ``all`` (``all``
  needs a committee potential);
- ``hull``: ``references`` one of :data:`~matfunnel.candidates.maker.REFERENCE_MODES`;
  ``competing_max_sites`` 1-64; ``cache_dir`` null or a confined relative path, as ``structures``;
- ``phonons``: :class:`~matfunnel.phonons.gate.PhononGateSchema`;
- ``dft``: ``engine`` one of :data:`~matfunnel.dft.gate.ENGINES`; ``threshold`` in [-1, 5] eV/atom (a
  negative one sends only candidates below the hull; under -1 eV/atom it is a mistake); ``max_candidates``
  0-10000; ``max_sites`` null or 1-10000; ``preset`` and ``settings``:
  :func:`~matfunnel.dft.settings.check_gpaw_options`; ``rule`` one of :data:`~matfunnel.dft.gate.RULES`
  (a rule other than ``auto`` or ``plain`` needs a committee potential, ``potential.name: committee:A,B``); ``k`` in
  [0, 10]; ``min_probability`` in (0, 1).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, model_validator
from pymatgen.core.periodic_table import Element

from matfunnel.candidates.generate import SOURCES
from matfunnel.candidates.maker import REFERENCE_MODES
from matfunnel.common.validation import StrictOptions, ValidationError, describe, one_of
from matfunnel.dft.gate import ENGINES, RULES
from matfunnel.dft.settings import check_gpaw_options
from matfunnel.engine.optimizers import OPTIMIZERS
from matfunnel.engine.optimizers import resolve as resolve_optimizer
from matfunnel.makers.relax import COMMITTEE_RELAX, is_committee
from matfunnel.phonons.gate import PhononGateSchema

#: the most elements a chemical system may have
MAX_ELEMENTS = 8
#: the longest campaign name (it names the run folder)
MAX_NAME = 64
_SYMBOL = re.compile(r"[A-Z][a-z]?")
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,2})?")
_NOT_ELEMENTS = frozenset({"D", "T"})  # isotopes pymatgen knows as symbols


def check_chemsys(value: str) -> str:
    """``value`` if it is 1 to :data:`MAX_ELEMENTS` distinct element symbols joined by ``-``."""
    if len(value) > 4 * MAX_ELEMENTS or not re.fullmatch(r"[A-Za-z]+(-[A-Za-z]+)*", value):
        raise ValueError("must be element symbols joined by '-', e.g. 'Li-Mn-O'")
    symbols = value.split("-")
    bad = [s for s in symbols if not _SYMBOL.fullmatch(s) or s in _NOT_ELEMENTS or not Element.is_valid_symbol(s)]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))}: not an element symbol (unknown element)")
    twice = sorted({s for s in symbols if symbols.count(s) > 1})
    if twice:
        raise ValueError(f"names {', '.join(twice)} twice")
    if len(symbols) > MAX_ELEMENTS:
        raise ValueError(f"has {len(symbols)} elements; at most {MAX_ELEMENTS}")
    return value


def check_name(value: str) -> str:
    """``value`` if it is a safe single path component (it names the run folder)."""
    problem = ("is empty" if not value else f"is too long ({len(value)} characters)" if len(value) > MAX_NAME
               else "starts with '.'" if value.startswith(".")
               else "has a character that is not allowed" if not _NAME.fullmatch(value) else None)
    if problem:
        raise ValueError(f"{problem}; a campaign name names the run folder: 1 to {MAX_NAME} letters, digits, "
                         "'.', '_' or '-', not starting with '.'")
    return value


def check_confined(value: str, base_dir: str | Path) -> str:
    """``value`` if it is a relative path that stays inside ``base_dir`` (symlinks followed)."""
    if not value.strip() or "\x00" in value or len(value) > 4096:
        raise ValueError("is not a usable path (empty, too long or with a NUL character)")
    path = Path(value)
    if path.is_absolute():
        raise ValueError("is an absolute path; give a path relative to the spec's folder (and inside it)")
    if ".." in path.parts:
        raise ValueError("reaches outside the spec's folder ('..'); paths must stay inside it")
    try:
        root = Path(base_dir).resolve()
        real = (root / path).resolve()
    except (OSError, RuntimeError):
        raise ValueError("cannot be resolved (a symlink loop?)") from None
    if not real.is_relative_to(root):
        raise ValueError("leads outside the spec's folder through a symlink; paths must stay inside it")
    return value


def _confined(value: str, info: ValidationInfo) -> str:
    return check_confined(value, (info.context or {}).get("base_dir", "."))


def _device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")
    return value


def _distinct(values: list[str]) -> list[str]:
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"lists {', '.join(twice)} twice")
    return values


def _kwarg_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    bad = [k for k in kwargs if not k.isidentifier()]
    if bad:
        raise ValueError(f"{len(bad)} key(s) are not keyword-argument names (e.g. {bad[0][:40]!r})")
    return kwargs


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("has a control character")
    return value


def _none_is_empty(empty: type) -> BeforeValidator:
    """An empty YAML value (``structures:`` with every entry commented out) is the empty list or mapping."""
    return BeforeValidator(lambda value: empty() if value is None else value)


ConfinedPath = Annotated[str, AfterValidator(_confined)]


class CandidatesSchema(StrictOptions):
    """``candidates`` (see the module doc for the ranges)."""

    sources: Annotated[list[Annotated[str, AfterValidator(one_of(SOURCES))]], Field(min_length=1),
                       AfterValidator(_distinct)]
    structures: Annotated[list[ConfinedPath], Field(max_length=10_000), _none_is_empty(list)]
    max_candidates: Annotated[int, Field(ge=1, le=100_000)]
    max_sites: Annotated[int, Field(ge=1, le=500)]
    charge_neutral: bool

    @model_validator(mode="after")
    def _structures_need_user(self) -> CandidatesSchema:
        if self.structures and "user" not in self.sources:
            raise ValueError("candidates.structures are given but 'user' is not in candidates.sources: "
                             "the files would be ignored (add 'user' to the sources)")
        return self


class PotentialSchema(StrictOptions):
    """``potential`` (see the module doc for the ranges)."""

    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)] | None
    device: Annotated[str, AfterValidator(_device)]
    kwargs: Annotated[dict[str, Any], AfterValidator(_kwarg_names), _none_is_empty(dict)]


class RelaxSchema(StrictOptions):
    """``relax`` (see the module doc for the ranges)."""

    fmax: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]
    max_steps: Annotated[int, Field(ge=1, le=1_000_000)]
    relax_cell: bool
    optimizer: Annotated[str, AfterValidator(one_of(tuple(OPTIMIZERS)))] | None
    optimizer_config: dict[str, Any]
    committee_relax: Annotated[str, AfterValidator(one_of(COMMITTEE_RELAX))]
    batch_size: Annotated[int, Field(ge=1, le=100_000)]

    @model_validator(mode="after")
    def _optimizer_parameters(self):
        """The optimizer's parameters are its own (ASE's names) and in range."""
        if self.optimizer_config:
            try:
                resolve_optimizer(self.optimizer, self.optimizer_config)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"optimizer_config: {exc}") from None
        return self


class HullSchema(StrictOptions):
    """``hull`` (see the module doc for the ranges)."""

    references: Annotated[str, AfterValidator(one_of(REFERENCE_MODES))]
    competing_max_sites: Annotated[int, Field(ge=1, le=64)]
    cache_dir: ConfinedPath | None


class DftSchema(StrictOptions):
    """``dft`` (see the module doc; ``preset`` and ``settings`` are checked by ``check_gpaw_options``)."""

    engine: Annotated[str, AfterValidator(one_of(ENGINES))]
    threshold: Annotated[float, Field(ge=-1, le=5, allow_inf_nan=False)]
    max_candidates: Annotated[int, Field(ge=0, le=10_000)]
    max_sites: Annotated[int, Field(ge=1, le=10_000)] | None
    preset: Any
    settings: Any
    rule: Annotated[str, AfterValidator(one_of(RULES))]
    k: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]
    min_probability: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class LoopSchema(StrictOptions):
    """``loop``: rounds of fine-tuning on the DFT results and re-screening (``fine_tune`` checked below)."""

    rounds: Annotated[int, Field(ge=0, le=20)]
    budget: Annotated[int, Field(ge=0, le=10_000)] | None
    fine_tune: Annotated[dict[str, Any], _none_is_empty(dict)]


class CampaignSchema(StrictOptions):
    """A whole campaign spec (see the module doc for the ranges)."""

    chemsys: Annotated[str, Field(examples=["Li-Mn-O"]), AfterValidator(check_chemsys)]
    name: Annotated[str, AfterValidator(check_name)]
    candidates: CandidatesSchema
    potential: PotentialSchema
    relax: RelaxSchema
    hull: HullSchema
    phonons: PhononGateSchema
    dft: DftSchema
    loop: LoopSchema
    base_dir: str



def check_spec(data: dict[str, Any], base_dir: str | Path) -> tuple[CampaignSchema | None, list[str]]:
    """Validate a spec mapping whose sections hold the makers' defaults for the keys the user left out.

    Parameters
    ----------
    data
        The spec: top-level keys and one mapping per section (a non-mapping section is a problem).
    base_dir
        The spec's folder: relative paths must stay inside it.

    Returns
    -------
    tuple[CampaignSchema | None, list[str]]
        The checked spec (None when there are problems; ``dft.settings`` holds the checked GPAW overrides)
        and every problem, one ``key.path: problem`` line each.
    """
    problems: list[str] = []
    dft = data.get("dft")
    settings: dict[str, Any] = {}
    if isinstance(dft, dict):
        overrides = {} if dft.get("settings") is None else dft.get("settings")
        settings, problems = check_gpaw_options(dft.get("preset"), overrides, prefix="dft.")
    try:
        checked = CampaignSchema.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        return None, describe(exc, CampaignSchema, top="campaign spec") + problems
    if checked.dft.rule not in ("auto", "plain") and not is_committee(checked.potential.name or ""):
        problems.append(f"dft.rule: {checked.dft.rule} needs a committee potential (potential: committee:A,B), "
                        f"not {checked.potential.name or 'the default potential'!r}")
    if checked.relax.committee_relax != "primary" and not is_committee(checked.potential.name or ""):
        problems.append(f"relax.committee_relax: {checked.relax.committee_relax} needs a committee potential "
                        f"(potential: committee:A,B), not {checked.potential.name or 'the default potential'!r}")
    if checked.loop.rounds > 0:
        problems += check_loop(checked)
    if problems:
        return None, problems
    checked.dft.settings = settings
    return checked, []


def check_loop(checked: CampaignSchema) -> list[str]:
    """Problems of a spec's ``loop`` (its base potential, DFT, and ``fine_tune``: TrainConfig keys)."""
    import dataclasses

    from matfunnel.campaign.loop import LOOP_TRAIN_DEFAULTS
    from matfunnel.train.config import TrainConfig
    from matfunnel.train.trainer import BASES

    if (checked.potential.name or BASES[0]) not in BASES:
        return [f"loop: fine-tuning starts from {', '.join(BASES)}, not {checked.potential.name!r}"]
    if checked.dft.engine != "gpaw":
        return [f"loop: fine-tunes on the GPAW results of the campaign (dft.engine is {checked.dft.engine}); "
                f"VASP task documents in a store are read by 'matfunnel train' (data.train: the run folder)"]
    settings, engine = checked.loop.fine_tune, checked.dft.engine
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        return [f"loop.fine_tune: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"]
    try:
        config = TrainConfig(**{**LOOP_TRAIN_DEFAULTS, **settings})
    except (TypeError, ValueError) as exc:
        return [f"loop.fine_tune: {exc}"]
    if engine == "gpaw" and config.energy != "forces_only":
        return [f"loop.fine_tune.energy: GPAW energies are not on the Materials Project scale of the hull's "
                f"references; a loop with GPAW trains on forces and stresses only (energy: forces_only, "
                f"not {config.energy})"]
    return []
