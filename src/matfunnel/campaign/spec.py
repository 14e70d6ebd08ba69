"""Campaign specifications (``flows/*.yaml``).

Every section has defaults, so the smallest spec is ``chemsys: Li-Mn-O``. Unknown keys are an
error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from matfunnel.phonons.gate import PhononGateOptions


class SpecError(ValueError):
    """A campaign spec is invalid."""


@dataclass
class CandidateOptions:
    sources: list[str] = field(default_factory=lambda: ["aflow", "user"])
    structures: list[str] = field(default_factory=list)  # files/folders, relative to the spec
    max_candidates: int = 50
    max_sites: int = 8
    charge_neutral: bool = True


@dataclass
class PotentialOptions:
    name: str | None = None  # None: matfunnel's default potential; see 'matfunnel potentials'
    device: str = "cpu"
    kwargs: dict = field(default_factory=dict)  # keyword arguments of the model's factory


@dataclass
class RelaxOptions:
    fmax: float = 0.05
    max_steps: int = 300
    relax_cell: bool = True
    batch_size: int = 32  # structures per relaxation job


@dataclass
class HullOptions:
    references: str = "auto"  # auto (MP API if MP_API_KEY is set, else offline) | mp | offline
    competing_max_sites: int = 4
    cache_dir: str | None = None


@dataclass
class DftOptions:
    engine: str = "gpaw"  # gpaw | vasp | none
    threshold: float = 0.05  # eV/atom: candidates at or below this e_above_hull go to DFT
    max_candidates: int = 5
    max_sites: int | None = None  # skip larger candidates (cost guard)
    preset: str = "quick"
    settings: dict = field(default_factory=dict)


@dataclass
class CampaignSpec:
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
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: str | Path = ".") -> "CampaignSpec":
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
        if spec.dft.engine not in ("gpaw", "vasp", "none"):
            raise SpecError(f"dft.engine must be gpaw, vasp or none, not {spec.dft.engine!r}")
        if spec.hull.references not in ("auto", "mp", "offline"):
            raise SpecError(f"hull.references must be auto, mp or offline, not {spec.hull.references!r}")
        return spec

    def structure_paths(self) -> list[str]:
        base = Path(self.base_dir)
        return [str(p if Path(p).is_absolute() else base / p) for p in self.candidates.structures]


def load_spec(path: str | Path) -> CampaignSpec:
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
