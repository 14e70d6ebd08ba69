"""matfunnel's chgnet-0.3.0 against the chgnet package (the reference), on fresh random inputs.

Every run draws new structures; the seed is printed (``-s``) and put in failure messages so a
failure can be replayed with ``MATFUNNEL_TEST_SEED=<seed>``.
"""

from __future__ import annotations

import os
import secrets
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matfunnel.potential import StructureError
from matfunnel.potential.chgnet.graph import build_graph
from matfunnel.potential.chgnet.potential import ChgnetPotential
from matfunnel.potential.chgnet.weights import CheckpointError, checkpoint_path, load_checkpoint
from matfunnel.potential.chgnet_reference import ChgnetReference, parity_errors
from matfunnel.potential.synthetic import random_structure, supercell

warnings.filterwarnings("ignore")
TOL = {"energy": 1e-5, "forces": 1e-4, "stress": 1e-3, "magmoms": 1e-4}
#: where ours runs (the reference always runs on the CPU): ``MATFUNNEL_TEST_DEVICE=cuda`` checks the CUDA path
#: (Triton kernels in float32, torch in float64) against the same reference; CI has no GPU, so it runs "cpu"
DEVICE = os.environ.get("MATFUNNEL_TEST_DEVICE", "cpu")
SEED = int(os.environ.get("MATFUNNEL_TEST_SEED", secrets.randbits(32)))


@pytest.fixture(scope="module")
def rng():
    print(f"\nchgnet parity seed: MATFUNNEL_TEST_SEED={SEED}")
    return np.random.default_rng(SEED)


@pytest.fixture(scope="module")
def ref32():
    from chgnet.model import CHGNet

    return CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)


@pytest.fixture(scope="module")
def ref64():
    """chgnet's own model run in float64 (its dtype constants switched while it predicts)."""
    return ChgnetReference(dtype="float64", batch_size=1).predict_raw  # one graph at a time: chgnet keeps a batch


@pytest.fixture(scope="module")
def ours32():
    return ChgnetPotential(device=DEVICE)


@pytest.fixture(scope="module")
def ours64():
    return ChgnetPotential(device=DEVICE, dtype="float64")


def _random_set(rng, count: int, max_atoms: int = 200) -> list[Structure]:
    structs = [random_structure(rng, max_atoms, rattle=rng.uniform(0.03, 0.12)) for _ in range(count)]
    # tiny / skewed cells: one or two atoms, fewer atoms than neighbours, short self-images
    for n_sp, proto in ((1, "fcc-prim"), (1, "sc"), (2, "rocksalt"), (2, "bcc")):
        structs.append(random_structure(rng, 2, proto=proto, n_species=n_sp, rattle=0.05, shear=0.2))
    return structs


@pytest.mark.memory_gb(9)  # chgnet itself needs ~4.7 GB for the 1000-atom cell, ours its batch budget
def test_parity_float32(rng, ref32, ours32, ours64):
    """Default float32 model vs chgnet's float32 model (1-200 atoms, tiny cells, ~1000-atom cell).

    The reference itself carries float32 rounding noise (acos near collinear bonds amplifies it);
    where its distance to the float64 evaluation of the same function exceeds the tolerance, that noise is
    allowed. The float64 evaluation is ours (equal to chgnet's float64 to ~1e-8: test_parity_float64_exact_maths):
    chgnet's own needs about 10 GB for the 1000-atom cell.
    """
    structs = _random_set(rng, 14) + [supercell(rng, 1000, proto="rocksalt", bond=2.75)]
    ref = ref32.predict_structure(structs, task="efsm", batch_size=1)  # chgnet keeps a batch's whole graph: ~9 GB at 16
    ours = ours32.predict(structs)
    worst = dict.fromkeys(TOL, 0.0)
    for s, r, o in zip(structs, ref, ours, strict=False):
        err = parity_errors(r, o, len(s))
        bad = {q: v for q, v in err.items() if v > TOL[q]}
        if bad:  # compare with the reference's own float32 noise on this structure
            exact = ours64.predict(s)[0]
            noise = parity_errors({"e": exact["energy"] / len(s), "f": exact["forces"], "s": exact["stress"],
                                   "m": exact["magmoms"]},
                                  {"energy": float(r["e"]) * len(s), "forces": r["f"], "stress": r["s"],
                                   "magmoms": r["m"]}, len(s))
            for q, v in bad.items():
                assert v <= 2 * noise[q] + TOL[q], (
                    f"seed {SEED}: {s.properties['label']} {q} differs by {v:.2e} "
                    f"(tolerance {TOL[q]:.0e}, reference float32 noise {noise[q]:.2e})")
        for q in worst:
            worst[q] = max(worst[q], err[q])
    print(f"float32 parity ({DEVICE}) over {len(structs)} structures, max errors: "
          + ", ".join(f"{q} {v:.2e}" for q, v in worst.items()))


