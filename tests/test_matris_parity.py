"""matfunnel's MatRIS against the ``matris`` 1.0 package (the reference), on fresh random inputs.

Both models get the same random weights: the reference's (perturbed so that residual weights, norms
and basis frequencies are not at their initial values), saved in matris 1.0's checkpoint format
(``config`` + ``state_dict``) and read back by each side's own loader (``MatRIS.from_dict`` /
``MatRIS.load`` and ours). Every run draws new structures; the seed is printed (``-s``) and put in
failure messages so a failure can be replayed with ``MATFUNNEL_TEST_SEED=<seed>``.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matfunnel.potential import load_potential
from matfunnel.potential.matris import (
    PUBLISHED,
    MatrisCheckpointError,
    MatrisCheckpointMissing,
    model_from_dict,
    release_url,
)
from matfunnel.potential.matris import weights as matris_weights
from matfunnel.potential.matris.graph import build_matris_graph

warnings.filterwarnings("ignore")
TOL = {"energy": 1e-5, "forces": 1e-4, "stress": 1e-3, "magmoms": 1e-4}  # eV/atom, eV/A, GPa, mu_B
SEED = int(os.environ.get("MATFUNNEL_TEST_SEED", secrets.randbits(32)))

#: configurations checked against the package. "10m-oam" is the published architecture (10 layers,
#: 6 / 4.5 A cutoffs, OMat reference energies); "direct" exercises the non-conservative heads;
#: "variants" the other basis / MLP / norm options at small width.
CONFIGS = {
    "10m-oam": PUBLISHED["10m-oam"].to_dict(),
    "direct": {"num_layers": 2, "is_conservation": False, "reference_energy": "mptrj"},
    "variants": {
        "num_layers": 2, "node_feat_dim": 32, "edge_feat_dim": 48, "three_body_feat_dim": 40, "mlp_hidden_dims": 64,
        "distance_expansion": "Gaussian", "three_body_expansion": "Fourier", "norm_type": "layer",
        "graph_conv_mlp": "MLP", "use_bias": True, "learnable_basis": False, "use_smoothed_for_delta_edge": True,
        "activation_type": "gelu", "is_intensive": False, "reference_energy": "mpa",
    },
}


@pytest.fixture(scope="module")
def rng():
    print(f"\nmatris parity seed: MATFUNNEL_TEST_SEED={SEED}")
    return np.random.default_rng(SEED)


def _matris():
    mod = pytest.importorskip("matris.model", reason="the matris package (parity reference) is not installed")
    import matris

    if int(matris.__version__.split(".")[0]) < 1:
        pytest.skip(f"matris {matris.__version__} installed; the parity reference is matris 1.0")
    return mod


def reference_checkpoint(config: dict, seed: int) -> dict:
    """A matris 1.0 checkpoint dict (``config`` + ``state_dict``) of a randomly initialised, perturbed MatRIS."""
    mod = _matris()
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = mod.MatRIS(**config)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "res_weight" in name or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif "frequencies" in name:
                p.add_(0.05 * torch.randn_like(p))
    return {"config": dict(ref.config), "state_dict": ref.state_dict()}


def reference_model(ckpt: dict):
    """matris 1.0's own model from a checkpoint dict (its ``MatRIS.from_dict``)."""
    mod = _matris()
    with contextlib.redirect_stdout(io.StringIO()):
        return mod.MatRIS.from_dict(ckpt).eval()


def random_structure(rng, n: int, a: float) -> Structure:
    """A random triclinic cell with atoms at least 1 A apart."""
    lat = Lattice(np.diag([a, a * rng.uniform(0.9, 1.15), a * rng.uniform(0.9, 1.15)]) + rng.normal(0, 0.3, (3, 3)))
    frac = []
    while len(frac) < n:
        f = rng.random(3)
        if all(np.linalg.norm(lat.get_cartesian_coords(((f - g + 0.5) % 1) - 0.5)) > 1.0 for g in frac):
            frac.append(f)
    return Structure(lat, rng.integers(1, 95, n).tolist(), np.array(frac))


