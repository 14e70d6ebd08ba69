"""Before/after table of a fine-tuning run checked on phonons (issue 21, section 3).

Reads the ``*.summary.json`` files that ``matfunnel phonons compare --out X.csv`` writes next to ``X.csv``
and each fine-tuning run's ``result.json`` (validation force MAE), and prints one markdown table::

    python analysis/finetune_phonons.py before=runs/ft/phonons_before.summary.json \\
        adam=runs/ft/phonons_after.summary.json:runs/ft/result.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (("mae_omega_max_thz", "ω_max MAE (THz)", 3), ("mae_entropy_300k", "S MAE (J/K/mol)", 1),
           ("mae_free_energy_300k", "F MAE (kJ/mol)", 2), ("mae_heat_capacity_300k", "Cv MAE (J/K/mol)", 2),
           ("mean_mesh_mae_thz", "mesh MAE (THz)", 3), ("stability_accuracy", "stability accuracy", 3))


def row(label: str, summary_path: str, result_path: str | None) -> str:
    """One table row: the phonon summary's errors and, with a fine-tuning result, its validation force MAE."""
    summary = json.loads(Path(summary_path).read_text())
    forces = "-"
    if result_path:
        metrics = json.loads(Path(result_path).read_text())["metrics"]
        forces = f"{metrics['before']['forces_mae']:.2f} → {metrics['after']['forces_mae']:.2f}"
    cells = [f"{summary[key]:.{n}f}" for key, _, n in COLUMNS]
    return f"| {label} | {summary['n_compared']} | {forces} | " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    """Print the table for ``label=summary.json[:result.json]`` arguments."""
    print("| model | materials | val. force MAE (meV/Å) | " + " | ".join(t for _, t, _ in COLUMNS) + " |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    for arg in argv:
        label, _, paths = arg.partition("=")
        summary, _, result = paths.partition(":")
        print(row(label, summary, result or None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