def test_reference_float64_mode(rng, ref32, ref64):
    """The float64 reference really computes in float64, and leaves chgnet's float32 mode as it was."""
    s = random_structure(rng, 12, rattle=0.05)
    r64 = ref64([s])[0]
    assert r64["f"].dtype == np.float64 and r64["s"].dtype == np.float64
    r32 = ref32.predict_structure(s, task="efsm")
    assert r32["f"].dtype == np.float32
    assert np.abs(r64["f"] - r32["f"]).max() < 1e-2  # the same model
    with pytest.raises(ValueError, match="float16"):
        ChgnetReference(dtype="float16")


def test_parity_float64_exact_maths(rng, ref64, ours64):
    """Both in float64: the same function to ~1e-8 (energy limited by chgnet's float32 composition)."""
    structs = _random_set(rng, 8, max_atoms=64)
    ref = ref64(structs)
    ours = ours64.predict(structs)
    tol = {"energy": 2e-6, "forces": 1e-6, "stress": 1e-5, "magmoms": 1e-6}
    worst = dict.fromkeys(tol, 0.0)
    for s, r, o in zip(structs, ref, ours, strict=False):
        err = parity_errors(r, o, len(s))
        for q, v in err.items():
            assert v <= tol[q], f"seed {SEED}: {s.properties['label']} {q} differs by {v:.2e}"
            worst[q] = max(worst[q], v)
    print(f"float64 parity ({DEVICE}) over {len(structs)} structures, max errors: "
          + ", ".join(f"{q} {v:.2e}" for q, v in worst.items()))


def _edge_sets(s: Structure):
    from chgnet.graph import CrystalGraphConverter

    g = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3)(s)
    ag = g.atom_graph.numpy()
    im = g.neighbor_image.numpy().round().astype(int)
    key = [(int(a), int(b), *map(int, c)) for (a, b), c in zip(ag, im, strict=False)]
    angles = {(int(r[0]), key[r[2]], key[r[4]]) for r in g.bond_graph.numpy()}
    return set(key), angles, len(g.bond_graph)


def _our_sets(s: Structure):
    t = [torch.tensor(s.frac_coords), torch.tensor(s.lattice.matrix)[None], torch.tensor(s.atomic_numbers),
         torch.tensor([len(s)])]
    g = build_graph(*(x.to(DEVICE) for x in t), max_candidates=5000)
    i, j, im = g.src.tolist(), g.dst.tolist(), g.image.round().long().tolist()
    fwd = [(a, b, *c) for a, b, c in zip(i, j, im, strict=False)]
    rev = [(b, a, *(-x for x in c)) for a, b, c in zip(i, j, im, strict=False)]
    edges = set(fwd) | set(rev)
    assert len(edges) == 2 * len(fwd)
    angles = set()
    for c, b1, b2, (o1, o2) in zip(g.angle_center.tolist(), g.angle_b1.tolist(), g.angle_b2.tolist(),
                                   g.angle_orient.tolist(), strict=False):
        d1 = fwd[b1] if o1 > 0 else rev[b1]
        d2 = fwd[b2] if o2 > 0 else rev[b2]
        assert d1[0] == c and d2[0] == c and d1 != d2
        angles.add((c, d1, d2))
    return edges, angles, g.n_angles


