"""Campaign specifications (``flows/*.yaml``), parsed once into typed sections.

Every section has defaults, so the smallest spec is ``chemsys: Li-Mn-O``. The defaults are the stage
makers' own (each is defined once, on its maker). Unknown keys are an error (a typo must not silently fall
back to a default). :meth:`matfunnel.campaign.funnel.FunnelMaker.from_spec` turns a spec into the funnel.

A spec is checked whole before any work: the file is read as bounded, plain YAML
(:mod:`matfunnel.common.yaml_safe`), and every key against :mod:`matfunnel.campaign.schema` (types, ranges,
enumerations, paths confined to the spec's folder). A :class:`SpecError` lists every problem at once, each
naming its key path.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from matfunnel.campaign.schema import check_spec
from matfunnel.candidates.maker import CandidatesMaker, ReferencesMaker
from matfunnel.common.validation import a_kind
from matfunnel.common.yaml_safe import YamlInputError, load_yaml_file
from matfunnel.dft.gate import DftGateMaker
from matfunnel.hull.maker import HullMaker
from matfunnel.makers.relax import BatchedRelaxMaker, RelaxMaker
from matfunnel.phonons.gate import PhononGateOptions

#: at most this many problems are listed in one error
MAX_PROBLEMS = 25


class SpecError(ValueError):
    """A campaign spec is invalid; the message names the file or key path and every problem."""


@dataclass
class CandidateOptions:
    """``candidates``: see :class:`~matfunnel.candidates.maker.CandidatesMaker`."""

    sources: list[str] = field(default_factory=lambda: list(CandidatesMaker().sources))
    structures: list[str] = field(default_factory=list)  # files/folders, relative to the spec
    max_candidates: int = CandidatesMaker.max_candidates
    max_sites: int = CandidatesMaker.max_sites
    charge_neutral: bool = CandidatesMaker.charge_neutral


@dataclass
class PotentialOptions:
    """``potential``: the model of every MLIP stage (``matfunnel potentials`` lists the names)."""

    name: str | None = None  # None: matfunnel's default potential; see 'matfunnel potentials'
    device: str = "cpu"
    kwargs: dict = field(default_factory=dict)  # keyword arguments of the model's factory


@dataclass
class RelaxOptions:
    """``relax``: see :class:`~matfunnel.makers.relax.RelaxMaker` (``batch_size``: structures per job)."""

    fmax: float = RelaxMaker.fmax
    max_steps: int = RelaxMaker.max_steps
    relax_cell: bool = RelaxMaker.relax_cell
    optimizer: str | None = RelaxMaker.optimizer  # fire | lbfgs (None: the engine's default, FIRE)
    optimizer_config: dict = field(default_factory=dict)  # the optimizer's parameters (ASE's names)
    committee_relax: str = RelaxMaker.committee_relax  # a committee: primary (one member relaxes) | all (every one)
    batch_size: int = BatchedRelaxMaker.batch_size


@dataclass
class HullOptions:
    """``hull``: the hull's references and the hull stage.

    See :class:`~matfunnel.candidates.maker.ReferencesMaker` and :class:`~matfunnel.hull.maker.HullMaker`.
    """

    references: str = ReferencesMaker.references  # auto (MP API if MP_API_KEY is set, else offline) | mp | offline
    competing_max_sites: int = ReferencesMaker.competing_max_sites
    cache_dir: str | None = HullMaker.cache_dir


@dataclass
class DftOptions:
    """``dft``: see :class:`~matfunnel.dft.gate.DftGateMaker`."""

    engine: str = DftGateMaker.engine  # gpaw | vasp | none
    threshold: float = DftGateMaker.threshold  # eV/atom: candidates at or below this e_above_hull go to DFT
    max_candidates: int = DftGateMaker.max_candidates
    max_sites: int | None = DftGateMaker.max_sites  # skip larger candidates (cost guard)
    preset: str = DftGateMaker.preset
    settings: dict = field(default_factory=dict)
    rule: str = DftGateMaker.rule  # auto | plain | mean | mean_k_sigma | probability | budget (see DftGateMaker)
    k: float = DftGateMaker.k  # mean_k_sigma: mean - k*sigma <= threshold
    min_probability: float = DftGateMaker.min_probability  # probability: P(e_hull <= threshold) >= this


@dataclass
class LoopOptions:
    """``loop``: see :class:`~matfunnel.campaign.loop.LoopMaker` (``fine_tune``: TrainConfig keys)."""

    rounds: int = 0
    budget: int | None = None
    fine_tune: dict = field(default_factory=dict)


@dataclass
class CampaignSpec:
    """A campaign: the chemical system and one typed section per stage."""

    chemsys: str
    name: str = "campaign"
    candidates: CandidateOptions = field(default_factory=CandidateOptions)
    potential: PotentialOptions = field(default_factory=PotentialOptions)
    relax: RelaxOptions = field(default_factory=RelaxOptions)
    hull: HullOptions = field(default_factory=HullOptions)
    phonons: PhononGateOptions = field(default_factory=PhononGateOptions)  # optional gate before DFT
    dft: DftOptions = field(default_factory=DftOptions)
    loop: LoopOptions = field(default_factory=LoopOptions)  # optional: fine-tune on DFT, re-screen
    base_dir: str = "."  # folder of the spec file: relative paths resolve against it

    def as_dict(self) -> dict:
        """The spec as plain data (``spec.json`` of a run)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: str | Path = ".") -> CampaignSpec:
        """Parse and check a spec mapping before any work.

        Parameters
        ----------
        d
            The spec (a ``base_dir`` key, as in ``spec.json``, takes the place of ``base_dir``).
        base_dir
            The folder relative paths resolve against; they must stay inside it.

        Returns
        -------
        CampaignSpec
            The spec, with the makers' defaults for every key ``d`` leaves out.

        Raises
        ------
        SpecError
            Listing every problem of ``d`` at once, each naming its key path (``relax.fmax``).
        """
        return _parse(d, base_dir, "campaign spec")

    def structure_paths(self) -> list[str]:
        """The user's structure paths, resolved against the spec's folder."""
        base = Path(self.base_dir)
        return [str(p if Path(p).is_absolute() else base / p) for p in self.candidates.structures]

    def cache_dir_path(self) -> str | None:
        """``hull.cache_dir`` resolved against the spec's folder (None: the hull's default cache)."""
        if self.hull.cache_dir is None:
            return None
        return str(Path(self.base_dir) / self.hull.cache_dir)


