"""Fine-tune our CHGNet on energies, forces, stresses and magnetic moments (:func:`fine_tune`).

Forces and stresses in the loss need the derivative of a derivative (the model's forces are gradients of its
energy), so training runs the model in its plain-autograd mode (:func:`matfunnel.potential.chgnet.mode`), where
every op has a differentiable backward; validation runs the fast inference path.

A run lives in one folder:

``state.pt``
    the model, the optimizer and the logs after the last finished epoch: a rerun with the same data and
    settings resumes after it (nothing finished is recomputed), a rerun with other data or settings is refused;
``checkpoint.pt``
    the best model so far by validation loss (the last one without validation frames), a matfunnel CHGNet
    checkpoint with its training set's hash and metrics (:func:`matfunnel.potential.chgnet.weights.save_native`),
    loadable everywhere as ``load_potential("chgnet-0.3.0", checkpoint=...)``;
``log.csv``, ``steps.csv``, ``curves.png``
    the loss log per epoch (epoch 0: before training) and per step, and its curves;
``result.json``
    written last: a finished run is returned from it as it is.

Data-parallel training: start the processes with ``torchrun`` (or any launcher that initialises
``torch.distributed``); each takes a size-balanced shard of every global batch (:mod:`matfunnel.train.batches`),
the gradients are summed over the processes, and the loss curve equals one process's to round-off.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matfunnel.train import models
from matfunnel.train.batches import FrameTensors, epoch_batches, shard, to_tensors
from matfunnel.train.config import TrainConfig
from matfunnel.train.data import dataset_hash
from matfunnel.train.frames import Frame
from matfunnel.train.log import Progress, write_logs
from matfunnel.train.loss import TERMS, label_counts, shard_loss
from matfunnel.train.optim import make_optimizer
from matfunnel.train.references import refit_references

BASES: tuple[str, ...] = models.bases()
"""The potentials :func:`fine_tune` starts from (:mod:`matfunnel.train.models`)."""

#: MAE units in the logs: energy per atom and forces in milli-units
_MAE_SCALE = {"energy": 1000.0, "forces": 1000.0, "stress": 1.0, "magmoms": 1.0}


class FineTuneError(RuntimeError):
    """A fine-tuning run cannot start or go on (the message names the folder and the problem)."""


@dataclass
class FineTuneResult:
    """What a fine-tuning run produced.

    Attributes
    ----------
    folder
        The run folder.
    checkpoint
        The fine-tuned checkpoint (best by validation loss).
    dataset_hash
        :func:`matfunnel.train.data.dataset_hash` of the training frames.
    metrics
        ``{"before": ..., "after": ...}``: validation MAEs (energy meV/atom, forces meV/Å, stress GPa,
        magmoms μB) and loss before training and of the checkpoint; ``"epoch"``: the checkpoint's epoch.
    references
        The change of each element's reference energy by the refit (eV/atom; empty unless ``energy: refit``).
    epochs
        The per-epoch log rows.
    """

    folder: Path
    checkpoint: Path
    dataset_hash: str
    metrics: dict[str, Any]
    references: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return {"folder": str(self.folder), "checkpoint": str(self.checkpoint), "dataset_hash": self.dataset_hash,
                "metrics": self.metrics, "references": self.references, "epochs": self.epochs}


# ------------------------------------------------------------------------------------------ processes
def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(t: Tensor) -> Tensor:
    """``t`` summed over the processes (in place; unchanged with one process)."""
    import torch.distributed as dist

    if _world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _barrier() -> None:
    import torch.distributed as dist

    if _world()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the run folder (rank 0 only): two runs never write one folder."""
    if _world()[0] != 0:
        yield
        return
    with open(folder / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise FineTuneError(f"{folder}: another process is fine-tuning in this folder") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------ model passes
def _trainable(model: models.Trainable, freeze: Sequence[str]) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if not any(n.startswith(f) for f in freeze)]