def test_neighbour_sets_match_chgnet(rng):
    structs = _random_set(rng, 6, max_atoms=40)
    # one atom in a small skewed cell: many self-images, fewer atoms than neighbours
    structs.append(Structure(Lattice.from_parameters(2.3, 2.6, 2.9, 62, 75, 110), ["Cu"], [[0.1, 0.2, 0.3]]))
    for s in structs:
        e_ref, a_ref, n_ref = _edge_sets(s)
        e_our, a_our, n_our = _our_sets(s)
        assert e_our == e_ref, s.properties.get("label")
        assert n_our == n_ref
        assert a_our == a_ref


def test_invariances_and_covariance(rng, ours64):
    s = random_structure(rng, 24, rattle=0.1)
    base = ours64.predict(s)[0]
    moved = s.copy()
    moved.translate_sites(range(len(s)), rng.normal(size=3), frac_coords=False)
    perm = rng.permutation(len(s))
    permuted = Structure(s.lattice, [s.species[k] for k in perm], s.frac_coords[perm])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    rotated = Structure(Lattice(s.lattice.matrix @ q.T), s.species, s.frac_coords)
    t, p, r = ours64.predict([moved, permuted, rotated])
    for other in (t, p, r):
        assert abs(other["energy"] - base["energy"]) < 1e-8
    np.testing.assert_allclose(t["forces"], base["forces"], atol=1e-8)
    np.testing.assert_allclose(p["forces"], base["forces"][perm], atol=1e-8)
    np.testing.assert_allclose(p["magmoms"], base["magmoms"][perm], atol=1e-8)
    np.testing.assert_allclose(r["forces"], base["forces"] @ q.T, atol=1e-8)
    np.testing.assert_allclose(r["stress"], q @ base["stress"] @ q.T, atol=1e-7)


def test_forces_and_stress_match_finite_differences(rng, ours64):
    s = random_structure(rng, 8, rattle=0.1)
    res = ours64.predict(s)[0]
    # float64: a small step keeps the O(h^2) truncation error far below the tolerance even for close atoms
    # (h = 1e-4 gave 5.6e-5 eV/A once on a steep repulsive pair); rounding error is about 1e-16 E / h
    h = 2e-5
    for atom in rng.choice(len(s), size=min(3, len(s)), replace=False):
        for ax in range(3):
            plus, minus = s.copy(), s.copy()
            d = np.zeros(3)
            d[ax] = h
            plus.translate_sites([int(atom)], d, frac_coords=False, to_unit_cell=False)
            minus.translate_sites([int(atom)], -d, frac_coords=False, to_unit_cell=False)
            ep, em = (r["energy"] for r in ours64.predict([plus, minus]))
            assert abs(-(ep - em) / (2 * h) - res["forces"][atom, ax]) < 1e-5
    # stress = dE/d(strain) / V (GPa)
    eps = np.zeros((3, 3))
    eps[0, 1] = h
    strained = [Structure(Lattice(s.lattice.matrix @ (np.eye(3) + sgn * eps)), s.species, s.frac_coords)
                for sgn in (1, -1)]
    ep, em = (r["energy"] for r in ours64.predict(strained))
    assert abs((ep - em) / (2 * h) / s.volume * 160.21766208 - res["stress"][0, 1]) < 1e-4