def load_spec(path: str | Path) -> CampaignSpec:
    """Read a YAML campaign spec safely and check it before any work.

    Parameters
    ----------
    path
        The spec file (at most 1 MB of plain YAML: no anchors, aliases, tags or duplicate keys).

    Returns
    -------
    CampaignSpec
        The spec; relative paths in it resolve against (and must stay inside) the file's folder.

    Raises
    ------
    SpecError
        Naming the file and every problem (missing, unreadable, unsafe YAML, invalid values).
    """
    origin = f"campaign spec {str(path)!r}"
    try:
        data = load_yaml_file(path, what="campaign spec")
    except YamlInputError as exc:
        raise SpecError(str(exc)) from None
    return _parse({} if data is None else data, Path(path).parent.resolve(), origin, from_file=True)


def _defaults(cls: Any) -> dict[str, Any]:
    """The dataclass ``cls``' field defaults (the makers' own)."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def _with_defaults(d: dict[str, Any], base_dir: str | Path) -> dict[str, Any]:
    """``d`` with the defaults filled into every section that is a mapping or empty."""
    data: dict[str, Any] = {**_defaults(CampaignSpec), "base_dir": str(base_dir), **d}
    for key, section in SECTIONS.items():
        value = d.get(key)
        if value is None:
            data[key] = _defaults(section)
        elif isinstance(value, dict):
            data[key] = {**_defaults(section), **value}
    return data


def _parse(d: Any, base_dir: str | Path, origin: str, from_file: bool = False) -> CampaignSpec:
    if not isinstance(d, dict):
        raise SpecError(f"{origin} must be a mapping (key: value lines), not {a_kind(d)}")
    problems: list[str] = []
    if from_file and "base_dir" in d:
        problems.append("base_dir: is not a spec key (relative paths resolve against the spec file's folder)")
        d = {k: v for k, v in d.items() if k != "base_dir"}
    data = _with_defaults(d, base_dir)
    checked, found = check_spec(data, data["base_dir"])
    problems += found
    if problems or checked is None:
        shown = problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more"]
                                           if len(problems) > MAX_PROBLEMS else [])
        if len(shown) == 1:
            raise SpecError(f"{origin}: {shown[0]}")
        raise SpecError(f"{origin}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in shown))
    values = checked.model_dump()
    sections = {key: cls(**values.pop(key)) for key, cls in SECTIONS.items()}
    return CampaignSpec(**values, **sections)


SECTIONS: dict[str, type] = {"candidates": CandidateOptions, "potential": PotentialOptions, "relax": RelaxOptions,
                             "hull": HullOptions, "phonons": PhononGateOptions, "dft": DftOptions,
                             "loop": LoopOptions}
