"""Fine-tuning as a jobflow job (:class:`FineTuneMaker`), content-addressed: the same inputs are never trained twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Maker, job

from matfunnel.common.documents import FineTuneDoc
from matfunnel.train.config import TrainConfig
from matfunnel.train.data import dataset_hash, frame_from_doc, frame_problem, load_frames
from matfunnel.train.frames import Frame, TrainingDataError
from matfunnel.train.spec import split_frames
from matfunnel.train.trainer import fine_tune, run_key


def frames_from(items: list[Any], require: list[str], what: str) -> tuple[list[Frame], list[TrainingDataError]]:
    """Frames from paths (files and folders, :func:`~matfunnel.train.data.load_frames`) and frame documents.

    A frame document is a mapping as :func:`~matfunnel.train.data.write_json` writes it (``structure``,
    ``energy``, ``forces``, ...); bad ones are left out with their error, as bad frames in files are.
    """
    frames: list[Frame] = []
    errors: list[TrainingDataError] = []
    paths = [p for p in items if isinstance(p, (str, Path))]
    docs = [d for d in items if not isinstance(d, (str, Path))]
    if paths:
        try:
            got, errs = load_frames(paths, require=require)
        except TrainingDataError as exc:
            got, errs = [], [exc]
        frames += got
        errors += errs
    for i, doc in enumerate(docs):
        source = f"{what}#{i}"
        try:
            frame = frame_from_doc(doc, source)
        except ValueError as exc:
            errors.append(TrainingDataError(source, str(exc)))
            continue
        problem = frame_problem(frame, require)
        if problem:
            errors.append(TrainingDataError(source, problem))
        else:
            frames.append(frame)
    return frames, errors


@dataclass
class FineTuneMaker(Maker):
    """Fine-tune a potential on labelled frames; the job returns a :class:`~matfunnel.common.documents.FineTuneDoc`.

    The run folder is ``root/<key>``, where the key is the content address of the data, the settings and the
    starting model: a rerun of the same inputs (after a crash, or in a later round) resumes or returns the
    finished run, and never trains it again.

    Parameters
    ----------
    name
        The job's name.
    base
        The potential fine-tuned (:data:`matfunnel.train.trainer.BASES`).
    settings
        :class:`~matfunnel.train.config.TrainConfig` keyword arguments.
    val_fraction
        Fraction of the training groups held out when no validation frames are given.
    split_by
        ``"material"`` or ``"frame"`` (:func:`~matfunnel.train.spec.split_frames`).
    require
        Labels every frame must have.
    root
        The folder holding the runs (relative paths resolve against the job's working directory).
    """

    name: str = "fine-tune"
    base: str = "chgnet-0.3.0"
    settings: dict = field(default_factory=dict)
    val_fraction: float = 0.2
    split_by: str = "material"
    require: list[str] = field(default_factory=lambda: ["forces"])
    root: str = "fine-tune"

    @job
    def make(self, train: list, val: list | None = None, checkpoint: str | None = None) -> FineTuneDoc:
        """Fine-tune on ``train`` (paths and/or frame documents), validating on ``val`` (or a held-out part)."""
        return self.run(train, val, checkpoint)

    def run(self, train: list, val: list | None = None, checkpoint: str | None = None) -> FineTuneDoc:
        """The job's body, callable without jobflow."""
        config = TrainConfig(**self.settings)
        frames, errors = frames_from(list(train), self.require, "train")
        val_frames: list[Frame] = []
        if val:
            val_frames, val_errors = frames_from(list(val), self.require, "val")
            errors += val_errors
        else:
            frames, val_frames = split_frames(frames, self.val_fraction, self.split_by, config.seed)
        if not frames:
            shown = "; ".join(str(e) for e in errors[:5])
            raise TrainingDataError("fine-tuning job", f"no usable training frame: {shown or 'none given'}")
        key = run_key(dataset_hash(frames), dataset_hash(val_frames), config, self.base, checkpoint)
        folder = Path(self.root) / key[:24]
        result = fine_tune(frames, val_frames, config, folder, base=self.base, checkpoint=checkpoint,
                           progress=False)
        return FineTuneDoc(base=self.base, checkpoint=str(result.checkpoint.resolve()),
                           folder=str(folder.resolve()), key=key, dataset_hash=result.dataset_hash,
                           n_train=len(frames), n_val=len(val_frames), metrics=result.metrics,
                           references=result.references, data_errors=[str(e) for e in errors])
