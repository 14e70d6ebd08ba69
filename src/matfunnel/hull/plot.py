"""PNG pictures of a hull, headless (matplotlib Agg canvas; no display needed).

* a PhaseDiagram of 2 or 3 elements: pymatgen's PDPlotter (matplotlib backend);
* anything else (1 or >= 4 elements, or ``compute_hull`` results): a two-panel bar chart,
  formation energy and energy above hull per entry, entries sorted by energy above hull.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pymatgen.analysis.phase_diagram import PDPlotter, PhaseDiagram

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_hull"]

MAX_BARS = 60


def _rows_from_pd(pd: PhaseDiagram) -> list[dict[str, Any]]:
    rows = []
    for entry in pd.all_entries:
        rows.append(
            {
                "entry_id": entry.entry_id,
                "formula": entry.composition.reduced_formula,
                "e_form_per_atom": pd.get_form_energy_per_atom(entry),
                "e_above_hull": pd.get_e_above_hull(entry),
            }
        )
    # one bar per composition: the lowest polymorph
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["formula"] not in best or row["e_above_hull"] < best[row["formula"]]["e_above_hull"]:
            best[row["formula"]] = row
    return list(best.values())


def _bar_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r.get("e_above_hull") is not None]
    rows = sorted(rows, key=lambda r: (r["e_above_hull"], r["formula"]))[:MAX_BARS]
    labels = [
        f"{r['formula']}\n{r['entry_id']}" if r.get("entry_id") not in (None, r["formula"]) else r["formula"]
        for r in rows
    ]
    x = range(len(rows))
    fig = Figure(figsize=(max(6.0, 0.45 * len(rows) + 2), 7), layout="constrained")
    FigureCanvasAgg(fig)
    ax_form, ax_hull = fig.subplots(2, 1, sharex=True)
    ax_form.bar(x, [r["e_form_per_atom"] for r in rows], color="tab:blue")
    ax_form.set_ylabel("E_form (eV/atom)")
    ax_form.axhline(0, color="k", lw=0.8)
    colors = ["tab:green" if r["e_above_hull"] <= 1e-8 else "tab:red" for r in rows]
    e_hull = [r["e_above_hull"] for r in rows]
    ax_hull.bar(x, e_hull, color=colors)
    ax_hull.scatter(x, e_hull, c=colors, edgecolors="k", zorder=3)  # stable ones show at 0
    ax_hull.set_ylim(bottom=-0.01, top=max([0.05, *e_hull]) * 1.1)
    ax_hull.set_ylabel("E above hull (eV/atom)")
    ax_hull.set_xticks(list(x), labels, rotation=90, fontsize=7)
    ax_form.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)


def plot_hull(
    data: PhaseDiagram | Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Write a PNG of ``data`` (a PhaseDiagram, or the list returned by ``compute_hull``).

    Returns the path written. Binary/ternary PhaseDiagrams use PDPlotter; other inputs the
    readable bar-chart fallback described in the module docstring.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, PhaseDiagram):
        chemsys = "-".join(sorted(el.symbol for el in data.elements))
        if len(data.elements) in (2, 3):
            import matplotlib.pyplot as plt

            # the matplotlib backend draws on an Axes of a pyplot (top-level) figure
            ax = cast("Axes", PDPlotter(data, backend="matplotlib", show_unstable=0.2).get_plot())
            fig = cast("Figure", ax.get_figure())
            if title:
                ax.set_title(title)
            try:
                fig.savefig(path, dpi=120, bbox_inches="tight")
            finally:
                plt.close(fig)
            return path
        _bar_chart(_rows_from_pd(data), path, title or f"{chemsys} hull")
        return path
    rows = list(data)
    _bar_chart(rows, path, title or (rows[0].get("reference_label", "") if rows else "empty"))
    return path
