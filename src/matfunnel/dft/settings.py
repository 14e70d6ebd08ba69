"""Settings for the GPAW DFT-fallback stage.

`GpawSettings` is a small, JSON-friendly dataclass.  Two presets exist:

* ``"quick"``: for tests and the quickstart.  300 eV plane-wave cut-off, a coarse
  Gamma-centred k-mesh (2 k-points per Å^-1), 0.1 eV Fermi-Dirac smearing.  A 1-2 atom
  cell finishes in a few seconds on one core.  Energies are *not* converged to
  meV/atom; use them for smoke tests and for trends only.
* ``"standard"``: 500 eV, 4 k-points per Å^-1, 0.05 eV Fermi-Dirac smearing.  Formation
  energies converged to roughly 10 meV/atom for ordinary s-p and d metals/compounds.

Energies from different settings must never be mixed on one hull; `energy_fingerprint`
gives the subset of settings that changes total energies, and the hull code checks it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from matfunnel.common.validation import StrictOptions, ValidationError, a_kind, describe, one_of, show

SMEARING_METHODS = ("fermi-dirac", "marzari-vanderbilt", "methfessel-paxton")

# Elements that switch spin polarisation on under spin="auto": the transition metals and
# f elements that carry moments in MP's settings (MPRelaxSet MAGMOM > default) plus the
# rest of the open 3d shell and the lanthanides/actinides with open f shells.
MAGNETIC_ELEMENTS = frozenset(
    ["Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Mo", "W", "Ru", "Rh", "Os", "Ir", "Ce", "Pr", "Nd", "Pm", "Sm",
     "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "U", "Np", "Pu"]
)

# Pure-element phases of these are spin-polarised under spin="auto" (O2 is a triplet).
SPIN_POLARISED_ELEMENTAL = frozenset({"O"})

# MP-like (MPRelaxSet) initial moments in mu_B; everything else starts at DEFAULT_MAGMOM.
_MP_MAGMOM_FALLBACK = {
    "Ce": 5.0, "Co": 0.6, "Cr": 5.0, "Eu": 10.0, "Fe": 5.0, "Mn": 5.0, "Mo": 5.0,
    "Ni": 5.0, "V": 5.0, "W": 5.0,
}
DEFAULT_MAGMOM = 0.6


def mp_initial_magmoms() -> dict[str, float]:
    """Element -> initial moment, taken from pymatgen's MPRelaxSet where available."""
    try:
        from pymatgen.io.vasp.sets import MPRelaxSet

        raw = MPRelaxSet.CONFIG["INCAR"]["MAGMOM"]
        # keep the plain-element keys ("Fe"), drop oxidation-state keys ("Fe3+")
        out = {k: float(v) for k, v in raw.items() if k.isalpha()}
        return out or dict(_MP_MAGMOM_FALLBACK)
    except Exception:  # pragma: no cover - pymatgen layout changes
        return dict(_MP_MAGMOM_FALLBACK)


#: the named presets (see the module doc): overrides of :class:`GpawSettings`' defaults
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(ecut=300.0, kpt_density=2.0, smearing_width=0.1, maxiter=100, energy_tol=1e-3),
    "standard": dict(ecut=500.0, kpt_density=4.0, smearing_width=0.05, maxiter=200, energy_tol=5e-4),
}


