"""Trajectories kept to a fixed number of frames, whatever the length of the run.

A frame is due every ``stride`` steps. When ``max_frames`` is reached every other frame is dropped and the
stride doubles, so a trajectory always spans the whole run in at most ``max_frames`` frames and its size is
known before the run starts (``max_frames`` x atoms x 3 positions): no 16 MB document surprise.
"""

from __future__ import annotations

import numpy as np


class Thinned:
    """Frames of the quantities ``keys``, sampled every ``stride`` steps and thinned to ``max_frames``."""

    KEYS: tuple[str, ...] = ()
    UNITS: dict[str, str] = {}

    def __init__(self, stride: int, max_frames: int):
        self.stride, self.max_frames = max(1, int(stride)), max(2, int(max_frames))
        self.frames: dict[str, list] = {k: [] for k in self.KEYS}

    def due(self, step: int) -> bool:
        """Tell whether a frame is due at ``step``."""
        return step % self.stride == 0

    def append(self, values: tuple, *, final: bool = False) -> None:
        """Add one frame (``values`` in the order of ``KEYS``, the step first).

        A ``final`` frame is always kept: the frames before it are thinned first if there is no room, and it is not
        added twice for the same step.
        """
        f = self.frames
        if f["step"] and f["step"][-1] == values[0]:
            return
        if final and len(f["step"]) >= self.max_frames:
            self._thin()
        for k, v in zip(self.KEYS, values, strict=True):
            f[k].append(v)
        if not final and len(f["step"]) >= self.max_frames:
            self._thin()

    def _thin(self) -> None:
        for k in self.KEYS:
            self.frames[k] = self.frames[k][::2]
        self.stride *= 2

    def as_dict(self) -> dict:
        """Return the frames, the current stride and the units as one dictionary."""
        return {**self.frames, "stride": self.stride, "units": dict(self.UNITS)}


class Frames(Thinned):
    """A relaxation's path, frame by frame.

    Energy, the largest generalised force (the convergence residual), volume, positions (Cartesian, rounded to
    1e-4 A) and cell of each sampled step.
    """

    KEYS = ("step", "energy", "fmax", "volume", "positions", "cell")
    UNITS = {"energy": "eV", "fmax": "eV/A", "volume": "A^3", "positions": "A (Cartesian)", "cell": "A (rows)"}

    def add(self, step: int, energy: float, fmax: float, positions, cell, *, final: bool = False) -> None:
        """Add the frame of ``step`` (see :meth:`Thinned.append` for ``final``)."""
        cell = np.asarray(cell, dtype=float)
        self.append((int(step), float(energy), float(fmax), float(abs(np.linalg.det(cell))),
                     np.round(np.asarray(positions, dtype=float), 4).tolist(), cell.tolist()), final=final)


__all__ = ["Frames", "Thinned"]
