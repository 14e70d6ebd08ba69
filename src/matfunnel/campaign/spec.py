"""Campaign specifications (``flows/*.yaml``), parsed once into typed sections.

Every section has defaults, so the smallest spec is ``chemsys: Li-Mn-O``. The defaults are the stage
makers' own (each is defined once, on its maker). Unknown keys are an error (a typo must not silently fall
back to a default). :meth:`matfunnel.campaign.funnel.FunnelMaker.from_spec` turns a spec into the funnel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from matfunnel.candidates.maker import REFERENCE_MODES, CandidatesMaker, ReferencesMaker
from matfunnel.dft.gate import ENGINES, DftGateMaker
from matfunnel.hull.maker import HullMaker
from matfunnel.makers.relax import BatchedRelaxMaker, RelaxMaker
from matfunnel.phonons.gate import PhononGateOptions


class SpecError(ValueError):
    """A campaign spec is invalid."""


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
    base_dir: str = "."  # folder of the spec file: relative paths resolve against it

    def as_dict(self) -> dict:
        """The spec as plain data (``spec.json`` of a run)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: str | Path = ".") -> CampaignSpec:
        """Parse and check a spec mapping (``SpecError`` naming the key or section at fault)."""
        d = dict(d)
        sections = {"candidates": CandidateOptions, "potential": PotentialOptions, "relax": RelaxOptions,
                    "hull": HullOptions, "phonons": PhononGateOptions, "dft": DftOptions}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"unknown key(s) {sorted(unknown)} in campaign spec; known: {sorted(known)}")
        if "chemsys" not in d:
            raise SpecError("campaign spec needs 'chemsys' (e.g. 'Li-Mn-O')")
        kw: dict[str, Any] = {"base_dir": str(d.pop("base_dir", base_dir))}
        for key, value in d.items():
            if key in sections:
                value = value or {}
                if not isinstance(value, dict):
                    raise SpecError(f"section {key!r} must be a mapping")
                sec_fields = {f.name for f in fields(sections[key])}
                bad = set(value) - sec_fields
                if bad:
                    raise SpecError(f"unknown key(s) {sorted(bad)} in section {key!r}; known: {sorted(sec_fields)}")
                kw[key] = sections[key](**value)
            else:
                kw[key] = value
        spec = cls(**kw)
        if spec.dft.engine not in ENGINES:
            raise SpecError(f"dft.engine must be one of {', '.join(ENGINES)}, not {spec.dft.engine!r}")
        if spec.hull.references not in REFERENCE_MODES:
            raise SpecError(f"hull.references must be one of {', '.join(REFERENCE_MODES)}, "
                            f"not {spec.hull.references!r}")
        return spec

    def structure_paths(self) -> list[str]:
        """The user's structure paths, resolved against the spec's folder."""
        base = Path(self.base_dir)
        return [str(p if Path(p).is_absolute() else base / p) for p in self.candidates.structures]


def load_spec(path: str | Path) -> CampaignSpec:
    """Read a YAML campaign spec (``SpecError`` naming the file when it is missing or invalid)."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"campaign spec {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"campaign spec {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"campaign spec {str(path)!r} must be a mapping")
    return CampaignSpec.from_dict(data, base_dir=path.parent.resolve())