@dataclass
class GpawSettings:
    """Plane-wave PAW settings for `run_gpaw`.

    Parameters
    ----------
    ecut: plane-wave cut-off, eV.
    xc: exchange-correlation functional (PBE for anything that goes on a hull).
    kpt_density: Gamma-centred mesh with at least this many k-points per Å^-1 of
        reciprocal lattice vector length (ASE/GPAW convention, |b_i| including 2*pi).
        Used when neither ``kpts`` nor ``kppa`` is set.
    kppa: alternative rule, k-points per reciprocal atom (pymatgen
        ``Kpoints.automatic_density``, Gamma-centred).  Takes precedence over
        ``kpt_density``.
    kpts: explicit mesh (n1, n2, n3); takes precedence over both rules.
    smearing: "fermi-dirac", "marzari-vanderbilt" or "methfessel-paxton".
    smearing_width: eV.
    spin: "auto" (spin-polarised, with MP-like initial moments, if the structure holds a
        magnetic element, is elemental oxygen (O2 triplet) or carries site magmoms),
        "on" or "off".
    maxiter: maximum SCF iterations; not converging is reported as an error.
    energy_tol: SCF energy convergence, eV per valence electron (GPAW's criterion).
    relax: None (static, default), "positions" (ions only) or "cell" (ions + cell, via
        ASE's FrechetCellFilter).
    optimizer: "BFGS" or "FIRE".
    fmax: force convergence for relaxations, eV/Å.
    steps: maximum optimiser steps.
    setups: GPAW setups specification ("paw" = the standard PAW datasets).
    """

    ecut: float = 500.0
    xc: str = "PBE"
    kpt_density: float = 4.0
    kppa: int | None = None
    kpts: tuple[int, int, int] | None = None
    smearing: str = "fermi-dirac"
    smearing_width: float = 0.05
    spin: Literal["auto", "on", "off"] = "auto"
    maxiter: int = 200
    energy_tol: float = 5e-4
    relax: Literal["positions", "cell"] | None = None
    optimizer: Literal["BFGS", "FIRE"] = "BFGS"
    fmax: float = 0.05
    steps: int = 100
    setups: str = "paw"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ecut <= 0:
            raise ValueError(f"ecut must be positive, got {self.ecut}")
        if self.smearing not in SMEARING_METHODS:
            raise ValueError(f"smearing must be one of {SMEARING_METHODS}, got {self.smearing!r}")
        if self.smearing_width < 0:
            raise ValueError("smearing_width must be >= 0")
        if self.spin not in ("auto", "on", "off"):
            raise ValueError(f"spin must be 'auto', 'on' or 'off', got {self.spin!r}")
        if self.relax not in (None, "positions", "cell"):
            raise ValueError(f"relax must be None, 'positions' or 'cell', got {self.relax!r}")
        if self.optimizer not in ("BFGS", "FIRE"):
            raise ValueError(f"optimizer must be 'BFGS' or 'FIRE', got {self.optimizer!r}")
        if self.kpts is not None:
            kpts = tuple(int(k) for k in self.kpts)
            if len(kpts) != 3 or min(kpts) < 1:
                raise ValueError(f"kpts must be three positive integers, got {kpts}")
            self.kpts = (kpts[0], kpts[1], kpts[2])
        if self.kpt_density <= 0:
            raise ValueError("kpt_density must be positive")

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GpawSettings:
        """Named preset ("quick" or "standard"), optionally with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPAW preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def quick(cls, **overrides: Any) -> GpawSettings:
        """The ``"quick"`` preset, optionally with overrides."""
        return cls.preset("quick", **overrides)

    @classmethod
    def standard(cls, **overrides: Any) -> GpawSettings:
        """The ``"standard"`` preset, optionally with overrides."""
        return cls.preset("standard", **overrides)

    # ------------------------------------------------------------ serialisation
    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (``kpts`` as a list)."""
        d = asdict(self)
        if d["kpts"] is not None:
            d["kpts"] = list(d["kpts"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpawSettings:
        """The settings from a dict; keys that are not fields are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def energy_fingerprint(self) -> dict[str, Any]:
        """Settings that change total energies; runs on one hull must agree on these."""
        return {
            "xc": self.xc, "ecut": float(self.ecut), "kpt_density": float(self.kpt_density),
            "kppa": self.kppa, "kpts": list(self.kpts) if self.kpts else None,
            "smearing": self.smearing, "smearing_width": float(self.smearing_width),
            "setups": self.setups, "spin": self.spin,
        }


def as_settings(settings: GpawSettings | str | dict | None) -> GpawSettings:
    """Accept a GpawSettings, a preset name, a dict or None (-> "standard")."""
    if settings is None:
        return GpawSettings.standard()
    if isinstance(settings, GpawSettings):
        return settings
    if isinstance(settings, str):
        return GpawSettings.preset(settings)
    if isinstance(settings, dict):
        return GpawSettings.from_dict(settings)
    raise TypeError(f"cannot interpret {type(settings).__name__} as GpawSettings")


# ------------------------------------------------------------------ up-front checks of a preset and overrides
def _spin(value: Any) -> Any:
    if isinstance(value, bool):  # YAML 1.1 reads unquoted on/off/yes/no as booleans
        raise ValueError("must be 'auto', 'on' or 'off' as text (quote it: YAML reads unquoted on/off as "
                         "true/false)")
    return value


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class GpawSettingsSchema(StrictOptions):
    """The ranges of :class:`GpawSettings`' fields, checked before any DFT runs (every field required).

    ``ecut`` 50-3000 eV; ``kpt_density`` (0, 100] per Å^-1; ``kppa`` 1-10^7; ``kpts`` three integers 1-100;
    ``smearing_width`` 0-5 eV; ``maxiter`` 1-10^4; ``energy_tol`` (0, 1] eV; ``fmax`` (0, 10] eV/Å;
    ``steps`` 1-10^5; the enumerations are those of :class:`GpawSettings`.
    """

    ecut: Annotated[float, Field(gt=50, le=3000, allow_inf_nan=False)]
    xc: Annotated[str, Field(min_length=1, max_length=64)]
    kpt_density: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
    kppa: Annotated[int, Field(ge=1, le=10_000_000)] | None
    kpts: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=3, max_length=3),
                    BeforeValidator(_as_list)] | None
    smearing: Annotated[str, AfterValidator(one_of(SMEARING_METHODS))]
    smearing_width: Annotated[float, Field(ge=0, le=5, allow_inf_nan=False)]
    spin: Annotated[str, BeforeValidator(_spin), AfterValidator(one_of(("auto", "on", "off")))]
    maxiter: Annotated[int, Field(ge=1, le=10_000)]
    energy_tol: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    relax: Annotated[str, AfterValidator(one_of(("positions", "cell")))] | None
    optimizer: Annotated[str, AfterValidator(one_of(("BFGS", "FIRE")))]
    fmax: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]
    steps: Annotated[int, Field(ge=1, le=100_000)]
    setups: Annotated[str, Field(min_length=1, max_length=64)]
    extra: dict[str, Any]


def check_gpaw_options(preset: Any, settings: Any, prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """Check a GPAW preset name and overrides up front, as a campaign spec's ``dft`` section gives them.

    Parameters
    ----------
    preset
        The preset's name (one of :data:`PRESETS`).
    settings
        Overrides of the preset (:class:`GpawSettings` field names).
    prefix
        Key path of ``preset`` and ``settings``' section in the user's document (``"dft."``).

    Returns
    -------
    tuple[dict, list[str]]
        The overrides with their values as :class:`GpawSettings` takes them (floats where floats are due),
        and the problems, one ``<prefix>preset: ...`` or ``<prefix>settings.<key>: ...`` line each (none
        when all is well).
    """
    problems: list[str] = []
    if not isinstance(preset, str) or preset not in PRESETS:
        problems.append(f"{prefix}preset: must be one of {', '.join(PRESETS)} (got {show(preset)})")
        preset = "standard"
    if not isinstance(settings, dict):
        return {}, [*problems, f"{prefix}settings: must be a mapping (key: value), not {a_kind(settings)}"]
    full = {**GpawSettings.preset(preset).as_dict(), **settings}
    try:
        checked = GpawSettingsSchema.model_validate(full)
    except ValidationError as exc:
        return {}, [*problems, *describe(exc, GpawSettingsSchema, prefix=f"{prefix}settings")]
    return {k: getattr(checked, k) for k in settings}, problems