def test_batching_and_chunking_do_not_change_results(rng, ours32):
    structs = [random_structure(rng, 30, rattle=0.05) for _ in range(4)]
    together = ours32.predict(structs)
    small = ChgnetPotential(device=DEVICE, max_atoms=40, max_edges=2000, max_angles=2000, chunk=500)
    apart = small.predict(structs)
    for a, b in zip(together, apart, strict=False):
        assert abs(a["energy"] - b["energy"]) < 1e-4
        # float32: the same maths summed in another order; forces of several eV/A differ by a few 1e-6 relative
        np.testing.assert_allclose(a["forces"], b["forces"], rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(a["stress"], b["stress"], rtol=1e-5, atol=1e-4)


def test_bad_input_is_reported_per_structure(rng, ours32):
    good = random_structure(rng, 8, rattle=0.05)
    isolated = Structure(Lattice.cubic(15.0), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    isolated.properties["label"] = "lonely"
    nan = good.copy()
    nan.properties["label"] = "nan-coords"
    nan = Structure(nan.lattice, nan.species, np.where(np.arange(len(nan))[:, None] == 0, np.nan, nan.frac_coords))
    nan.properties["label"] = "nan-coords"
    alien = Structure(Lattice.cubic(3.0), ["Am"], [[0, 0, 0]])
    alien.properties["label"] = "americium"
    with pytest.raises(StructureError, match="lonely.*no neighbour"):
        ours32.predict([good, isolated])
    with pytest.raises(StructureError, match="nan-coords"):
        ours32.predict([nan])
    with pytest.raises(StructureError, match="americium.*Am"):
        ours32.predict([alien])
    # overlapping atoms are found on the graph (also through a periodic image), coincident ones before it
    close = Structure(Lattice.cubic(4.0), ["Li", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.95, 0.0, 0.02]])
    close.properties["label"] = "squeezed"
    same = Structure(Lattice.cubic(4.0), ["Li", "O"], [[0.25, 0.25, 0.25], [1.25, 0.25, 0.25]])
    same.properties["label"] = "twins"
    with pytest.raises(StructureError, match=r"squeezed.*closer than 0.5 A \(minimum distance 0.2"):
        ours32.predict([good, close])
    with pytest.raises(StructureError, match="twins.*same point"):
        ours32.predict([same])
    rec = ours32.predict([close, good, same], errors="record")
    assert "squeezed" in rec[0]["error"] and "twins" in rec[2]["error"] and "energy" in rec[1]
    out = ours32.predict([good, isolated, nan, alien, good], errors="record")
    assert [("error" in r) for r in out] == [False, True, True, True, False]
    assert "lonely" in out[1]["error"]
    # the same structure at two places of one float32 batch: equal to float32 rounding of the total (4 ulp)
    assert abs(out[0]["energy"] - out[4]["energy"]) <= 4 * np.spacing(np.float32(abs(out[0]["energy"])))


def test_wrong_checkpoint_is_refused(tmp_path):
    raw = torch.load(checkpoint_path(), map_location="cpu", weights_only=False)
    sd = raw["model"]["state_dict"]
    bad = dict(sd)
    del bad["site_wise.bias"]
    bad["extra.layer.weight"] = torch.zeros(3)
    bad["bond_embedding.weight"] = torch.zeros(64, 30)
    path = tmp_path / "bad.pth.tar"
    torch.save({"model": {"state_dict": bad, "model_args": raw["model"]["model_args"]}}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "missing key site_wise.bias" in msg and "unexpected key extra.layer.weight" in msg
    bad = dict(sd)
    bad["bond_embedding.weight"] = torch.zeros(64, 30)
    torch.save({"model": {"state_dict": bad, "model_args": raw["model"]["model_args"]}}, path)
    with pytest.raises(CheckpointError, match=r"bond_embedding.weight \(64, 30\)"):
        load_checkpoint(path)
    args = dict(raw["model"]["model_args"], gMLP_norm="batch")
    torch.save({"model": {"state_dict": sd, "model_args": args}}, path)
    with pytest.raises(CheckpointError, match="gMLP_norm"):
        load_checkpoint(path)
