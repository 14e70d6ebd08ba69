"""Phonon checks: finite-displacement harmonic phonons with a matfunnel potential.

* :func:`run_phonons` - phonons of one structure (all displacements in one batched predict),
  returning a :class:`PhononResult` document (thermal properties, ω_max, DOS, band structure,
  dynamical stability).
* :func:`assess_stability` - the dynamical-stability rule and its tolerance.
* :func:`load_reference`, :func:`compare_references` - DFT (phonopy/atomate2) references and the
  comparison behind ``matfunnel phonons compare``.
* :mod:`matfunnel.phonons.gate` - the optional phonon gate of a campaign.

Names are imported lazily so ``import matfunnel.phonons.<module>`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_phonons": "calculate", "build_phonopy": "calculate", "produce_force_constants": "calculate",
    "PhononResult": "document",
    "harmonic_summary": "properties", "THZ_TO_K": "properties",
    "relax_symmetric": "symmetric_relax", "relax_symmetric_many": "symmetric_relax",
    "assess_stability": "stability", "Stability": "stability", "IMAGINARY_TOL": "stability",
    "GAMMA_ACOUSTIC_TOL": "stability",
    "supercell_matrix_for": "supercell",
    "PhononReference": "dft_reference", "PhononReferenceError": "dft_reference", "load_reference": "dft_reference",
    "find_references": "dft_reference",
    "compare_references": "compare", "compare_with_reference": "compare", "summarize": "compare",
    "cheapest_references": "compare",
    "PhononGateMaker": "gate", "PhononMaker": "maker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"matfunnel.phonons.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'matfunnel.phonons' has no attribute {name!r}")
