"""matfunnel.benchmark: Matbench Discovery (IS2RE) run and scoring, and the funnel's self-score.

* ``data``      registry of the benchmark's data files; cached, md5-checked, resumable download.
* ``metrics``   :func:`discovery_metrics` and the three test subsets (official semantics).
* ``geometry``  RMSD / symmetry of MLIP- vs DFT-relaxed structures.
* ``run``       the sharded, resumable IS2RE run through jobflow (``matfunnel benchmark
  matbench-discovery``).
* ``score``     scoring prediction files (``matfunnel benchmark score``) and finished runs.
* ``gate_metrics`` :func:`gate_metrics`: a campaign's MLIP gate vs its own DFT results.
* ``synthetic`` a tiny WBM-format data set for tests and demos.
"""

from matfunnel.benchmark.data import DATA_FILES, DataUnavailableError, fetch
from matfunnel.benchmark.gate_metrics import gate_metrics
from matfunnel.benchmark.metrics import (
    classify_stable,
    discovery_metrics,
    prepare_predictions,
    round_metrics,
    score_predictions,
    subset_indices,
)

__all__ = [
    "DATA_FILES",
    "DataUnavailableError",
    "classify_stable",
    "discovery_metrics",
    "fetch",
    "gate_metrics",
    "prepare_predictions",
    "round_metrics",
    "score_predictions",
    "subset_indices",
]
