"""Real PAW-PBE plane-wave DFT with GPAW (one structure per call).

`run_gpaw` never raises for a bad structure or a failed calculation: it returns a
record whose ``error`` names the structure and the problem.  The record is plain JSON
(floats, lists, dicts) so it can be a jobflow job output.

Energies: GPAW total energies are measured from its isolated, spherical,
spin-paired reference atoms, not from the all-electron zero.  Differences between
GPAW runs with identical settings (formation energies, hull distances) are meaningful;
the absolute numbers are *not* comparable with VASP/MP energies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from matfunnel.common.structures import as_structure
from matfunnel.dft.settings import (
    DEFAULT_MAGMOM,
    MAGNETIC_ELEMENTS,
    SPIN_POLARISED_ELEMENTAL,
    GpawSettings,
    as_settings,
    mp_initial_magmoms,
)

MIN_INTERATOMIC_DISTANCE = 0.5  # Å; anything closer is a broken structure
MAX_ATOMS_DEFAULT = 200


# --------------------------------------------------------------------------- setups
def ensure_gpaw_setups() -> list[str]:
    """Make sure GPAW can find its PAW datasets; returns GPAW's setup search path.

    The ``gpaw-data`` wheel ships the datasets in ``gpaw_data.datapath()`` and GPAW
    (>= 24) adds that directory to ``gpaw.setup_paths`` on import.  ``GPAW_SETUP_PATH``
    (if set) is searched first.  This function appends the gpaw-data directory if some
    older GPAW did not, and raises `FileNotFoundError` if no PBE dataset can be found.
    """
    import gpaw

    try:
        import gpaw_data

        data = Path(gpaw_data.datapath())
        if data.is_dir() and all(Path(p) != data for p in gpaw.setup_paths):
            gpaw.setup_paths.append(data)
    except ImportError:
        pass
    paths = [str(p) for p in gpaw.setup_paths]
    found = any((Path(p) / "H.PBE.gz").exists() or (Path(p) / "H.PBE").exists() for p in paths)
    if not found:
        raise FileNotFoundError(
            "GPAW PAW setups not found; install the 'gpaw-data' package or set "
            f"GPAW_SETUP_PATH (searched: {paths})"
        )
    return paths


def gpaw_version() -> str:
    """GPAW's version string, or ``"unavailable"`` when GPAW does not import."""
    try:
        import gpaw

        return str(gpaw.__version__)
    except Exception:  # pragma: no cover
        return "unavailable"


# ------------------------------------------------------------------------ helpers
def _safe_label(label: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(label)).strip("._")
    return s or "structure"


def _to_atoms(structure: Any):
    """Pymatgen Structure or ASE Atoms -> fresh ASE Atoms (no calculator)."""
    from ase import Atoms

    if isinstance(structure, Atoms):
        atoms = structure.copy()
        atoms.calc = None
        return atoms
    structure = as_structure(structure)
    if not structure.is_ordered:
        raise ValueError("structure is disordered (partial occupancies); order it first")
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = None
    # keep only what GPAW needs; site magmoms (if any) are handled by _initial_magmoms
    magmoms = structure.site_properties.get("magmom")
    atoms.info["_site_magmoms"] = (
        [float(np.linalg.norm(m)) if np.ndim(m) else float(m) for m in magmoms]
        if magmoms is not None and all(m is not None for m in magmoms)
        else None
    )
    for key in list(atoms.arrays):
        if key not in ("numbers", "positions"):
            del atoms.arrays[key]
    return atoms


