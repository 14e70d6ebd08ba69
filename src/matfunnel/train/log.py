"""What a fine-tuning run shows and leaves behind: a progress line, the loss log (CSV) and its curves (PNG)."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import TextIO

#: the per-epoch log's columns (MAEs: energy meV/atom, forces meV/Å, stress GPa, magmoms μB)
EPOCH_COLUMNS = ("epoch", "steps", "seconds", "lr", "train_loss", "train_energy_mae", "train_forces_mae",
                 "train_stress_mae", "train_magmoms_mae", "val_loss", "val_energy_mae", "val_forces_mae",
                 "val_stress_mae", "val_magmoms_mae")
STEP_COLUMNS = ("epoch", "step", "loss", "seconds")


class Progress:
    """One progress line per run on ``stream`` (rewritten in place on a terminal, every 10 % otherwise)."""

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True):
        self.total = max(int(total), 1)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = -1

    def update(self, text: str, n: int = 1) -> None:
        """Advance by ``n`` steps and show ``text`` beside the bar."""
        self.done += n
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        tenth = int(frac * 10)
        if not self._tty and tenth == self._shown and self.done < self.total:
            return
        self._shown = tenth
        bar = "#" * int(frac * 30)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        line = f"[{bar:<30}] {self.done}/{self.total} {text} ({elapsed:.0f} s, about {eta:.0f} s left)"
        self.stream.write(("\r" + line) if self._tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _rewrite(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    tmp.replace(path)


def write_logs(folder: Path, epochs: list[dict], steps: list[dict]) -> None:
    """Write ``log.csv`` (one row per epoch, epoch 0 = before training), ``steps.csv`` and ``curves.png``."""
    _rewrite(folder / "log.csv", EPOCH_COLUMNS, epochs)
    _rewrite(folder / "steps.csv", STEP_COLUMNS, steps)
    plot_curves(folder / "curves.png", epochs, steps)


def plot_curves(path: Path, epochs: list[dict], steps: list[dict]) -> None:
    """The training loss per step and the validation MAEs per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if steps:
        axes[0].plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=0.8)
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    for ax, key, unit in ((axes[1], "energy", "meV/atom"), (axes[2], "forces", "meV/Å")):
        for split, style in (("train", "--"), ("val", "-")):
            pts = [(e["epoch"], e.get(f"{split}_{key}_mae")) for e in epochs]
            pts = [(x, y) for x, y in pts if y not in (None, "")]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=f"MAE ({unit})", title=f"{key} MAE")
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
