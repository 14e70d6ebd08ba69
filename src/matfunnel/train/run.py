"""Run a fine-tuning spec: read the frames, split them, fine-tune (one process or, under ``torchrun``, several)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from matfunnel.train.data import load_frames
from matfunnel.train.frames import TrainingDataError
from matfunnel.train.spec import TrainSpec, cap_groups, split_frames
from matfunnel.train.trainer import FineTuneResult, fine_tune

log = logging.getLogger(__name__)


def init_distributed() -> int:
    """Join the process group when a launcher (``torchrun``) started this process as one of several.

    Returns this process's rank (0 for a single process). The CPU uses the ``gloo`` backend, CUDA ``nccl``.
    """
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank() if dist.is_initialized() else 0


def load_split(spec: TrainSpec) -> tuple[list, list, list[TrainingDataError]]:
    """The training and validation frames of ``spec``, and the errors of the frames left out."""
    data, seed = spec.data, spec.settings.seed
    train, errors = load_frames(data.train, require=data.require)
    val: list = []
    if data.val:
        val, val_errors = load_frames(data.val, require=data.require)
        errors += val_errors
    elif data.val_fraction > 0:
        train, val = split_frames(train, data.val_fraction, data.split_by, seed)
    return (cap_groups(train, data.max_per_group, data.split_by, seed),
            cap_groups(val, data.max_per_group, data.split_by, seed), errors)


def run_training(spec: TrainSpec, out: str | Path | None = None, *, progress: bool = True) -> FineTuneResult:
    """Fine-tune as ``spec`` says, into ``out`` (default: the spec's ``out``, else ``runs/fine-tune``)."""
    folder = Path(out or spec.out or "runs/fine-tune")
    train, val, errors = load_split(spec)
    for err in errors[:20]:
        log.warning("training data left out: %s", err)
    if len(errors) > 20:
        log.warning("... and %d more frames left out", len(errors) - 20)
    return fine_tune(train, val, spec.settings, folder, base=spec.potential, checkpoint=spec.checkpoint,
                     progress=progress)