def sparse_structure(rng) -> Structure:
    """Two atoms and no bond under 4.5 A: no angle (two atoms: the direct stress head cannot take one-atom cells)."""
    return Structure(Lattice.cubic(5.5), rng.integers(1, 95, 2).tolist(), [[0, 0, 0], [0.5, 0.5, 0.5]])


def left_handed(s: Structure) -> Structure:
    """The same crystal with its third lattice vector reversed (negative determinant)."""
    m = s.lattice.matrix.copy()
    m[2] *= -1
    return Structure(Lattice(m), s.species, s.frac_coords * [1, 1, -1])


def structures(rng, small: bool = False) -> list[Structure]:
    """Random triclinic cells with angles (one left-handed), and one without; ``small``: fewer atoms (for the
    10-layer model)."""
    if small:
        return [random_structure(rng, 3, 4.4), sparse_structure(rng), random_structure(rng, 2, 3.6)]
    return [random_structure(rng, 5, 4.6), left_handed(random_structure(rng, 3, 3.7)), sparse_structure(rng),
            random_structure(rng, 7, 5.3)]


def reference_predict(ref, structs):
    """The package's numbers for a batch (its torch path, as on the CPU), energies per atom."""
    graphs = [ref.graph_converter(s, mode="torch") for s in structs]
    p = ref(graphs, task="efsm", mode="torch")
    n = np.array([len(s) for s in structs])
    e = p["e"].detach().double().numpy()
    return {
        "energy": e if ref.is_intensive else e / n,
        "forces": np.concatenate([f.detach().double().numpy() for f in p["f"]]),
        "stress": np.stack([s.detach().double().numpy() for s in p["s"]]),
        "magmoms": np.concatenate([m.detach().double().numpy().reshape(-1) for m in p["m"]]),
    }


def our_predict(model, structs):
    frac = torch.from_numpy(np.concatenate([s.frac_coords for s in structs]))
    lat = torch.from_numpy(np.stack([s.lattice.matrix for s in structs]))
    z = torch.tensor(np.concatenate([s.atomic_numbers for s in structs]))
    n = torch.tensor([len(s) for s in structs])
    g = build_matris_graph(frac, lat, z, n, pairwise_cutoff=model.cfg.pairwise_cutoff,
                           three_body_cutoff=model.cfg.three_body_cutoff)
    o = model(g)
    return {"energy": (o["energy"] / n).double().numpy(), "forces": o["forces"].double().numpy(),
            "stress": o["stress"].double().numpy(), "magmoms": o["magmoms"].double().numpy()}


def max_diffs(got: dict, want: dict) -> dict[str, float]:
    return {k: float(np.abs(got[k] - want[k]).max()) for k in TOL}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity(name, rng):
    """A batch with angles and one angle-free structure; then that structure alone (a batch without angles)."""
    ckpt = reference_checkpoint(CONFIGS[name], int(rng.integers(2**31)))
    ref = reference_model(ckpt)
    ours = model_from_dict(ckpt)
    structs = structures(rng, small=name == "10m-oam")
    want = reference_predict(ref, structs)
    diffs = max_diffs(our_predict(ours, structs), want)
    scale = {k: float(np.abs(want[k]).max()) for k in TOL}
    print(f"matris parity {name}: " + ", ".join(f"{k} {v:.1e} (of {scale[k]:.1e})" for k, v in diffs.items()))
    for k, tol in TOL.items():
        assert diffs[k] < tol, f"{name}: {k} differs by {diffs[k]:.2e} (tol {tol}); MATFUNNEL_TEST_SEED={SEED}"
    alone = [s for s in structs if len(s) == 2 and s.lattice.is_orthogonal][:1]
    diffs = max_diffs(our_predict(ours, alone), reference_predict(ref, alone))
    for k, tol in TOL.items():
        assert diffs[k] < tol, f"{name}, no angles: {k} differs by {diffs[k]:.2e}; MATFUNNEL_TEST_SEED={SEED}"


