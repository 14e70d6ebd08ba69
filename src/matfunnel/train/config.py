"""The settings of a fine-tuning run (:class:`TrainConfig`), in one place with their defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from matfunnel.train.optim import OPTIMIZER_NAMES
from matfunnel.train.references import ENERGY_MODES

LOSSES: tuple[str, ...] = ("mse", "huber")
"""The loss functions of each term."""


@dataclass
class LossWeights:
    """Weights of the loss terms: energy per atom (eV), forces (eV/Å), stress (GPa), magnetic moments (μB).

    The defaults are chgnet's own ``Trainer`` defaults (1, 1, 0.1, 0.1), so the two train the same loss.
    """

    energy: float = 1.0
    forces: float = 1.0
    stress: float = 0.1
    magmoms: float = 0.1


@dataclass
class TrainConfig:
    """How to fine-tune a potential.

    Attributes
    ----------
    epochs
        Passes over the training frames.
    batch_size
        Structures per optimizer step (the global batch: split over processes when data-parallel).
    optimizer
        ``"adam"``, ``"adamw"``, ``"lamb"`` or ``"alto"`` (:func:`matfunnel.train.optim.make_optimizer`).
    lr
        Learning rate.
    optimizer_kwargs
        Further keyword arguments of the optimizer (``betas``, ``weight_decay``, ALTO's ``alpha``, ...).
    weights
        Loss weights (:class:`LossWeights`).
    loss
        ``"mse"`` (chgnet's default) or ``"huber"`` (with ``huber_delta``).
    energy
        ``"refit"``, ``"as_is"`` or ``"forces_only"`` (:mod:`matfunnel.train.references`).
    seed
        Seed of the shuffling (the same seed gives the same batches in every process).
    dtype
        ``"float32"`` or ``"float64"``: the precision the model trains in.
    device
        ``"cpu"``, ``"cuda"``, ...
    max_grad_norm
        Clip the global gradient norm to this (None: no clipping).
    freeze
        Parameter name prefixes that are not trained (e.g. ``["atom_embedding"]``).
    force_baseline
        For frames with a baseline (phonopy displacements), fit the model's force *differences* to the undisplaced
        cell (see :class:`~matfunnel.train.frames.Frame`); costs one more cell per displaced one.
    """

    epochs: int = 5
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 1e-4
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: LossWeights = field(default_factory=LossWeights)
    loss: str = "mse"
    huber_delta: float = 0.1
    energy: str = "refit"
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    max_grad_norm: float | None = None
    freeze: list[str] = field(default_factory=list)
    force_baseline: bool = False

    def __post_init__(self) -> None:
        """Check every value; one :class:`ValueError` lists all problems."""
        if isinstance(self.weights, dict):
            self.weights = LossWeights(**self.weights)
        problems = []
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZER_NAMES:
            problems.append(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZER_NAMES)}")
        if self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.energy not in ENERGY_MODES:
            problems.append(f"energy {self.energy!r} is not one of {', '.join(ENERGY_MODES)}")
        if self.dtype not in ("float32", "float64"):
            problems.append(f"dtype {self.dtype!r} is not float32 or float64")
        for key, w in dataclasses.asdict(self.weights).items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
                problems.append(f"weights.{key} must be a number >= 0, got {w!r}")
        if not isinstance(self.force_baseline, bool):
            problems.append(f"force_baseline must be true or false, got {self.force_baseline!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if not self.huber_delta > 0:
            problems.append(f"huber_delta must be > 0, got {self.huber_delta!r}")
        if problems:
            raise ValueError("fine-tuning settings: " + "; ".join(problems))

    def terms(self) -> tuple[str, ...]:
        """The labels that enter the loss (a zero weight, or ``energy: forces_only``, drops a term)."""
        w = dataclasses.asdict(self.weights)
        if self.energy == "forces_only":
            w["energy"] = 0.0
        return tuple(k for k in ("energy", "forces", "stress", "magmoms") if w[k] > 0)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (hashed into a run's key and stored with its checkpoint)."""
        return dataclasses.asdict(self)