def _forward(model: models.Trainable, members: Sequence[FrameTensors], *, terms: Sequence[str],
             create_graph: bool, baseline: bool = False) -> dict[str, Tensor]:
    """The model's outputs for ``members`` (one graph), differentiable with ``create_graph``.

    With ``baseline``, the members that have a baseline cell get their forces minus the model's forces on it
    (both cells in the same graph batch).
    """
    cells = [(t.frac, t.lattice, t.numbers) for t in members]
    extra = [t.baseline for t in members if baseline and t.baseline is not None] if "forces" in terms else []
    cells += [c for c in extra if c is not None]
    out = models.forward(model, cells, forces="forces" in terms, stress="stress" in terms, create_graph=create_graph)
    if not extra:
        return out
    n_members, n_atoms = len(members), sum(t.n_atoms for t in members)
    forces, offset, base = out["forces"][:n_atoms], 0, n_atoms
    pieces = []
    for t in members:
        own = forces[offset:offset + t.n_atoms]
        if t.baseline is not None:
            own = own - out["forces"][base:base + t.n_atoms]
            base += t.n_atoms
        pieces.append(own)
        offset += t.n_atoms
    trimmed = {k: v[:n_members] for k, v in out.items() if k in ("energy", "stress")}
    return {**trimmed, "forces": torch.cat(pieces), "magmoms": out["magmoms"][:n_atoms]}


def _evaluate(model: models.Trainable, tensors: Sequence[FrameTensors], config: TrainConfig) -> dict[str, float]:
    """Validation loss and MAEs of ``tensors`` (fast inference path; sharded over the processes)."""
    rank, world = _world()
    for p in model.parameters():
        p.requires_grad_(False)
    counts = label_counts(tensors)
    mine = list(range(rank, len(tensors), world))
    acc = torch.zeros(1 + 2 * len(TERMS), dtype=torch.float64)
    for lo in range(0, len(mine), config.batch_size):
        members = [tensors[i] for i in mine[lo:lo + config.batch_size]]
        out = _forward(model, members, terms=("energy", "forces", "stress", "magmoms"), create_graph=False,
                       baseline=config.force_baseline)
        loss, sums = shard_loss(members, out, counts, config)
        _accumulate(acc, float(loss), sums)
    _all_sum(acc)
    return _mae_row(acc, float(acc[0]))


def _energies(model: models.Trainable, tensors: Sequence[FrameTensors], batch_size: int) -> list[float]:
    """The model's total energies of ``tensors`` (sharded over the processes, summed back)."""
    rank, world = _world()
    for p in model.parameters():
        p.requires_grad_(False)
    energies = torch.zeros(len(tensors), dtype=torch.float64)
    mine = list(range(rank, len(tensors), world))
    for lo in range(0, len(mine), batch_size):
        idx = mine[lo:lo + batch_size]
        out = _forward(model, [tensors[i] for i in idx], terms=(), create_graph=False)
        energies[idx] = out["energy"].detach().to("cpu", torch.float64)
    return _all_sum(energies).tolist()


