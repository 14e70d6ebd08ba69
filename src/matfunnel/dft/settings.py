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
from typing import Any, Literal

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
        presets = {
            "quick": dict(ecut=300.0, kpt_density=2.0, smearing_width=0.1, maxiter=100,
                          energy_tol=1e-3),
            "standard": dict(ecut=500.0, kpt_density=4.0, smearing_width=0.05, maxiter=200,
                             energy_tol=5e-4),
        }
        if name not in presets:
            raise ValueError(f"unknown GPAW preset {name!r}; choose from {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

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
