"""Speed and peak memory of one fine-tuning step: matfunnel.train's CHGNet against chgnet's own ``Trainer``.

Both sides train CHGNet 0.3.0 in float32 on the CPU on the same labelled batch with the same loss (MSE, weights
1 / 1 / 0.1 / 0.1 on energy per atom eV, forces eV/A, stress GPa, magmoms muB) and the same optimizer (Adam,
lr 1e-4), in one process, alternately (theirs, ours, theirs, ours, ...; best of ``--repeats`` and the median of
the adjacent-pair ratios, which is fairer on a machine shared with other jobs):

ours
    ``matfunnel.train.trainer._step`` (the step :func:`matfunnel.train.fine_tune` takes): the graph is built
    inside ``_forward`` (timed separately by wrapping ``build_graph``), forward with ``create_graph=True`` in
    plain-autograd mode, :func:`matfunnel.train.loss.shard_loss`, backward, ``optimizer.step()``.
    ``atom_ref`` (the per-element reference energies) is frozen, as chgnet's ``Trainer`` freezes its
    composition model by default.
theirs
    ``chgnet.trainer.Trainer(targets="efsm", optimizer="Adam", criterion="MSE", ...)._train`` on a one-batch
    loader: their loop as it is (forward with ``task="efsm"``, their ``CombinedLoss``, ``zero_grad``, backward,
    ``optimizer.step()``, the scheduler's step); the graphs come from their ``StructureData`` (graph built in
    ``__getitem__``; a fresh dataset each time, it caches) and ``collate_graphs``, timed separately.

Data (``--sizes``): ``small``: seeded rattled, sheared supercells of 8-64 atoms (pymatgen), all four labels
from our float64 model plus seeded noise; ``phonon``: displaced supercells of the shared VASP phonon references
(``--refs``, their DFT forces), energies, stress and magmoms from our float64 model plus seeded noise. The noise
(0.02 eV/atom, 0.3 GPa, 0.05 muB, and 0.05 eV/A on the small cells' forces) keeps every loss term well above
float32 round-off, so that the loss agreement checks all four terms, not just the forces.

Correctness: the losses of the two sides on the first batch (before any step) are printed with their relative
difference (1e-4 is the check), the loss of the float64 model (numpy, from our float64 predictions, which equal
chgnet's float64 model to ~1e-8) with each side's distance to it, and the per-term mean absolute errors. Where the
two differ by more than 1e-4, the float64 loss says whose float32 rounding it is: on small strained cells (stress
of ~20 GPa) chgnet's float32 stress is ~1e-3 GPa off its float64 value (ours ~4e-6), which moves its loss by a
few 1e-4 relative.

Peak memory: each side's step runs once more in a fresh child process (``--one ours|theirs
--measure-memory``): the peak resident memory of the step minus the resident memory just before it (model
loaded, batch prepared); the peak is reset before the step (``/proc/self/clear_refs``, VmHWM), or where that
is refused, ``ru_maxrss`` is read (an upper bound, marked ``<=``, when the step did not set the peak).

``--threads`` sets torch's threads for both sides (0: torch's default; the count is printed).

    .venv/bin/python benchmarks/train_throughput.py [--sizes small,phonon] [--batch-size 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
PHONON_REFS = ROOT.parent / "shared/data/phonons/pbe-reference"
#: the loss's settings, the same on both sides (chgnet's Trainer defaults, Adam at lr 1e-4)
LR = 1e-4
WEIGHTS = {"energy": 1.0, "forces": 1.0, "stress": 0.1, "magmoms": 0.1}
#: seeded noise added to the model-made labels (energy eV/atom, forces eV/A, stress GPa, magmoms muB)
NOISE = {"energy": 0.02, "forces": 0.05, "stress": 0.3, "magmoms": 0.05}
#: relative difference of the two sides' first losses that counts as agreement
LOSS_RTOL = 1e-4
#: chgnet's names of the terms (its CombinedLoss's "<key>_MAE")
CHGNET_KEY = {"energy": "e", "forces": "f", "stress": "s", "magmoms": "m"}


# ------------------------------------------------------------------------------------------------ data
def _small_structures(rng: np.random.Generator, count: int, lo: int, hi: int) -> list:
    """``count`` rattled, sheared supercells of ``lo``-``hi`` atoms.

    Parameters
    ----------
    rng
        The random generator (seeded).
    count
        How many structures.
    lo, hi
        The smallest and largest number of atoms aimed at.

    Returns
    -------
    list of Structure
        The structures (pymatgen).
    """
    from pymatgen.core import Structure

    from matfunnel.potential.synthetic import supercell

    out = []
    while len(out) < count:
        n = int(rng.integers(lo, hi + 1))
        s = supercell(rng, n, proto=str(rng.choice(["fcc", "rocksalt", "perovskite", "bcc"])),
                      bond=float(rng.uniform(2.4, 2.9)), cubic=False)
        if lo <= len(s) <= hi:
            cart = s.cart_coords + rng.normal(0.0, 0.08, (len(s), 3))
            out.append(Structure(s.lattice, s.species, cart, coords_are_cartesian=True))
    return out


def _phonon_frames(refs: list[str], count: int) -> list:
    """``count`` displaced supercells with DFT forces, taken in turn from the phonon references ``refs``.

    Parameters
    ----------
    refs
        Material ids of the folders under ``shared/data/phonons/pbe-reference``.
    count
        How many frames.

    Returns
    -------
    list of Frame
        The frames (forces only).
    """
    from matfunnel.train.data import load_frames

    per_ref = []
    for ref in refs:
        frames, _ = load_frames([PHONON_REFS / ref], require=["forces"])
        per_ref.append(frames)
    out = []
    k = 0
    while len(out) < count:
        frames = per_ref[k % len(per_ref)]
        i = k // len(per_ref)
        if i >= max(len(f) for f in per_ref):
            raise SystemExit(f"only {len(out)} phonon frames in {refs}, {count} asked for")
        if i < len(frames):
            out.append(frames[i])
        k += 1
    return out


def labelled_frames(size: str, args: argparse.Namespace) -> list:
    """The batch of size class ``size``: frames with all four labels (see the module docstring).

    Parameters
    ----------
    size
        ``"small"`` or ``"phonon"``.
    args
        The command line (``--batch-size``, ``--seed``, ``--small-atoms``, ``--refs``).

    Returns
    -------
    frames : list of Frame
        ``--batch-size`` frames with energy, forces, stress and magmoms.
    predictions : list of dict
        Our float64 model's results for them (before the noise).
    """
    from matfunnel.potential import load_potential
    from matfunnel.train.frames import Frame

    rng = np.random.default_rng([args.seed, 0 if size == "small" else 1])
    if size == "small":
        lo, hi = (int(x) for x in args.small_atoms.split(","))
        frames = [Frame(structure=s, source=f"small#{i}") for i, s in
                  enumerate(_small_structures(rng, args.batch_size, lo, hi))]
    elif size == "phonon":
        frames = _phonon_frames([r for r in args.refs.split(",") if r], args.batch_size)
    else:
        raise SystemExit(f"unknown size class {size!r} (small, phonon)")
    pot = load_potential("chgnet-0.3.0", dtype="float64", calibrate=False)
    preds = pot.predict([f.structure for f in frames])
    for f, p in zip(frames, preds, strict=True):
        n = len(f.structure)
        f.energy = float(p["energy"]) + n * float(rng.normal(0.0, NOISE["energy"]))
        if f.forces is None:
            f.forces = np.asarray(p["forces"]) + rng.normal(0.0, NOISE["forces"], (n, 3))
        noise = rng.normal(0.0, NOISE["stress"], (3, 3))
        f.stress = np.asarray(p["stress"]) + 0.5 * (noise + noise.T)
        f.magmoms = np.abs(np.asarray(p["magmoms"]) + rng.normal(0.0, NOISE["magmoms"], n))
    return frames, preds


def float64_loss(frames: list, preds: list[dict]) -> tuple[float, dict[str, float]]:
    """The loss and per-term MAEs of the float64 model's predictions ``preds`` (numpy; the yardstick).

    Parameters
    ----------
    frames
        The labelled batch.
    preds
        Our float64 model's results for the frames (equal to chgnet's float64 model to ~1e-8).

    Returns
    -------
    loss : float
        MSE per term (energy per atom over structures, forces and magmoms over components and atoms, stress
        over the 9 components of each structure), weighted by :data:`WEIGHTS`.
    maes : dict
        Mean absolute error of each term.
    """
    diffs = {
        "energy": np.array([(p["energy"] - f.energy) / len(f.structure) for f, p in zip(frames, preds, strict=True)]),
        "forces": np.concatenate([(np.asarray(p["forces"]) - f.forces).ravel() for f, p in zip(frames, preds,
                                                                                              strict=True)]),
        "stress": np.concatenate([(np.asarray(p["stress"]) - f.stress).ravel() for f, p in zip(frames, preds,
                                                                                              strict=True)]),
        "magmoms": np.concatenate([np.asarray(p["magmoms"]) - f.magmoms for f, p in zip(frames, preds,
                                                                                       strict=True)]),
    }
    loss = sum(WEIGHTS[k] * float(np.mean(d * d)) for k, d in diffs.items())
    return loss, {k: float(np.mean(np.abs(d))) for k, d in diffs.items()}
    return frames


# ----------------------------------------------------------------------------------------------- sides
class Ours:
    """matfunnel.train's step on a fixed batch.

    Parameters
    ----------
    frames
        The labelled batch.
    """

    name = "matfunnel.train (ours)"

    def __init__(self, frames: list):
        from matfunnel.potential.chgnet.weights import load_checkpoint
        from matfunnel.train import trainer
        from matfunnel.train.batches import to_tensors
        from matfunnel.train.config import LossWeights, TrainConfig
        from matfunnel.train.loss import label_counts
        from matfunnel.train.optim import make_optimizer

        self._trainer = trainer
        self.config = TrainConfig(batch_size=len(frames), optimizer="adam", lr=LR, weights=LossWeights(**WEIGHTS),
                                  loss="mse", energy="as_is", dtype="float32", device="cpu", freeze=["atom_ref"])
        self.model = load_checkpoint().to(dtype=torch.float32)
        self.named = trainer._trainable(self.model, self.config.freeze)
        self.optimizer = make_optimizer("adam", [p for _, p in self.named], lr=LR)
        self.members = [to_tensors(f) for f in frames]
        self.counts = label_counts(self.members)
        self.terms = self.config.terms()
        self.graph_s = 0.0
        import matfunnel.potential.chgnet.graph as graph_module

        # the trainer builds its graph through this module's function (train/models.py), looked up per call
        self._graph_module = graph_module
        self._build_graph = graph_module.build_graph

    def _timed_build(self, *args, **kwargs):
        t0 = time.perf_counter()
        g = self._build_graph(*args, **kwargs)
        self.graph_s = time.perf_counter() - t0
        return g

    def step(self) -> tuple[float, float, dict[str, float]]:
        """One optimizer step, graph included.

        Returns
        -------
        seconds : float
            Wall time of the whole step.
        loss : float
            The batch's loss before the step.
        maes : dict
            Mean absolute error of each term before the step.
        """
        with mock.patch.object(self._graph_module, "build_graph", self._timed_build):
            t0 = time.perf_counter()
            loss, sums = self._trainer._step(self.model, self.named, self.optimizer, self.members, self.counts,
                                             self.config, self.terms)
            dt = time.perf_counter() - t0
        maes = {k: sums[k] / sums[k + "_n"] for k in WEIGHTS if sums.get(k + "_n")}
        return dt, loss, maes


class Theirs:
    """chgnet's ``Trainer._train`` on a one-batch loader built with their ``StructureData``.

    Parameters
    ----------
    frames
        The labelled batch.
    """

    name = "chgnet Trainer (theirs)"

    def __init__(self, frames: list):
        from chgnet.model import CHGNet
        from chgnet.trainer import Trainer

        self.frames = frames
        with contextlib.redirect_stdout(io.StringIO()):
            self.model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
            self.trainer = Trainer(model=self.model, targets="efsm", optimizer="Adam", criterion="MSE",
                                   learning_rate=LR, energy_loss_ratio=WEIGHTS["energy"],
                                   force_loss_ratio=WEIGHTS["forces"], stress_loss_ratio=WEIGHTS["stress"],
                                   mag_loss_ratio=WEIGHTS["magmoms"], use_device="cpu")
        self.losses: list[dict] = []
        # their loop keeps the loss to itself: a hook reads it (as floats; holds no tensors)
        self.trainer.criterion.register_forward_hook(lambda _m, _i, out: self.losses.append(
            {k: float(v) for k, v in out.items() if k == "loss" or k.endswith("_MAE")}))
        self.graph_s = 0.0

    def batch(self):
        """Their dataset (a fresh one: it caches its graphs) and collate; the time goes to ``graph_s``.

        Returns
        -------
        tuple
            ``(graphs, targets)`` as their data loader yields them.
        """
        from chgnet.data.dataset import StructureData, collate_graphs

        f = self.frames
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            # their labels: energy per atom; stress as VASP writes it (kBar, positive = compressive): their
            # __getitem__ multiplies by -0.1 to get GPa, positive = tensile (ours)
            data = StructureData([x.structure for x in f], [x.energy / len(x.structure) for x in f],
                                 [np.asarray(x.forces).tolist() for x in f],
                                 stresses=[(-10.0 * np.asarray(x.stress)).tolist() for x in f],
                                 magmoms=[np.asarray(x.magmoms).tolist() for x in f], shuffle=False)
            batch = collate_graphs([data[i] for i in range(len(f))])
        self.graph_s = time.perf_counter() - t0
        return batch

    def step(self) -> tuple[float, float, dict[str, float]]:
        """One optimizer step, graph included (see :meth:`Ours.step`)."""
        t0 = time.perf_counter()
        batch = self.batch()
        self.losses.clear()
        with contextlib.redirect_stdout(io.StringIO()):
            self.trainer._train([batch], current_epoch=0)
        dt = time.perf_counter() - t0
        (out,) = self.losses
        return dt, out["loss"], {k: out[f"{c}_MAE"] for k, c in CHGNET_KEY.items()}


# --------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the process's peak resident memory (VmHWM; Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_one(side: str, frames_path: str) -> None:
    """Child process: one step of ``side`` on the frames of ``frames_path``; prints its peak memory increase.

    Parameters
    ----------
    side
        ``"ours"`` or ``"theirs"``.
    frames_path
        A JSON frame list (:func:`matfunnel.train.data.write_json`).
    """
    import gc

    from matfunnel.train.data import read_json

    frames, errors = read_json(frames_path)
    assert not errors, errors
    runner = Ours(frames) if side == "ours" else Theirs(frames)
    gc.collect()
    base = _status_kb("VmRSS")
    reset = _reset_peak()  # else the peak of loading the model may hide the step's
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dt, loss, _ = runner.step()
    peak1 = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # exact when the peak was reset or the step set the process's peak; else an upper bound
    exact = reset or peak1 > peak0
    print(f"MEMORY {side} {(peak1 - base) / 1024:.1f} {int(exact)} {base / 1024:.1f} {dt:.3f} {loss:.8g}")


def child_memory(side: str, frames_path: str, threads: int) -> tuple[float, bool]:
    """Peak resident memory increase (MB) of one step of ``side`` in a fresh process, and whether it is exact.

    Parameters
    ----------
    side
        ``"ours"`` or ``"theirs"``.
    frames_path
        The batch (a JSON frame list).
    threads
        torch threads for the child.

    Returns
    -------
    tuple
        ``(megabytes, exact)``; ``exact`` is False when the step did not raise the process's earlier peak.
    """
    cmd = [sys.executable, __file__, "--one", side, "--measure-memory", "--frames", frames_path,
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("MEMORY "):
            parts = line.split()
            return float(parts[2]), parts[3] == "1"
    raise RuntimeError(f"memory child {side} failed: {out.stdout[-1000:]} {out.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------------ run
def _cpu_name() -> str:
    """The CPU's name and core count (the same line as potential_throughput.py prints)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from potential_throughput import _cpu_name as name

    return name()


