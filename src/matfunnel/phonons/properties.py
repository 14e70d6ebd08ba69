"""Harmonic properties of a phonopy object that has force constants.

Thermal properties are phonopy's, per mole of the *primitive cell*: free energy F in kJ/mol,
entropy S and isochoric heat capacity Cv in J/K/mol. Frequencies are in THz (imaginary as
negative); ω_max is also given in K (h·ν/k_B).
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure

from matfunnel.phonons.bandpath import band_path
from matfunnel.phonons.stability import IMAGINARY_TOL, assess_stability

THZ_TO_K = 47.99243073366  # h * 1 THz / k_B
DEFAULT_TEMPERATURES = (0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0)
DEFAULT_MESH = 100.0  # phonopy's length-based sampling density


def primitive_structure(phonon) -> Structure:
    """The primitive cell of ``phonon`` (a Phonopy object) as a pymatgen ``Structure``."""
    p = phonon.primitive
    return Structure(p.cell, list(p.symbols), p.scaled_positions)


def mesh_properties(phonon, mesh=DEFAULT_MESH, temperatures=DEFAULT_TEMPERATURES) -> dict:
    """Thermal properties on a Γ-centred mesh, plus the irreducible q-points, weights and frequencies."""
    phonon.run_mesh(mesh, is_gamma_center=True)
    m = phonon.mesh
    temps = sorted({float(t) for t in temperatures} | {300.0})
    # the three acoustic modes at Γ are translations: they carry no thermal energy
    phonon.run_thermal_properties(temperatures=temps, exclude_gamma_acoustic=True)
    tp = phonon.thermal_properties
    return {
        "mesh": [int(x) for x in phonon.mesh_numbers],
        "qpoints": np.asarray(m.qpoints),
        "weights": np.asarray(m.weights),
        "frequencies": np.asarray(m.frequencies),
        "temperatures": [float(t) for t in tp.temperatures],
        "free_energy": [float(x) for x in tp.free_energy],
        "entropy": [float(x) for x in tp.entropy],
        "heat_capacity": [float(x) for x in tp.heat_capacity],
    }


def band_structure(phonon, npoints: int = 31, path=None) -> dict:
    """Frequencies along a standard path (see :mod:`matfunnel.phonons.bandpath`); ``npoints`` per segment."""
    paths, labels, connections = path or band_path(primitive_structure(phonon))
    qsegs = [np.linspace(a, b, npoints) for a, b in (np.asarray(p, dtype=float) for p in paths)]
    phonon.run_band_structure(qsegs, path_connections=connections, labels=labels)
    b = phonon.band_structure
    return {
        "path": paths,
        "labels": labels,
        "connections": connections,
        "qpoints": [np.asarray(q) for q in b.qpoints],
        "distances": [np.asarray(d) for d in b.distances],
        "frequencies": [np.asarray(f) for f in b.frequencies],
    }


def total_dos(phonon, mesh=DEFAULT_MESH, n_points: int = 201) -> dict:
    """Total DOS (states/THz per primitive cell) at ``n_points`` frequencies (tetrahedron method)."""
    if phonon.mesh_numbers is None:
        phonon.run_mesh(mesh, is_gamma_center=True)
    fmesh = phonon.mesh.frequencies
    fmin, fmax = float(min(fmesh.min(), 0.0)), float(fmesh.max())
    pitch = max((fmax - fmin) * 1.05 / (n_points - 1), 1e-3)
    phonon.run_total_dos(freq_min=fmin - 0.025 * (fmax - fmin), freq_max=fmax + 0.025 * (fmax - fmin), freq_pitch=pitch)
    d = phonon.total_dos
    return {"frequencies": np.asarray(d.frequency_points)[:n_points], "dos": np.asarray(d.dos)[:n_points]}


def harmonic_summary(phonon, *, mesh=DEFAULT_MESH, temperatures=DEFAULT_TEMPERATURES, band_npoints: int = 31,
                     dos_points: int = 201, imaginary_tol: float = IMAGINARY_TOL, path=None) -> dict:
    """Everything a phonon document reports, computed from ``phonon``'s force constants."""
    mp = mesh_properties(phonon, mesh, temperatures)
    dos = total_dos(phonon, mesh, dos_points)
    bs = band_structure(phonon, band_npoints, path)
    band_q = np.concatenate(bs["qpoints"])
    band_f = np.concatenate(bs["frequencies"])
    all_q = np.concatenate([mp["qpoints"], band_q])
    all_f = np.concatenate([mp["frequencies"], band_f])
    stab = assess_stability(all_q, all_f, tol=imaginary_tol)
    wmax = float(all_f.max())
    i300 = mp["temperatures"].index(300.0)
    return {"mesh": mp, "dos": dos, "band": bs, "stability": stab,
            "omega_max_thz": wmax, "omega_max_k": wmax * THZ_TO_K,
            "free_energy_300k": mp["free_energy"][i300], "entropy_300k": mp["entropy"][i300],
            "heat_capacity_300k": mp["heat_capacity"][i300]}