def test_potential_interface_and_checkpoint_file(rng, tmp_path):
    """A checkpoint file that matris 1.0's ``MatRIS.load`` reads gives the same numbers through ``load_potential``."""
    ckpt = reference_checkpoint(CONFIGS["direct"] | {"is_conservation": True}, 1)
    path = tmp_path / "MatRIS_small.pth.tar"
    torch.save(ckpt, path)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = _matris().MatRIS.load(str(path), device="cpu").eval()
    pot = load_potential("matris-10m-oam", checkpoint=str(path), calibrate=False)
    structs = structures(rng, small=True)
    res = pot.predict(structs)
    want = reference_predict(ref, structs)
    n = np.array([len(s) for s in structs])
    got = {"energy": np.array([r["energy"] for r in res]) / n,
           "forces": np.concatenate([r["forces"] for r in res]),
           "stress": np.stack([r["stress"] for r in res]),
           "magmoms": np.concatenate([r["magmoms"] for r in res])}
    for k, d in max_diffs(got, want).items():
        assert d < TOL[k], f"{k} differs by {d:.2e}; MATFUNNEL_TEST_SEED={SEED}"


def test_reference_energies_follow_the_state_dict():
    """As matris 1.0 loads them: weights without a config label are used, a legacy name is read, a label
    without weights is refused, and conflicting legacy and current weights are refused."""
    ckpt = reference_checkpoint(CONFIGS["variants"], 3)
    state, ref_w = dict(ckpt["state_dict"]), ckpt["state_dict"]["reference_energy.fc.weight"]
    unlabelled = model_from_dict({"config": ckpt["config"] | {"reference_energy": None}, "state_dict": state})
    torch.testing.assert_close(unlabelled.ref_energy, ref_w.reshape(-1))
    legacy = dict(state)
    legacy["composition_model.fc.weight"] = legacy.pop("reference_energy.fc.weight")
    torch.testing.assert_close(model_from_dict({"config": ckpt["config"], "state_dict": legacy}).ref_energy,
                               ref_w.reshape(-1))
    without = {k: v for k, v in state.items() if k != "reference_energy.fc.weight"}
    with pytest.raises(MatrisCheckpointError, match="missing 'reference_energy.fc.weight'"):
        model_from_dict({"config": ckpt["config"], "state_dict": without})
    with pytest.raises(MatrisCheckpointError, match="conflicting reference energies"):
        model_from_dict({"config": ckpt["config"],
                         "state_dict": state | {"composition_model.fc.weight": ref_w + 1}})


def test_wrong_shape_checkpoint_refused():
    ckpt = reference_checkpoint(CONFIGS["direct"], 2)
    config, state = ckpt["config"], dict(ckpt["state_dict"])
    key = "interaction_block.1.attn_block_atom_graph.source_weight_linear.weight"
    state[key] = state[key][:-1]
    with pytest.raises(MatrisCheckpointError, match="source_weight_linear.*shape"):
        model_from_dict({"config": config, "state_dict": state})
    # a config that does not match the weights (more layers than stored)
    with pytest.raises(MatrisCheckpointError, match="missing 'interaction_block.2"):
        model_from_dict({"config": config | {"num_layers": 3}, "state_dict": ckpt["state_dict"]})
    # extra tensors are not silently dropped
    with pytest.raises(MatrisCheckpointError, match="unused"):
        model_from_dict({"config": config, "state_dict": ckpt["state_dict"] | {"extra.weight": torch.zeros(2)}})
    with pytest.raises(MatrisCheckpointError, match="config"):
        model_from_dict({"state_dict": ckpt["state_dict"]})
    # nested under "model", as matris 1.0's from_dict also accepts
    assert model_from_dict({"model": ckpt}).cfg.num_layers == config["num_layers"]


