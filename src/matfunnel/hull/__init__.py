"""matfunnel.hull: MLIP energies -> MP2020-corrected entries -> convex hull.

Modules, one concept each:

* ``entries``       MLIP energies as MP-like GGA(+U) entries; MP2020 corrections.
* ``elemental``     the shipped MP elemental reference entries; formation energies vs them.
* ``mp_cache``      Materials Project entries via mp-api, cached on disk.
* ``references``    the reference phases of a chemical system (mp-api or offline).
* ``phase_diagram`` hull energies of candidates (pymatgen PhaseDiagram).
* ``plot``          PNG of a hull.
"""

from matfunnel.hull.elemental import (
    e_form_vs_mp_elements,
    elemental_reference_energies,
    elemental_reference_entries,
)
from matfunnel.hull.entries import ProcessedEntries, mlip_entry, mp_parameters, process_entries
from matfunnel.hull.phase_diagram import build_phase_diagram, compute_hull
from matfunnel.hull.plot import plot_hull
from matfunnel.hull.references import ReferenceSet, reference_entries

__all__ = [
    "ProcessedEntries",
    "ReferenceSet",
    "build_phase_diagram",
    "compute_hull",
    "e_form_vs_mp_elements",
    "elemental_reference_energies",
    "elemental_reference_entries",
    "mlip_entry",
    "mp_parameters",
    "plot_hull",
    "process_entries",
    "reference_entries",
]