def check_atoms(atoms, max_atoms: int = MAX_ATOMS_DEFAULT) -> str | None:
    """A human-readable problem with the structure, or None if it looks computable."""
    n = len(atoms)
    if n == 0:
        return "structure has no atoms"
    if n > max_atoms:
        return f"{n} atoms exceeds max_atoms={max_atoms} for the DFT fallback"
    if not all(atoms.pbc):
        return "structure must be periodic in all three directions"
    cell = np.asarray(atoms.cell)
    if not np.all(np.isfinite(cell)) or not np.all(np.isfinite(atoms.positions)):
        return "lattice or positions contain NaN/inf"
    vol = abs(np.linalg.det(cell))
    if vol < 1.0:
        return f"cell volume {vol:.3g} Å^3 is degenerate"
    if vol / n > 500:
        return f"volume per atom {vol / n:.0f} Å^3 is unphysically large"
    if n > 1 or min(atoms.cell.lengths()) < MIN_INTERATOMIC_DISTANCE:
        from ase.geometry import get_distances

        _, d = get_distances(atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        if n > 1:
            d = d + np.eye(n) * 1e9
            dmin = float(d.min())
        else:
            dmin = float("inf")
        dmin = min(dmin, float(min(atoms.cell.lengths())))
        if dmin < MIN_INTERATOMIC_DISTANCE:
            return f"atoms overlap (shortest distance {dmin:.3f} Å < {MIN_INTERATOMIC_DISTANCE} Å)"
    return None


def kpoint_mesh(atoms, settings: GpawSettings) -> list[int]:
    """Gamma-centred Monkhorst-Pack mesh for these settings."""
    if settings.kpts is not None:
        return [int(k) for k in settings.kpts]
    if settings.kppa is not None:
        from pymatgen.io.ase import AseAtomsAdaptor
        from pymatgen.io.vasp.inputs import Kpoints

        kp = Kpoints.automatic_density(AseAtomsAdaptor.get_structure(atoms), settings.kppa,
                                       force_gamma=True)
        return [int(k) for k in kp.kpts[0]]
    # ASE/GPAW convention: N_i = ceil(2*pi*|b_i| * density), b without 2*pi
    recip = np.linalg.norm(atoms.cell.reciprocal(), axis=1)
    return [max(1, math.ceil(2 * math.pi * r * settings.kpt_density - 1e-9)) for r in recip]


def _initial_magmoms(atoms, settings: GpawSettings) -> list[float] | None:
    """Initial moments (None = spin-paired)."""
    if settings.spin == "off":
        return None
    site = atoms.info.get("_site_magmoms")
    symbols = atoms.get_chemical_symbols()
    has_magnetic = any(s in MAGNETIC_ELEMENTS for s in symbols) or (
        len(set(symbols)) == 1 and symbols[0] in SPIN_POLARISED_ELEMENTAL)
    has_site_moments = site is not None and any(abs(m) > 1e-8 for m in site)
    if settings.spin == "auto" and not (has_magnetic or has_site_moments):
        return None
    if has_site_moments:
        return [float(m) for m in site]
    table = mp_initial_magmoms()
    return [float(table.get(s, DEFAULT_MAGMOM)) for s in symbols]


def _occupations(settings: GpawSettings) -> dict[str, Any]:
    occ: dict[str, Any] = {"name": settings.smearing, "width": float(settings.smearing_width)}
    if settings.smearing == "methfessel-paxton":
        occ["order"] = 1
    return occ


def _tolist(x) -> Any:
    if x is None:
        return None
    return np.asarray(x, dtype=float).tolist()


def _base_record(label: str, atoms, settings: GpawSettings) -> dict[str, Any]:
    symbols = atoms.get_chemical_symbols() if atoms is not None else []
    comp: dict[str, float] = {}
    for s in symbols:
        comp[s] = comp.get(s, 0.0) + 1.0
    return {
        "label": str(label),
        "formula": atoms.get_chemical_formula(mode="hill") if atoms is not None else None,
        "composition": comp,
        "natoms": len(symbols),
        "energy": None,
        "free_energy": None,
        "energy_per_atom": None,
        "forces": None,
        "stress": None,
        "magmom": None,
        "magmoms": None,
        "spin_polarized": None,
        "converged": False,
        "scf_converged": False,
        "relax_converged": None,
        "relax_steps": None,
        "n_scf_iterations": None,
        "fermi_level": None,
        "kpts": None,
        "n_ibz_kpts": None,
        "structure": None,
        "settings": settings.as_dict(),
        "energy_fingerprint": settings.energy_fingerprint(),
        "code": "gpaw",
        "gpaw_version": gpaw_version(),
        "wall_time_s": None,
        "logfile": None,
        "error": None,
    }


# ---------------------------------------------------------------------------- run
def run_gpaw(
    structure: Any,
    settings: GpawSettings | str | dict | None = None,
    label: str = "structure",
    workdir: str | os.PathLike = ".",
    max_atoms: int = MAX_ATOMS_DEFAULT,
) -> dict[str, Any]:
    """Run one GPAW plane-wave PAW calculation (static by default, optional relaxation).

    Parameters
    ----------
    structure: pymatgen Structure (or its dict) or ASE Atoms.
    settings: `GpawSettings`, a preset name ("quick", "standard"), a dict, or None
        (= "standard").
    label: identifier of the structure; used in error messages and log names.
    workdir: directory for the text logs (``<label>.gpaw.txt``, ``<label>.opt.log``);
        created if missing.
    max_atoms: larger structures are refused (error record) rather than started.

    Returns
    -------
    dict with keys: label, formula, composition ({element: count}), natoms,
    energy (eV, total, zero-smearing extrapolated), free_energy (eV, force-consistent),
    energy_per_atom (eV/atom), forces (natoms x 3, eV/Å), stress (Voigt 6, eV/Å^3,
    ASE sign convention), magmom (total, mu_B; 0.0 for spin-paired), magmoms (per site
    or None), spin_polarized, converged (SCF converged and, if relaxing, relaxation
    converged), scf_converged, relax_converged, relax_steps, n_scf_iterations,
    fermi_level (eV), kpts (mesh), n_ibz_kpts, structure (final pymatgen Structure as
    dict), settings (dict), energy_fingerprint, code, gpaw_version, wall_time_s,
    logfile, error (None or a message naming the structure).
    """
    t0 = time.perf_counter()
    label = str(label)
    rec, atoms, gpaw_settings = _checked_input(structure, settings, label, max_atoms)
    if atoms is None:
        rec["wall_time_s"] = time.perf_counter() - t0
        return rec

    workdir = Path(workdir)
    stem = _safe_label(label)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        ensure_gpaw_setups()
        mesh = kpoint_mesh(atoms, gpaw_settings)
        rec["kpts"] = mesh
        magmoms = _initial_magmoms(atoms, gpaw_settings)
        rec["spin_polarized"] = magmoms is not None
        if magmoms is not None:
            atoms.set_initial_magnetic_moments(magmoms)
        atoms.info.pop("_site_magmoms", None)

        logfile = workdir / f"{stem}.gpaw.txt"
        rec["logfile"] = str(logfile)
        try:
            energy = _calculate(atoms, gpaw_settings, mesh, magmoms is not None, logfile,
                                workdir / f"{stem}.opt.log", rec)
        except Exception as exc:  # noqa: BLE001 - only GPAW's own symmetry-analysis failure is retried
            if type(exc).__name__ != "SymmetryAnalysisBug":
                raise
            # GPAW's k-point symmetry analysis fails on some valid cells; the full mesh gives the same physics
            rec["symmetry"] = f"off (GPAW's symmetry analysis failed: {str(exc).splitlines()[0][:120]})"
            off = dataclasses.replace(gpaw_settings, extra={**(gpaw_settings.extra or {}), "symmetry": "off"})
            energy = _calculate(atoms, off, mesh, magmoms is not None, logfile, workdir / f"{stem}.opt.log", rec)
        _check_result(rec, gpaw_settings, label, energy)
    except Exception as exc:
        rec["error"] = f"structure {label!r} ({rec['formula']}): {_failure_message(exc, gpaw_settings)}"
        rec["converged"] = False
        rec["traceback"] = traceback.format_exc(limit=5)
    finally:
        rec["wall_time_s"] = time.perf_counter() - t0
    return rec


def _calculate(atoms, settings: GpawSettings, mesh: list[int], spinpol: bool, logfile: Path, optlog: Path,
               rec: dict[str, Any]) -> float:
    """Attach GPAW, relax when the settings say so, and read the results into ``rec``; the energy."""
    with open(logfile, "w") as txt_fh:
        _attach_gpaw(atoms, settings, mesh, spinpol, txt_fh)
        if settings.relax is not None:
            _relax(atoms, settings, optlog, rec)
        return _read_results(atoms, spinpol, rec)


def _checked_input(structure: Any, settings: GpawSettings | str | dict | None, label: str,
                   max_atoms: int) -> tuple[dict[str, Any], Any, GpawSettings]:
    """The base record, the ASE ``Atoms`` and the settings of a run.

    The ``Atoms`` are None when the input is refused (invalid settings, a structure that does not convert or
    fails :func:`check_atoms`); the record then carries the error.
    """
    try:
        gpaw_settings = as_settings(settings)
    except Exception as exc:
        rec = _base_record(label, None, GpawSettings())
        rec["error"] = f"structure {label!r}: invalid GPAW settings: {exc}"
        return rec, None, GpawSettings()

    try:
        atoms = _to_atoms(structure)
    except Exception as exc:
        rec = _base_record(label, None, gpaw_settings)
        rec["error"] = f"structure {label!r}: cannot convert structure: {type(exc).__name__}: {exc}"
        return rec, None, gpaw_settings

    rec = _base_record(label, atoms, gpaw_settings)
    problem = check_atoms(atoms, max_atoms=max_atoms)
    if problem:
        rec["error"] = f"structure {label!r} ({rec['formula']}): {problem}"
        return rec, None, gpaw_settings
    return rec, atoms, gpaw_settings


def _attach_gpaw(atoms, settings: GpawSettings, mesh: list[int], spinpol: bool, txt_fh: TextIO) -> None:
    """Set a GPAW plane-wave calculator on ``atoms``, logging to ``txt_fh``."""
    from gpaw import GPAW, PW

    params: dict[str, Any] = dict(
        mode=PW(float(settings.ecut)),
        xc=settings.xc,
        kpts={"size": mesh, "gamma": True},
        occupations=_occupations(settings),
        convergence={"energy": float(settings.energy_tol)},
        maxiter=int(settings.maxiter),
        setups=settings.setups,
        spinpol=spinpol,
        txt=txt_fh,
    )
    params.update(settings.extra or {})
    atoms.calc = GPAW(**params)


def _relax(atoms, settings: GpawSettings, optlog: Path, rec: dict[str, Any]) -> None:
    """Relax ``atoms`` (positions, and the cell with ``relax="cell"``); record convergence and steps."""
    from ase.optimize import BFGS, FIRE

    target = atoms
    if settings.relax == "cell":
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms)
    opt_cls = {"BFGS": BFGS, "FIRE": FIRE}[settings.optimizer]
    opt = opt_cls(target, logfile=str(optlog))
    relax_ok = bool(opt.run(fmax=settings.fmax, steps=settings.steps))
    rec["relax_converged"] = relax_ok
    rec["relax_steps"] = int(opt.nsteps)