def test_missing_checkpoint_message(tmp_path):
    missing = tmp_path / "nowhere" / "MatRIS_10M_OAM.pth.tar"
    with pytest.raises(MatrisCheckpointMissing) as exc:
        load_potential("matris-10m-oam", checkpoint=str(missing))
    msg = str(exc.value)
    assert release_url("10m-oam") in msg
    assert "https://github.com/HPC-AI-Team/MatRIS/releases/download/v1.0.0/MatRIS_10M_OAM.pth.tar" in msg
    assert str(missing) in msg and "checkpoint=" in msg and ".cache/matris" in msg


def test_cache_lookup_and_weights_missing(tmp_path, monkeypatch):
    """The registry looks for the release file in matris 1.0's cache as that package does (case, ``.pth.tar`` /
    ``.pth`` / ``.pt``), and fails fast naming the file and the folder when it is not there."""
    from matfunnel.potential import registry

    monkeypatch.setattr(matris_weights, "CACHE_DIR", tmp_path)
    entry = registry.resolve("matris-10m-mp")
    with pytest.raises(registry.WeightsMissing) as exc:
        entry.check_weights()
    msg = str(exc.value)
    assert "'MatRIS_10M_MP.pth.tar'" in msg and repr(str(tmp_path)) in msg and release_url("10m-mp") in msg
    (tmp_path / "matris_10m_mp.pth").write_bytes(b"")
    assert entry.weights_path() == tmp_path / "matris_10m_mp.pth"
    entry.check_weights()


def test_memory_model_calibrated_per_configuration(tmp_path, monkeypatch):
    """MatRIS batches by a measured memory model too: bytes per item from two probe cells (in a child process on
    the CPU), cached per configuration; batches are packed against the item budget."""
    from matfunnel.potential import calibration
    from matfunnel.potential.matris import MatrisConfig, MatrisModel
    from matfunnel.potential.matris.potential import MatrisPotential

    monkeypatch.setenv("MATFUNNEL_CACHE", str(tmp_path))
    small = MatrisConfig(num_layers=2, node_feat_dim=32, edge_feat_dim=32, three_body_feat_dim=32, mlp_hidden_dims=32)
    pot = MatrisPotential(module=MatrisModel(small), memory_budget=256 << 20)
    rec = pot.calibration
    assert rec is not None and rec["source"] == "measured", "the probe failed (see the log)"
    (n0, b0), (n1, b1) = rec["probes"]
    assert n1 > n0 and b1 > b0  # more items, more memory
    assert pot.bytes_per_item == int(rec["bytes_per_item"] * calibration.MARGIN)
    assert pot.max_items == (256 << 20) // pot.bytes_per_item
    # another configuration is keyed apart (its memory per item differs; its weights do not matter)
    wide = MatrisModel(MatrisConfig(num_layers=2))
    assert MatrisPotential(module=wide, calibrate=False).calibration_key() != pot.calibration_key()
    again = MatrisPotential(module=MatrisModel(small), memory_budget=256 << 20)
    assert again.calibration["source"] == "cache" and again.bytes_per_item == pot.bytes_per_item
    # packing: every planned batch of several structures stays within the item budget by the estimate
    rng = np.random.default_rng(0)
    n_atoms = rng.integers(8, 200, 60).tolist()
    volumes = [n * rng.uniform(10, 20) for n in n_atoms]
    pot.max_items = 20_000
    batches = pot.plan_batches(n_atoms, volumes)
    assert sorted(k for b in batches for k in b) == list(range(60)) and len(batches) > 1
    for b in batches:
        est = [pot.work_estimate(n_atoms[k], volumes[k]) for k in b]
        assert len(b) == 1 or sum(e + a for e, a in est) <= pot.max_items
