"""Fine-tuning (matfunnel.train): it learns, it resumes, data-parallel equals one process, checkpoints load.

Real parts: the CHGNet 0.3.0 weights, the VASP-PBE forces of the shared phonon references, torchrun with two
gloo processes. The small synthetic sets below are labelled by our own float64 CHGNet with a known change
(scaled forces and stresses, per-element energy offsets), so what the training must recover is known.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matfunnel.potential import load_potential
from matfunnel.potential.chgnet.weights import CheckpointError, load_checkpoint, read_native_meta
from matfunnel.train.batches import epoch_batches, shard
from matfunnel.train.config import TrainConfig
from matfunnel.train.data import dataset_hash, load_frames, write_json
from matfunnel.train.frames import Frame
from matfunnel.train.maker import FineTuneMaker
from matfunnel.train.references import refit_references
from matfunnel.train.spec import TrainSpecError, load_spec, parse_spec, split_frames
from matfunnel.train.trainer import FineTuneError, fine_tune

ROOT = Path(__file__).resolve().parents[1]
PHONONS = ROOT.parent / "shared" / "data" / "phonons" / "pbe-reference"
OFFSETS = {"Na": -0.7, "Cl": 0.4, "Si": 0.25}  # eV/atom added to the labels' energies


def _cells(seed: int) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(6):
        if k % 2:
            s = Structure(Lattice.cubic(5.64), ["Na", "Cl"] * 4,
                          [[0, 0, 0], [.5, 0, 0], [.5, .5, 0], [0, .5, 0], [.5, 0, .5], [0, 0, .5], [0, .5, .5],
                           [.5, .5, .5]])
        else:
            s = Structure(Lattice.cubic(5.43), ["Si"] * 8,
                          [[0, 0, 0], [.25, .25, .25], [.5, .5, 0], [.75, .75, .25], [.5, 0, .5], [.75, .25, .75],
                           [0, .5, .5], [.25, .75, .75]])
        s = Structure(Lattice(s.lattice.matrix @ (np.eye(3) + rng.normal(0, 0.02, (3, 3)))), s.species,
                      s.frac_coords + rng.normal(0, 0.01, (len(s), 3)))
        if k >= 4:
            s.make_supercell([2, 1, 1])
        out.append(s)
    return out


@pytest.fixture(scope="module")
def synthetic() -> list[Frame]:
    """Frames labelled by our float64 CHGNet, with forces and stress scaled by 1.1 and energies offset."""
    pot = load_potential("chgnet-0.3.0", dtype="float64", calibrate=False)
    cells = _cells(3)
    frames = []
    for i, (s, p) in enumerate(zip(cells, pot.predict(cells), strict=True)):
        offset = sum(OFFSETS[site.specie.symbol] for site in s)
        frames.append(Frame(structure=s, energy=p["energy"] + offset, forces=1.1 * p["forces"],
                            stress=1.1 * p["stress"], magmoms=p["magmoms"], source=f"synthetic#{i}", code="gpaw"))
    return frames


def _config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=3, lr=1e-4, dtype="float64", seed=1, optimizer="adam")
    base.update(kw)
    return TrainConfig(**base)


def _steps(folder: Path) -> list[float]:
    with open(folder / "steps.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def test_refit_recovers_per_element_offsets(synthetic):
    model = load_checkpoint().to(torch.float64)
    before = model.atom_ref.detach().clone()
    frames = [Frame(structure=f.structure, energy=f.energy, source=f.source) for f in synthetic]
    pot = load_potential("chgnet-0.3.0", dtype="float64", calibrate=False)
    predicted = [p["energy"] for p in pot.predict([f.structure for f in frames])]
    deltas = refit_references(model, frames, predicted)
    assert set(deltas) == set(OFFSETS)
    assert deltas["Si"] == pytest.approx(OFFSETS["Si"], abs=1e-8)
    # NaCl holds Na and Cl 1:1 only: their sum is determined, and the minimum-norm change splits it evenly
    assert deltas["Na"] + deltas["Cl"] == pytest.approx(OFFSETS["Na"] + OFFSETS["Cl"], abs=1e-8)
    assert deltas["Na"] == pytest.approx(deltas["Cl"], abs=1e-10)
    changed = torch.nonzero(model.atom_ref.detach() - before).flatten().tolist()
    assert sorted(changed) == [10, 13, 16]  # Na, Si, Cl (Z - 1)


def test_fine_tuning_lowers_the_loss_and_the_checkpoint_loads(synthetic, tmp_path):
    train, val = synthetic[:5], synthetic[5:]
    result = fine_tune(train, val, _config(epochs=3), tmp_path / "run", progress=False)
    rows = result.epochs
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    # the refit took the energy offsets out before any step: energies are right from epoch 0
    assert rows[0]["train_energy_mae"] < 5.0  # meV/atom, against offsets of 250-700 meV/atom
    assert result.references["Si"] == pytest.approx(OFFSETS["Si"], abs=0.02)
    assert result.metrics["after"]["forces_mae"] < result.metrics["before"]["forces_mae"]
    for name in ("log.csv", "steps.csv", "curves.png", "checkpoint.pt", "state.pt", "result.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    meta = read_native_meta(result.checkpoint)
    assert meta["dataset_hash"] == dataset_hash(train) == result.dataset_hash
    assert meta["base"] == "chgnet-0.3.0" and meta["metrics"]["epoch"] == result.metrics["epoch"]
    # round trip: every stage's loader gives the trained model's numbers, and the provenance names the file
    tuned = load_potential("chgnet-0.3.0", checkpoint=str(result.checkpoint), dtype="float64", calibrate=False)
    base = load_potential("chgnet-0.3.0", dtype="float64", calibrate=False)
    model = load_checkpoint(result.checkpoint).to(torch.float64)
    ours = tuned.predict([val[0].structure])[0]
    assert torch.equal(torch.cat([p.flatten() for p in model.state_dict().values()]),
                       torch.cat([p.flatten() for p in tuned.model.state_dict().values()]))
    assert abs(ours["energy"] - base.predict([val[0].structure])[0]["energy"]) > 0.1  # the refit moved it
    assert tuned.model_info()["weights_sha256"] != base.model_info()["weights_sha256"]
    err_after = np.abs(ours["forces"] - val[0].forces).mean()
    err_before = np.abs(base.predict([val[0].structure])[0]["forces"] - val[0].forces).mean()
    assert err_after < err_before


def test_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "matfunnel-chgnet/1", "config": {"atom_fea_dim": 64}, "state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="parameters do not fit"):
        load_checkpoint(tmp_path / "x.pt")


def test_real_phonon_forces_fine_tuning_lowers_the_training_loss(tmp_path):
    frames, errors = load_frames(PHONONS / "mp-938", require=["forces"])
    assert not errors and len(frames) == 12 and frames[0].n_atoms == 360
    cfg = TrainConfig(epochs=2, batch_size=1, lr=1e-3, energy="forces_only", seed=0,
                      weights={"energy": 0, "forces": 1, "stress": 0, "magmoms": 0})
    result = fine_tune(frames[:1], [], cfg, tmp_path / "ge-te", progress=False)
    first, last = result.epochs[0], result.epochs[-1]
    assert last["train_forces_mae"] < first["train_forces_mae"]
    assert last["train_loss"] < first["train_loss"]


def test_resume_after_sigkill_recomputes_nothing(synthetic, tmp_path):
    frames_file = write_json(synthetic, tmp_path / "frames.json")
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom matfunnel.train.data import load_frames\nfrom matfunnel.train.config import TrainConfig\n"
        "from matfunnel.train.trainer import fine_tune\n"
        f"frames, _ = load_frames([{str(frames_file)!r}], require=['forces'])\n"
        "cfg = TrainConfig(epochs=4, batch_size=3, lr=1e-4, dtype='float64', seed=1)\n"
        "fine_tune(frames[:5], frames[5:], cfg, sys.argv[1], progress=False)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, str(script), str(whole)], check=True, env=env, timeout=600)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, str(script), str(cut)], env=env)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (cut / "state.pt").exists() and (cut / "log.csv").exists():
            with open(cut / "log.csv") as fh:
                if len(list(csv.DictReader(fh))) >= 2:  # epoch 0 (before) and epoch 1 finished
                    break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(cut / "log.csv") as fh:
        finished = len(list(csv.DictReader(fh))) - 1
    assert 1 <= finished < 4, "the kill came before the first epoch finished or after the run"
    steps_before = len(_steps(cut))
    subprocess.run([sys.executable, str(script), str(cut)], check=True, env=env, timeout=600)
    resumed, reference = _steps(cut), _steps(whole)
    assert len(resumed) == len(reference) and steps_before < len(resumed)
    np.testing.assert_allclose(resumed, reference, rtol=1e-9)
    a, b = load_checkpoint(cut / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=k)
    # a finished run is returned as it is: nothing is trained again
    stamp = (cut / "checkpoint.pt").stat().st_mtime_ns
    subprocess.run([sys.executable, str(script), str(cut)], check=True, env=env, timeout=600)
    assert (cut / "checkpoint.pt").stat().st_mtime_ns == stamp and _steps(cut) == resumed


def test_a_folder_with_another_run_is_refused(synthetic, tmp_path):
    fine_tune(synthetic[:3], [], _config(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(FineTuneError, match="other data or settings"):
        fine_tune(synthetic[:3], [], _config(epochs=1, lr=1e-3), tmp_path / "run", progress=False)


def _spec(tmp_path: Path, frames_file: Path, **settings) -> Path:
    spec = tmp_path / "spec.yaml"
    lines = ["potential: chgnet-0.3.0", "data:", f"  train: [{frames_file.name}]", "  val_fraction: 0.2",
             "  split_by: frame", "settings:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in settings.items()]
    spec.write_text("\n".join(lines) + "\n")
    return spec


def test_two_processes_equal_one(synthetic, tmp_path):
    frames_file = write_json(synthetic, tmp_path / "frames.json")
    spec = _spec(tmp_path, frames_file, epochs=2, batch_size=3, lr=1e-4, dtype="float64", seed=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cli = ["-m", "matfunnel.cli", "train", str(spec), "--quiet"]
    subprocess.run([sys.executable, *cli, "--out", str(tmp_path / "one")], check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cli,
                    "--out", str(tmp_path / "two")], check=True, env=env, timeout=600)
    one, two = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    assert len(one) == len(two) == 4
    np.testing.assert_allclose(two, one, rtol=1e-8)  # float64: Adam amplifies round-off (3e-10 seen)
    a, b = load_checkpoint(tmp_path / "one" / "checkpoint.pt"), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=k)


def test_cli_reports_errors_in_one_message(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("potential: sevennet-0\ndata: {train: [], val_fraction: 2}\nsettings: {optimizer: sgd, "
                    "epochs: 0}\ncolour: red\n")
    run = subprocess.run([sys.executable, "-m", "matfunnel.cli", "train", str(spec)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=300)
    assert run.returncode == 2
    for part in ("colour", "potential:", "val_fraction", "epochs must be a positive integer", "optimizer 'sgd'"):
        assert part in run.stderr
    with pytest.raises(TrainSpecError, match="settings: unknown key"):
        parse_spec({"data": {"train": ["x"]}, "settings": {"learning_rate": 1}})


def test_spec_paths_and_split(tmp_path, synthetic):
    frames_file = write_json(synthetic, tmp_path / "frames.json")
    spec = load_spec(_spec(tmp_path, frames_file, epochs=1))
    assert spec.data.train == [str(tmp_path / "frames.json")] and spec.settings.epochs == 1
    tagged = [Frame(structure=f.structure, forces=f.forces, source=f"x#{i}", info={"material_id": f"m{i % 3}"})
              for i, f in enumerate(synthetic)]
    train, val = split_frames(tagged, 0.34, "material", seed=0)
    assert len({f.info["material_id"] for f in val}) == 1 and len(train) + len(val) == len(tagged)
    assert not {f.info["material_id"] for f in val} & {f.info["material_id"] for f in train}


def test_balanced_shards_and_batches():
    costs = [360, 8, 8, 16, 120, 60, 64, 200]
    parts = shard(list(range(8)), costs, 2)
    loads = [sum(costs[i] for i in p) for p in parts]
    assert sorted(i for p in parts for i in p) == list(range(8))
    assert max(loads) - min(loads) <= max(costs) and max(loads) <= 0.6 * sum(costs)
    assert epoch_batches(10, 4, 0, 1) == epoch_batches(10, 4, 0, 1) != epoch_batches(10, 4, 0, 2)
    assert [len(b) for b in epoch_batches(10, 4, 0, 1)] == [4, 4, 2]
    assert shard([3], costs, 2) == [[3], []]


def test_fine_tune_maker_is_content_addressed(synthetic, tmp_path):
    docs = [{"structure": f.structure.as_dict(), "energy": f.energy, "forces": f.forces.tolist(),
             "stress": f.stress.tolist(), "code": "gpaw"} for f in synthetic]
    docs.append({"structure": synthetic[0].structure.as_dict(), "forces": [[float("nan")] * 3] * 8})
    maker = FineTuneMaker(settings={"epochs": 1, "batch_size": 3, "dtype": "float64"}, split_by="frame",
                          root=str(tmp_path / "ft"))
    doc = maker.run(docs)
    assert doc.n_train + doc.n_val == 6 and len(doc.data_errors) == 1 and "train#6" in doc.data_errors[0]
    assert "NaN" in doc.data_errors[0]
    assert Path(doc.checkpoint).is_file() and Path(doc.folder).name == doc.key[:24]
    stamp = Path(doc.checkpoint).stat().st_mtime_ns
    again = maker.run(docs)
    assert again.key == doc.key and Path(again.checkpoint).stat().st_mtime_ns == stamp
    other = FineTuneMaker(settings={"epochs": 1, "batch_size": 2, "dtype": "float64"}, split_by="frame",
                          root=str(tmp_path / "ft")).run(docs)
    assert other.key != doc.key


def test_force_baseline_subtracts_the_undisplaced_cell():
    from matfunnel.train.batches import to_tensors
    from matfunnel.train.trainer import _forward

    frames, _ = load_frames(PHONONS / "mp-938", require=["forces"])
    frame = frames[0]
    assert frame.baseline is not None and len(frame.baseline) == frame.n_atoms
    model = load_checkpoint().to(torch.float64)
    out = _forward(model, [to_tensors(frame)], terms=("forces",), create_graph=False, baseline=True)
    pot = load_potential("chgnet-0.3.0", dtype="float64", calibrate=False)
    displaced, ideal = pot.predict([frame.structure, frame.baseline])
    np.testing.assert_allclose(out["forces"].numpy(), displaced["forces"] - ideal["forces"], atol=1e-8)
    plain = _forward(model, [to_tensors(frame)], terms=("forces",), create_graph=False, baseline=False)
    np.testing.assert_allclose(plain["forces"].numpy(), displaced["forces"], atol=1e-8)


def test_matris_fine_tunes_and_its_checkpoint_loads(synthetic, tmp_path):
    """Our MatRIS trains with forces and stress in the loss (a small random model: no published weights here)."""
    from matfunnel.potential.matris.config import MatrisConfig
    from matfunnel.potential.matris.model import MatrisModel
    from matfunnel.potential.matris.weights import save_native

    torch.manual_seed(0)
    cfg = MatrisConfig(num_layers=2, node_feat_dim=16, edge_feat_dim=16, three_body_feat_dim=16,
                       mlp_hidden_dims=(16,), num_radial=5, num_angular=5, max_l=2, max_n=2)
    start = save_native(MatrisModel(cfg), tmp_path / "start.pt", {"note": "random weights, for the test"})
    config = _config(epochs=3, lr=3e-3, energy="as_is")
    result = fine_tune(synthetic[:5], synthetic[5:], config, tmp_path / "matris", base="matris-10m-oam",
                       checkpoint=str(start), progress=False)
    rows = result.epochs
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert result.metrics["after"]["loss"] < result.metrics["before"]["loss"]
    assert read_native_meta_matris(result.checkpoint)["dataset_hash"] == dataset_hash(synthetic[:5])
    pot = load_potential("matris-10m-oam", checkpoint=str(result.checkpoint), dtype="float64", calibrate=False)
    from matfunnel.train.models import forward, load

    model = load("matris-10m-oam", str(result.checkpoint)).to(torch.float64)
    s = synthetic[5].structure
    direct = forward(model, [(torch.tensor(s.frac_coords), torch.tensor(s.lattice.matrix),
                              torch.tensor(s.atomic_numbers))], forces=True, stress=True, create_graph=False)
    got = pot.predict([s])[0]
    assert got["energy"] == pytest.approx(float(direct["energy"][0]), abs=1e-6)
    np.testing.assert_allclose(got["forces"], direct["forces"].numpy(), atol=1e-6)


def read_native_meta_matris(path):
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["format"] == "matfunnel-matris/1"
    return blob["meta"]


def test_matris_direct_readouts_train(synthetic, tmp_path):
    """MatRIS's direct force and stress heads (no derivative of the energy: FastCHGNet's idea) train too."""
    from matfunnel.potential.matris.config import MatrisConfig
    from matfunnel.potential.matris.model import MatrisModel
    from matfunnel.potential.matris.weights import save_native

    torch.manual_seed(1)
    cfg = MatrisConfig(num_layers=2, node_feat_dim=16, edge_feat_dim=16, three_body_feat_dim=16,
                       mlp_hidden_dims=(16,), num_radial=5, num_angular=5, max_l=2, max_n=2, is_conservation=False)
    start = save_native(MatrisModel(cfg), tmp_path / "direct.pt", {})
    result = fine_tune(synthetic[:5], [], _config(epochs=3, lr=3e-3, energy="as_is"), tmp_path / "run",
                       base="matris-10m-oam", checkpoint=str(start), progress=False)
    assert result.epochs[-1]["train_forces_mae"] < result.epochs[0]["train_forces_mae"]
