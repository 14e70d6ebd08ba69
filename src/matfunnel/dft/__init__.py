"""matfunnel.dft: the DFT-fallback stage.

* `run_gpaw` - one real PAW-PBE plane-wave GPAW calculation (static or relaxation);
  returns a JSON-able record, never raises for a bad structure.
* `GpawSettings` - settings with "quick" and "standard" presets.
* `dft_hull` / `dft_hull_from_results` - self-consistent GPAW convex hull for
  candidates against their competing phases (plus `plan_dft_runs` / `expand_results`
  to split the work into one job per structure).
* `vasp_flow` / `vasp_entry` / `vasp_result` - atomate2 MP GGA flow for users with
  VASP, and MP2020-compatible entries from its output (atomate2 imported lazily).
"""

from matfunnel.dft.dft_hull import (
    dft_hull,
    dft_hull_from_results,
    expand_results,
    plan_dft_runs,
)
from matfunnel.dft.gpaw import ensure_gpaw_setups, kpoint_mesh, run_gpaw
from matfunnel.dft.settings import GpawSettings, as_settings
from matfunnel.dft.vasp import vasp_entry, vasp_entry_from_dir, vasp_flow, vasp_result

__all__ = [
    "GpawSettings", "as_settings", "run_gpaw", "ensure_gpaw_setups", "kpoint_mesh",
    "dft_hull", "dft_hull_from_results", "plan_dft_runs", "expand_results",
    "vasp_flow", "vasp_entry", "vasp_entry_from_dir", "vasp_result",
]