# ------------------------------------------------------------------------------------------------ the run
def run_key(train_hash: str, val_hash: str, config: TrainConfig, base: str, checkpoint: str | None) -> str:
    """The content address of a run: its data, settings and starting model (a sha256, hex)."""
    start = None
    if checkpoint is not None:
        from matfunnel.potential.provenance import file_sha256

        start = file_sha256(checkpoint)
    blob = json.dumps({"train": train_hash, "val": val_hash, "config": config.as_dict(), "base": base,
                       "start": start, "format": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    tmp.replace(path)


def _row(epoch: int, steps: int, seconds: float, lr: float, train: dict[str, float] | None,
         val: dict[str, float] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, "steps": steps, "seconds": round(seconds, 3), "lr": lr}
    for split, values in (("train", train), ("val", val)):
        for key, value in (values or {}).items():
            row[f"{split}_{key}"] = None if value is None or math.isnan(value) else value
    return row


def fine_tune(train: Sequence[Frame], val: Sequence[Frame], config: TrainConfig, folder: str | Path, *,
              base: str = "chgnet-0.3.0", checkpoint: str | None = None, progress: bool = True) -> FineTuneResult:
    """Fine-tune ``base`` (or the checkpoint ``checkpoint`` of it) on ``train``, validating on ``val``.

    Parameters
    ----------
    train, val
        Training and validation frames (``val`` may be empty: the last model is kept).
    config
        The settings (:class:`TrainConfig`).
    folder
        The run folder (created; see the module docstring for what it holds).
    base
        The potential's name (:data:`BASES`).
    checkpoint
        Start from this checkpoint of ``base`` instead of its published weights.
    progress
        Show a progress line on stderr (rank 0).

    Returns
    -------
    FineTuneResult
        The checkpoint, the dataset hash, and the metrics before and after.

    Raises
    ------
    FineTuneError
        An unknown base, no training frames, a folder that holds another run, or a folder in use.
    """
    if base not in BASES:
        raise FineTuneError(f"fine-tuning starts from one of {', '.join(BASES)}, not {base!r}")
    if not train:
        raise FineTuneError(f"{folder}: no training frames")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_hash, val_hash = dataset_hash(train), dataset_hash(val)
    key = run_key(train_hash, val_hash, config, base, checkpoint)
    rank, _ = _world()
    done = folder / "result.json"
    if done.is_file():
        stored = json.loads(done.read_text())
        if stored.get("key") == key:
            return _result_from(stored)
        raise FineTuneError(f"{folder} holds a finished fine-tuning run with other data or settings; "
                            f"use another folder")
    with _folder_lock(folder):
        result = _run(train, val, config, folder, key, base, checkpoint, train_hash, progress and rank == 0)
    _barrier()
    return result


def _result_from(stored: dict[str, Any]) -> FineTuneResult:
    return FineTuneResult(folder=Path(stored["folder"]), checkpoint=Path(stored["checkpoint"]),
                          dataset_hash=stored["dataset_hash"], metrics=stored["metrics"],
                          references=stored.get("references", {}), epochs=stored.get("epochs", []))


def _accumulate(acc: Tensor, loss: float, sums: dict[str, float]) -> None:
    """Add a loss and a shard's per-term error sums and counts to ``acc`` (the layout :func:`_mae_row` reads)."""
    acc[0] += loss
    for k, term in enumerate(TERMS):
        acc[1 + 2 * k] += sums.get(term, 0.0)
        acc[2 + 2 * k] += sums.get(term + "_n", 0.0)


def _mae_row(acc: Tensor, loss: float) -> dict[str, float]:
    """Loss and per-term MAEs from an accumulator ``[loss, (abs error sum, count) per term]``."""
    row = {"loss": loss}
    for k, term in enumerate(TERMS):
        n = float(acc[2 + 2 * k])
        row[f"{term}_mae"] = float(acc[1 + 2 * k]) / n * _MAE_SCALE[term] if n else math.nan
    return row


class _Run:
    """One fine-tuning run in its folder: the model, the optimizer, the frames and the state saved per epoch."""

    def __init__(self, train: Sequence[Frame], val: Sequence[Frame], config: TrainConfig, folder: Path, key: str,
                 base: str, checkpoint: str | None, train_hash: str):
        self.config, self.folder, self.key, self.base, self.checkpoint = config, folder, key, base, checkpoint
        self.train_hash, self.val = train_hash, val
        self.rank, self.world = _world()
        dtype = {"float32": torch.float32, "float64": torch.float64}[config.dtype]
        self.model = models.load(base, checkpoint).to(device=config.device, dtype=dtype)
        self.frames = train
        self.tensors = [to_tensors(f) for f in train]
        self.val_tensors = [to_tensors(f) for f in val]
        self.named = _trainable(self.model, config.freeze)
        self.optimizer = make_optimizer(config.optimizer, [p for _, p in self.named], lr=config.lr,
                                        **config.optimizer_kwargs)
        self.costs = [float(t.n_atoms) for t in self.tensors]
        self.state = self._load_or_start()

    def _load_or_start(self) -> dict[str, Any]:
        """The saved state (model and optimizer restored), or the state before training (after a refit)."""
        path = self.folder / "state.pt"
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=False)
            if state.get("key") != self.key:
                raise FineTuneError(f"{self.folder} holds a fine-tuning run with other data or settings; "
                                    f"use another folder")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optim"])
            return state
        config, references = self.config, {}
        if config.energy == "refit":
            with_e = [i for i, t in enumerate(self.tensors) if t.energy is not None]
            predicted = _energies(self.model, [self.tensors[i] for i in with_e], config.batch_size)
            references = refit_references(self.model, [self.frames[i] for i in with_e], predicted)
        before = _evaluate(self.model, self.val_tensors, config) if self.val_tensors else None
        train0 = _evaluate(self.model, self.tensors, config)
        return {"key": self.key, "epoch": 0, "references": references, "before": before,
                "epochs": [_row(0, 0, 0.0, config.lr, train0, before)], "steps": [], "best": None}

    def batches(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch``."""
        return epoch_batches(len(self.tensors), self.config.batch_size, self.config.seed, epoch)

    def epoch(self, epoch: int, bar: Progress) -> None:
        """Train one epoch, validate, and save the state (and the checkpoint when it improved)."""
        config, state = self.config, self.state
        t0 = time.perf_counter()
        acc = torch.zeros(1 + 2 * len(TERMS), dtype=torch.float64)
        batches = self.batches(epoch)
        for batch in batches:
            counts = label_counts([self.tensors[i] for i in batch])
            members = [self.tensors[i] for i in shard(batch, self.costs, self.world)[self.rank]]
            loss_value, sums = _step(self.model, self.named, self.optimizer, members, counts, config,
                                     config.terms())
            state["steps"].append({"epoch": epoch, "step": len(state["steps"]) + 1, "loss": loss_value,
                                   "seconds": round(time.perf_counter() - t0, 3)})
            _accumulate(acc, loss_value, sums)
            bar.update(f"epoch {epoch}/{config.epochs} loss {loss_value:.4g}")
        _all_sum(acc[1:])
        train_row = _mae_row(acc, float(acc[0]) / len(batches))
        val_row = _evaluate(self.model, self.val_tensors, config) if self.val_tensors else None
        state["epochs"].append(_row(epoch, len(batches), time.perf_counter() - t0, config.lr, train_row, val_row))
        score = (val_row or train_row)["loss"]
        improved = state["best"] is None or score < state["best"]["loss"] or not self.val_tensors
        if improved:
            state["best"] = {"loss": score, "epoch": epoch, "val": val_row}
        state["epoch"] = epoch
        if self.rank == 0:
            if improved:
                models.save(self.model, self.folder / "checkpoint.pt",
                            _meta(state, config, self.base, self.checkpoint, self.train_hash, self.val))
            state["model"] = self.model.state_dict()
            state["optim"] = self.optimizer.state_dict()
            _save_state(self.folder / "state.pt", state)
            write_logs(self.folder, state["epochs"], state["steps"])
        _barrier()

    def finish(self) -> FineTuneResult:
        """The result, also written to ``result.json`` (rank 0)."""
        state, folder = self.state, self.folder
        if state["best"] is None:
            raise FineTuneError(f"{folder}: no epoch was run and no checkpoint is stored")
        result = FineTuneResult(folder=folder, checkpoint=folder / "checkpoint.pt", dataset_hash=self.train_hash,
                                metrics=_metrics(state), references=state["references"], epochs=state["epochs"])
        if self.rank == 0:
            write_logs(folder, state["epochs"], state["steps"])
            tmp = folder / "result.json.part"
            tmp.write_text(json.dumps({"key": self.key, **result.as_dict()}, indent=1, default=_json_default))
            tmp.replace(folder / "result.json")
        return result


def _run(train: Sequence[Frame], val: Sequence[Frame], config: TrainConfig, folder: Path, key: str, base: str,
         checkpoint: str | None, train_hash: str, progress: bool) -> FineTuneResult:
    run = _Run(train, val, config, folder, key, base, checkpoint, train_hash)
    todo = range(run.state["epoch"] + 1, config.epochs + 1)
    bar = Progress(sum(len(run.batches(e)) for e in todo), enabled=progress)
    for epoch in todo:
        run.epoch(epoch, bar)
    bar.close()
    return run.finish()


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _metrics(state: dict[str, Any]) -> dict[str, Any]:
    best = state["best"]
    return {"before": state["before"], "after": best["val"], "epoch": best["epoch"], "best_loss": best["loss"]}


def _meta(state: dict[str, Any], config: TrainConfig, base: str, checkpoint: str | None, train_hash: str,
          val: Sequence[Frame]) -> dict[str, Any]:
    return {"base": base, "start_checkpoint": checkpoint, "dataset_hash": train_hash,
            "val_dataset_hash": dataset_hash(val), "config": config.as_dict(), "references": state["references"],
            "metrics": _metrics(state), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _step(model: models.Trainable, named: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer,
          members: Sequence[FrameTensors], counts: dict[str, int], config: TrainConfig,
          terms: Sequence[str]) -> tuple[float, dict[str, float]]:
    """One optimizer step on this process's shard; returns the global batch's loss and this shard's error sums."""
    params = [p for _, p in named]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    sums: dict[str, float] = {}
    loss_t = torch.zeros((), dtype=torch.float64)
    if members:
        out = _forward(model, members, terms=terms, create_graph=True, baseline=config.force_baseline)
        loss, sums = shard_loss(members, out, counts, config)
        loss.backward()
        loss_t = loss.detach().cpu()
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if _world()[1] > 1:
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss_t.reshape(1).to(grads[0])])
        _all_sum(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        loss_t = flat[-1].to(torch.float64)
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    return float(loss_t), sums