def _agreement(losses: dict[str, float], maes: dict[str, dict]) -> None:
    o, t, r = losses["ours"], losses["theirs"], losses["float64"]
    rel = abs(o - t) / abs(t)
    verdict = "agree" if rel <= LOSS_RTOL else "DO NOT agree"
    print(f"loss before the step: ours {o:.8g}, theirs {t:.8g}, relative difference {rel:.2e} "
          f"({verdict} within {LOSS_RTOL:.0e})")
    print(f"loss of the float64 model (numpy): {r:.8g}; relative difference to it: ours {abs(o - r) / r:.2e}, "
          f"theirs {abs(t - r) / r:.2e}")
    if rel > LOSS_RTOL:
        far, near = ("theirs", "ours") if abs(t - r) > abs(o - r) else ("ours", "theirs")
        times = abs(losses[far] - r) / max(abs(losses[near] - r), 1e-300)
        print(f"  the difference is {far}' float32 rounding: {far} is {times:.0f}x farther from the float64 loss "
              f"than {near}")
    terms = ", ".join(f"{k} " + " / ".join(f"{maes[s][k]:.7g}" for s in ("ours", "theirs", "float64"))
                      for k in WEIGHTS)
    print(f"MAE per term before the step, ours / theirs / float64: {terms}")


