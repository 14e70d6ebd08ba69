"""Dynamical stability from phonon frequencies, with a documented noise tolerance.

Imaginary frequencies are reported as negative numbers (phonopy's convention). The rule:

* A mode is **imaginary** when its frequency is below ``-tol`` (default
  :data:`IMAGINARY_TOL` = 0.1 THz, 0.4 meV). Finite-displacement force constants from float32
  forces carry noise of this order for soft, heavy-atom modes; anything softer than that is a real
  instability (the rocksalt GeTe / SnTe instabilities are of order -1 THz).
* The three **acoustic modes at Γ** (the three closest to zero there) are zero by translational
  invariance; values there are numerical noise and are ignored up to :data:`GAMMA_ACOUSTIC_TOL` =
  0.5 THz in magnitude (beyond that the force constants are broken and the structure is flagged).
* Everything else, **imaginary optical modes at Γ and any mode away from Γ**, makes the structure
  dynamically unstable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

IMAGINARY_TOL = 0.1  # THz
GAMMA_ACOUSTIC_TOL = 0.5  # THz


@dataclass
class Stability:
    """Verdict of :func:`assess_stability`."""

    stable: bool
    min_frequency: float  # THz, over all modes (Γ acoustic included)
    n_imaginary: int  # imaginary modes counted under the rule above
    worst_qpoint: list[float] | None  # q-point (fractional) of the most imaginary counted mode
    imaginary_at_gamma: bool  # an optical mode at Γ is imaginary
    imaginary_off_gamma: bool
    tol: float = IMAGINARY_TOL
    gamma_acoustic_tol: float = GAMMA_ACOUSTIC_TOL
    reason: str = ""

    def as_dict(self) -> dict:
        """The verdict as a dict."""
        return asdict(self)


def is_gamma(q, atol: float = 1e-6) -> np.ndarray:
    """Which of the fractional q-points ``q`` are Γ (integer coordinates, within ``atol``)."""
    q = np.atleast_2d(np.asarray(q, dtype=float))
    return np.all(np.abs(q - np.rint(q)) < atol, axis=1)


def assess_stability(qpoints, frequencies, tol: float = IMAGINARY_TOL,
                     gamma_acoustic_tol: float = GAMMA_ACOUSTIC_TOL) -> Stability:
    """Apply the rule to ``frequencies`` (THz, shape (n_q, n_bands)) at fractional ``qpoints``."""
    q = np.atleast_2d(np.asarray(qpoints, dtype=float))
    f = np.atleast_2d(np.asarray(frequencies, dtype=float))
    gamma = is_gamma(q)
    counted = np.ones_like(f, dtype=bool)
    broken_asr = False
    for i in np.flatnonzero(gamma):
        order = np.argsort(np.abs(f[i]))[:3]  # acoustic modes at Γ: the three closest to zero
        counted[i, order] = False
        broken_asr |= bool(np.abs(f[i, order]).max() > gamma_acoustic_tol)
    imag = counted & (f < -tol)
    n_imag = int(imag.sum())
    worst = None
    if n_imag:
        masked = np.where(imag, f, np.inf)
        iq = int(np.unravel_index(np.argmin(masked), f.shape)[0])
        worst = [float(x) for x in q[iq]]
    at_gamma = bool(imag[gamma].any()) if gamma.any() else False
    off_gamma = bool(imag[~gamma].any()) if (~gamma).any() else False
    stable = n_imag == 0 and not broken_asr
    if broken_asr:
        reason = f"acoustic modes at Γ beyond ±{gamma_acoustic_tol} THz (broken translational invariance)"
    elif n_imag:
        where = " and ".join(w for w, flag in (("optical modes at Γ", at_gamma), ("modes away from Γ", off_gamma))
                             if flag)
        reason = f"{n_imag} imaginary mode(s) below -{tol} THz ({where}); lowest {f[imag].min():.3f} THz"
    else:
        reason = f"no imaginary modes below -{tol} THz"
    return Stability(stable=stable, min_frequency=float(f.min()), n_imaginary=n_imag, worst_qpoint=worst,
                     imaginary_at_gamma=at_gamma, imaginary_off_gamma=off_gamma, tol=tol,
                     gamma_acoustic_tol=gamma_acoustic_tol, reason=reason)
