"""A fine-tuning spec (YAML), as ``matfunnel train SPEC.yaml`` and :class:`FineTuneMaker` take it.

.. code-block:: yaml

    potential: chgnet-0.3.0        # the base (matfunnel.train.trainer.BASES)
    checkpoint: null               # or start from a fine-tuned checkpoint of it
    data:
      train: [dft/train.extxyz, ../shared/data/phonons/pbe-reference]   # files and folders (load_frames)
      val: []                      # validation files; or, with none,
      val_fraction: 0.2            # hold out this fraction of the training materials
      split_by: material           # material (info.material_id, else the file) or frame
      require: [forces]            # labels every frame must have
      max_per_group: null          # at most this many frames per material (seeded pick), e.g. of a phonopy set
    settings:                      # TrainConfig: epochs, batch_size, optimizer, lr, energy, weights, ...
      epochs: 5
    out: runs/ft                   # the run folder (the CLI's --out wins)

Paths are relative to the spec's folder. Every problem is listed at once, each with its key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matfunnel.common.yaml_safe import load_yaml_file
from matfunnel.train.config import LossWeights, TrainConfig
from matfunnel.train.data import LABELS
from matfunnel.train.frames import Frame
from matfunnel.train.trainer import BASES

SPLITS: tuple[str, ...] = ("material", "frame")


class TrainSpecError(ValueError):
    """A fine-tuning spec cannot be used (one message lists every problem with its key)."""


@dataclass
class DataSpec:
    """Where the frames come from and how the validation set is made."""

    train: list[str]
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    split_by: str = "material"
    require: list[str] = field(default_factory=lambda: ["forces"])
    max_per_group: int | None = None


@dataclass
class TrainSpec:
    """A checked fine-tuning spec."""

    data: DataSpec
    settings: TrainConfig = field(default_factory=TrainConfig)
    potential: str = "chgnet-0.3.0"
    checkpoint: str | None = None
    out: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)


def _paths(value: Any, key: str, base: Path, problems: list[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{key}: must be a path or a list of paths")
        return []
    return [str(base / v) if not Path(v).is_absolute() else v for v in value]


def parse_spec(data: Any, base_dir: str | Path = ".", what: str = "fine-tuning spec") -> TrainSpec:
    """Check plain spec data and build the :class:`TrainSpec` (paths resolved against ``base_dir``)."""
    base = Path(base_dir)
    if not isinstance(data, dict):
        raise TrainSpecError(f"{what}: must be a mapping with data: and settings:")
    problems: list[str] = []
    unknown = sorted(set(data) - {"potential", "checkpoint", "data", "settings", "out"})
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(str, unknown))}")
    potential = data.get("potential", "chgnet-0.3.0")
    if potential not in BASES:
        problems.append(f"potential: fine-tuning starts from one of {', '.join(BASES)}, not {potential!r}")
    checkpoint = data.get("checkpoint")
    if checkpoint is not None:
        if not isinstance(checkpoint, str):
            problems.append("checkpoint: must be a path")
        else:
            checkpoint = str(base / checkpoint)
    ds = _parse_data(data.get("data"), base, problems)
    config = _parse_settings(data.get("settings") or {}, problems)
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        problems.append("out: must be a path")
    if problems:
        raise TrainSpecError(f"{what}: " + "; ".join(problems))
    return TrainSpec(data=ds, settings=config, potential=potential, checkpoint=checkpoint,
                     out=None if out is None else str(base / out))


def _parse_data(raw: Any, base: Path, problems: list[str]) -> DataSpec:
    ds = DataSpec(train=[])
    if not isinstance(raw, dict):
        problems.append("data: a mapping with train: (paths) is required")
        return ds
    extra = sorted(set(raw) - {f.name for f in dataclasses.fields(DataSpec)})
    if extra:
        problems.append(f"data: unknown key(s) {', '.join(map(str, extra))}")
    ds.train = _paths(raw.get("train"), "data.train", base, problems)
    ds.val = _paths(raw.get("val", []), "data.val", base, problems)
    frac = raw.get("val_fraction", 0.0)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1:
        problems.append(f"data.val_fraction: must be a number in [0, 1), got {frac!r}")
    else:
        ds.val_fraction = float(frac)
    ds.split_by = raw.get("split_by", "material")
    if ds.split_by not in SPLITS:
        problems.append(f"data.split_by: must be one of {', '.join(SPLITS)}")
    cap = raw.get("max_per_group")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        problems.append(f"data.max_per_group: must be a positive integer or null, got {cap!r}")
    else:
        ds.max_per_group = cap
    req = raw.get("require", ["forces"])
    if not isinstance(req, list) or any(r not in LABELS for r in req):
        problems.append(f"data.require: a list of labels from {', '.join(LABELS)}")
    else:
        ds.require = list(req)
    return ds


def _parse_settings(settings: Any, problems: list[str]) -> TrainConfig:
    if not isinstance(settings, dict):
        problems.append("settings: must be a mapping")
        return TrainConfig()
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    extra = sorted(set(settings) - known)
    if extra:
        problems.append(f"settings: unknown key(s) {', '.join(map(str, extra))} "
                        f"(known: {', '.join(sorted(known))})")
        return TrainConfig()
    try:
        kw = dict(settings)
        if isinstance(kw.get("weights"), dict):
            kw["weights"] = LossWeights(**kw["weights"])
        return TrainConfig(**kw)
    except (TypeError, ValueError) as exc:
        problems.append(f"settings: {exc}")
        return TrainConfig()


def load_spec(path: str | Path) -> TrainSpec:
    """Read and check a fine-tuning spec file."""
    data = load_yaml_file(path, "fine-tuning spec")
    return parse_spec(data, Path(path).resolve().parent, f"fine-tuning spec {str(path)!r}")


def group_of(frame: Frame, split_by: str) -> str:
    """The unit a validation split keeps together: the material (or its file), or the frame itself."""
    if split_by == "frame":
        return frame.source
    material = frame.info.get("material_id")
    return str(material) if material else frame.source.split("#")[0]


def cap_groups(frames: Sequence[Frame], cap: int | None, split_by: str = "material",
               seed: int = 0) -> list[Frame]:
    """At most ``cap`` frames of each group (a seeded pick, in the frames' order); all with ``cap`` None."""
    if cap is None:
        return list(frames)
    by_group: dict[str, list[int]] = {}
    for i, f in enumerate(frames):
        by_group.setdefault(group_of(f, split_by), []).append(i)
    rng = np.random.default_rng(seed)
    keep = {int(i) for idx in by_group.values() for i in (idx if len(idx) <= cap else rng.choice(idx, cap, False))}
    return [f for i, f in enumerate(frames) if i in keep]


def split_frames(frames: Sequence[Frame], fraction: float, split_by: str = "material",
                 seed: int = 0) -> tuple[list[Frame], list[Frame]]:
    """Hold out about ``fraction`` of the groups (seeded; a group is never split)."""
    if fraction <= 0:
        return list(frames), []
    groups = sorted({group_of(f, split_by) for f in frames})
    n_val = max(1, round(fraction * len(groups))) if len(groups) > 1 else 0
    chosen = set(np.random.default_rng(seed).permutation(groups)[:n_val].tolist())
    return ([f for f in frames if group_of(f, split_by) not in chosen],
            [f for f in frames if group_of(f, split_by) in chosen])