def _read_results(atoms, spin_polarized: bool, rec: dict[str, Any]) -> float:
    """Compute and record energies, forces, stress, moments, SCF data and the final structure; the energy."""
    energy = float(atoms.get_potential_energy())
    rec["scf_converged"] = True  # GPAW raises KohnShamConvergenceError otherwise
    rec["energy"] = energy
    rec["free_energy"] = float(atoms.get_potential_energy(force_consistent=True))
    rec["energy_per_atom"] = energy / len(atoms)
    rec["forces"] = _tolist(atoms.get_forces())
    try:
        rec["stress"] = _tolist(atoms.get_stress(voigt=True))
    except Exception:  # stress not implemented for some xc/modes
        rec["stress"] = None
    calc = atoms.calc
    if spin_polarized:
        rec["magmom"] = float(calc.get_magnetic_moment())
        rec["magmoms"] = _tolist(calc.get_magnetic_moments())
    else:
        rec["magmom"] = 0.0
    for key, getter in (("n_scf_iterations", "get_number_of_iterations"),
                        ("fermi_level", "get_fermi_level")):
        with contextlib.suppress(Exception):
            val = getattr(calc, getter)()
            rec[key] = None if val is None else (int(val) if key.startswith("n_") else float(val))
    with contextlib.suppress(Exception):
        rec["n_ibz_kpts"] = int(len(calc.get_ibz_k_points()))
    from pymatgen.io.ase import AseAtomsAdaptor

    final = atoms.copy()
    final.calc = None
    final.set_initial_magnetic_moments(None)
    rec["structure"] = AseAtomsAdaptor.get_structure(final).as_dict()
    return energy


def _check_result(rec: dict[str, Any], settings: GpawSettings, label: str, energy: float) -> None:
    """Record an error for a non-finite energy or an unconverged relaxation, and ``converged``."""
    if not math.isfinite(energy):
        rec["error"] = f"structure {label!r} ({rec['formula']}): non-finite energy {energy}"
    elif settings.relax is not None and not rec["relax_converged"]:
        rec["error"] = (
            f"structure {label!r} ({rec['formula']}): relaxation not converged to "
            f"fmax={settings.fmax} eV/Å in {settings.steps} steps"
        )
    rec["converged"] = rec["error"] is None


def _failure_message(exc: Exception, settings: GpawSettings) -> str:
    """What went wrong in a calculation that raised ``exc``."""
    kind = type(exc).__name__
    if kind == "KohnShamConvergenceError":
        return f"SCF did not converge within maxiter={settings.maxiter}"
    return f"GPAW failed: {kind}: {exc}"