def run_size(size: str, args: argparse.Namespace) -> None:
    """Label the batch of ``size``, check the losses agree, time both sides alternately and print the table.

    Parameters
    ----------
    size
        ``"small"`` or ``"phonon"``.
    args
        The command line.
    """
    from matfunnel.train.data import write_json

    frames, preds = labelled_frames(size, args)
    n_atoms = sum(len(f.structure) for f in frames)
    print(f"\n== {size}: batch of {len(frames)} structures, {n_atoms} atoms "
          f"({', '.join(str(len(f.structure)) for f in frames)})"
          + (f"; phonon references {args.refs}" if size == "phonon" else ""))
    ours, theirs = Ours(frames), Theirs(frames)
    # first step of each (from the same published weights): the loss check, and warm-up
    _, loss_t, mae_t = theirs.step()
    _, loss_o, mae_o = ours.step()
    loss_r, mae_r = float64_loss(frames, preds)
    _agreement({"ours": loss_o, "theirs": loss_t, "float64": loss_r},
               {"ours": mae_o, "theirs": mae_t, "float64": mae_r})

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    best = {s: {"total": float("inf"), "graph": float("inf"), "step": float("inf")} for s in ("ours", "theirs")}
    pairs, step_pairs = [], []
    for _ in range(args.repeats):
        got = {}
        for key, side in (("theirs", theirs), ("ours", ours)):
            dt, _, _ = side.step()
            got[key] = (dt, side.graph_s, dt - side.graph_s)
            for col, v in zip(("total", "graph", "step"), got[key], strict=True):
                best[key][col] = min(best[key][col], v)
        pairs.append(got["theirs"][0] / got["ours"][0])
        step_pairs.append(got["theirs"][2] / got["ours"][2])
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    mem = {"ours": (float("nan"), True), "theirs": (float("nan"), True)}
    if not args.no_memory:
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "frames.json")
            write_json(frames, path)
            for key in ("theirs", "ours"):
                mem[key] = child_memory(key, path, torch.get_num_threads())

    print(f"{'side':<26}{'graph s':>9}{'step s':>9}{'s/step':>9}{'steps/s':>9}{'atoms/s':>9}"
          f"{'peak MB':>9}{'ratio':>8}")
    for key, side in (("theirs", theirs), ("ours", ours)):
        b = best[key]
        ratio = best["theirs"]["total"] / b["total"]
        mb, exact = mem[key]
        mb_text = f"{mb:.0f}" if exact else f"<={mb:.0f}"
        print(f"{side.name:<26}{b['graph']:>9.3f}{b['step']:>9.3f}{b['total']:>9.3f}{1 / b['total']:>9.2f}"
              f"{n_atoms / b['total']:>9.1f}{mb_text:>9}{ratio:>7.2f}x")
    print("(s/step: graph + step, the best of the repeats; step s: without building the graph; ratio: theirs / "
          "ours of s/step)")
    r, rs = sorted(pairs), sorted(step_pairs)
    print(f"speed-up ours over theirs ({size}): {best['theirs']['total'] / best['ours']['total']:.2f}x with "
          f"graphs, {best['theirs']['step'] / best['ours']['step']:.2f}x without (best of {args.repeats}); "
          f"adjacent pairs: median {float(np.median(r)):.2f}x, range {r[0]:.2f}-{r[-1]:.2f}x "
          f"(without graphs: median {float(np.median(rs)):.2f}x)")
    if not args.no_memory:
        print(f"peak memory of one step ({size}): theirs / ours {mem['theirs'][0] / mem['ours'][0]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,phonon", help="size classes: small, phonon (comma-separated)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="alternate theirs/ours this many times, keep the best")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    ap.add_argument("--small-atoms", default="8,64", help="smallest,largest atoms of the small cells")
    ap.add_argument("--refs", default="mp-938,mp-7436", help="phonon references (folders under "
                                                             "shared/data/phonons/pbe-reference)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--one", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    ap.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--frames", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        if not (args.measure_memory and args.frames):
            raise SystemExit("--one runs with --measure-memory --frames PATH")
        measure_one(args.one, args.frames)
        return
    import chgnet

    print("command: train_throughput.py " + " ".join(sys.argv[1:]))
    print(f"cpu: {_cpu_name()}; torch {torch.__version__}, chgnet {chgnet.__version__}; float32; "
          f"torch threads {torch.get_num_threads()} (both sides); load average {os.getloadavg()[0]:.2f}")
    print(f"loss: MSE, weights energy/atom {WEIGHTS['energy']}, forces {WEIGHTS['forces']}, stress (GPa) "
          f"{WEIGHTS['stress']}, magmoms {WEIGHTS['magmoms']}; Adam lr {LR}; batch size {args.batch_size}; "
          f"repeats {args.repeats}; seed {args.seed}")
    for size in [s for s in args.sizes.split(",") if s]:
        run_size(size, args)


if __name__ == "__main__":
    main()
