"""Training-data readers (matfunnel.train.data): real files written with ASE/pymatgen, a real phonopy reference and
a real job store written by the DFT stage (one tiny GPAW run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from pymatgen.core import Lattice, Structure

from matfunnel.common.units import EV_A3_TO_GPA
from matfunnel.train.data import (
    dataset_hash,
    frame_problem,
    load_frames,
    read_extxyz,
    read_json,
    read_phonopy_dataset,
    read_store_dft,
    write_json,
)
from matfunnel.train.frames import Frame, TrainingDataError

PHONON_REFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "phonons" / "pbe-reference"
HAS_GPAW = importlib.util.find_spec("gpaw") is not None


def voigt_to_3x3(v):
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def labelled_cu(rng, energy=-1.5, n=4, with_energy=True, forces=None):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.02, seed=int(rng.integers(1 << 30)))
    kw = {"forces": rng.normal(size=(len(atoms), 3)) if forces is None else forces,
          "stress": rng.normal(size=6) * 1e-3}
    if with_energy:
        kw["energy"] = energy
    atoms.calc = SinglePointCalculator(atoms, **kw)
    return atoms


def frame(a=4.0, energy=-3.0, n_forces=2, code="vasp"):
    s = Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Frame(structure=s, energy=energy, forces=np.full((n_forces, 3), 0.1), stress=np.eye(3) * 0.5,
                 magmoms=None, source="x#0", code=code)


# ------------------------------------------------------------------------------------------------ extxyz
def test_extxyz_round_trip_units_and_sign(tmp_path, rng):
    a = labelled_cu(rng, energy=-12.25)
    a.calc.results["magmoms"] = np.array([0.5, -0.5, 0.25, 0.0])
    # a real stress: EMT copper squeezed 5 %, so compressive (ASE sign: negative)
    b = bulk("Cu", "fcc", a=3.61 * 0.95, cubic=True)
    b.calc = EMT()
    emt_stress, emt_forces, emt_energy = b.get_stress(), b.get_forces(), b.get_potential_energy()
    b.calc = SinglePointCalculator(b, energy=emt_energy, forces=emt_forces, stress=emt_stress)
    # MACE-style reference labels in info/arrays, stress as 3x3, the code named
    c = bulk("Cu", "fcc", a=3.6, cubic=True)
    c.info.update({"REF_energy": -13.0, "REF_stress": voigt_to_3x3([1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3]),
                   "code": "vasp"})
    c.arrays["REF_forces"] = np.full((4, 3), 0.25)
    path = tmp_path / "train.extxyz"
    ase.io.write(path, [a, b, c], format="extxyz")

    frames, errors = read_extxyz(path)
    assert errors == [] and len(frames) == 3
    fa, fb, fc = frames
    assert [f.source for f in frames] == [f"{path}#{i}" for i in range(3)]
    assert fa.energy == pytest.approx(-12.25)
    np.testing.assert_allclose(fa.forces, a.calc.results["forces"], atol=1e-7)
    np.testing.assert_allclose(fa.stress, voigt_to_3x3(a.calc.results["stress"]) * EV_A3_TO_GPA, atol=1e-6)
    np.testing.assert_allclose(fa.magmoms, [0.5, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(fa.structure.cart_coords, a.positions, atol=1e-7)
    assert fa.code == "unknown" and fc.code == "vasp"
    # compressed cell: every diagonal stress component negative in GPa, the EMT numbers times 160.2
    assert np.all(np.diag(fb.stress) < -1.0)
    np.testing.assert_allclose(np.diag(fb.stress), emt_stress[:3] * 160.21766208, rtol=1e-6)
    assert fb.energy == pytest.approx(emt_energy)
    assert fc.energy == -13.0 and np.allclose(fc.forces, 0.25)
    np.testing.assert_allclose(fc.stress[0], [1e-3 * EV_A3_TO_GPA, 6e-3 * EV_A3_TO_GPA, 5e-3 * EV_A3_TO_GPA])
    assert all(frame_problem(f, ("energy", "forces", "stress")) is None for f in frames)


def test_extxyz_unreadable_and_non_periodic(tmp_path):
    junk = tmp_path / "junk.xyz"
    junk.write_text("this is\nnot an xyz file\n")
    frames, errors = read_extxyz(junk)
    assert frames == [] and len(errors) == 1 and str(junk) in str(errors[0])
    mol = bulk("Cu", "fcc", a=3.6, cubic=True)
    mol.pbc = [True, True, False]
    mol.calc = SinglePointCalculator(mol, energy=-1.0, forces=np.zeros((4, 3)))
    path = tmp_path / "slab.extxyz"
    ase.io.write(path, [mol], format="extxyz")
    frames, errors = read_extxyz(path)
    assert frames == [] and len(errors) == 1 and f"{path}#0" in str(errors[0]) and "not periodic" in str(errors[0])


# -------------------------------------------------------------------------------------------------- JSON
@pytest.mark.parametrize("name", ["frames.json", "frames.json.gz"])
def test_json_round_trip(tmp_path, name):
    frames = [frame(), frame(a=4.2, energy=-2.5, code="gpaw")]
    frames[1].magmoms = np.array([0.5, 0.0])
    frames[1].info = {"note": "strained", "values": np.arange(3)}
    path = write_json(frames, tmp_path / name)
    back, errors = read_json(path)
    assert errors == [] and len(back) == 2
    for f, g in zip(frames, back, strict=True):
        assert g.structure == f.structure and g.energy == f.energy and g.code == f.code
        np.testing.assert_array_equal(g.forces, f.forces)
        np.testing.assert_array_equal(g.stress, f.stress)
    assert back[0].magmoms is None and back[1].magmoms.tolist() == [0.5, 0.0]
    assert back[1].info == {"note": "strained", "values": [0, 1, 2]}
    assert dataset_hash(back) == dataset_hash(frames)


def test_json_plain_list_and_refused_class(tmp_path):
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"structure": s.as_dict(), "energy": -1.0, "stress": [1, 2, 3, 0, 0, 0]}]))
    (f,), errors = read_json(path)
    assert errors == [] and f.forces is None and np.allclose(np.diag(f.stress), [1, 2, 3]) and f.code == "unknown"
    evil = tmp_path / "evil.json"
    bad = s.as_dict()
    bad["lattice"] = {"@module": "os", "@class": "system", "command": "true"}
    evil.write_text(json.dumps([{"structure": bad, "energy": -1.0}]))
    frames, errors = read_json(evil)
    assert frames == [] and len(errors) == 1 and "refused class" in str(errors[0])


# ----------------------------------------------------------------------------------------------- phonopy
@pytest.mark.skipif(not (PHONON_REFS / "mp-1883").is_dir(), reason="shared phonon references not present")
def test_phonopy_reference_frames():
    import phonopy

    folder = PHONON_REFS / "mp-1883"
    frames, errors = read_phonopy_dataset(folder)
    ph = phonopy.load(str(folder / "phonopy.yaml.xz"), produce_fc=False, is_symmetry=False, log_level=0)
    disps = ph.dataset["first_atoms"]
    assert errors == [] and len(frames) == len(disps) == 2
    n = len(ph.supercell)
    for i, (f, d) in enumerate(zip(frames, disps, strict=True)):
        assert f.source == f"{folder}#{i}" and f.code == "vasp" and f.energy is None and f.stress is None
        assert f.forces.shape == (n, 3) and f.n_atoms == n
        np.testing.assert_allclose(f.forces, d["forces"])
        moved = np.linalg.norm(f.structure.cart_coords - ph.supercell.positions, axis=1)
        assert np.argmax(moved) == d["number"] == f.info["displaced_atom"]
        assert moved[d["number"]] == pytest.approx(np.linalg.norm(d["displacement"]), abs=1e-8)
        assert np.delete(moved, d["number"]).max() < 1e-8
    # no energies in the dataset: required energies drop every frame; forces alone load
    with pytest.raises(TrainingDataError, match=r"mp-1883#0: frame 0 has no energy, and energies are required"):
        load_frames(folder)
    loaded, errors = load_frames(folder, require=("forces",))
    assert errors == [] and len(loaded) == 2


# ----------------------------------------------------------------------------------------------- bad data
def test_bad_frames_are_dropped_one_error_each(tmp_path, rng):
    atoms = [labelled_cu(rng, energy=-float(i)) for i in range(5)]
    atoms[2].calc.results["forces"][1, 2] = np.nan
    atoms[3] = labelled_cu(rng, with_energy=False)
    xyz = tmp_path / "bad.extxyz"
    ase.io.write(xyz, atoms, format="extxyz")
    good = Structure(Lattice.cubic(3.6), ["Cu"] * 8, rng.random((8, 3)))
    docs = [{"structure": good.as_dict(), "energy": -1.0, "forces": np.zeros((8, 3)).tolist()},
            {"structure": good.as_dict(), "energy": -1.0, "forces": np.zeros((7, 3)).tolist()}]
    js = tmp_path / "more.json"
    js.write_text(json.dumps(docs))

    frames, errors = load_frames([xyz, js, tmp_path / "missing.extxyz"])
    assert [f.source for f in frames] == [f"{xyz}#0", f"{xyz}#1", f"{xyz}#4", f"{js}#0"]
    assert sorted(str(e) for e in errors) == sorted([
        f"{xyz}#2: forces contain NaN/inf",
        f"{xyz}#3: frame 3 has no energy, and energies are required",
        f"{js}#1: mismatched number of atoms: forces for 7 atoms, structure has 8",
        f"{tmp_path / 'missing.extxyz'}: not found",
    ])
    # without requiring energies the energy-less frame loads
    frames, errors = load_frames([xyz], require=("forces",))
    assert len(frames) == 4 and len(errors) == 1
    # a folder reads every training file inside, sorted
    frames, errors = load_frames(tmp_path)
    assert len(frames) == 4 and len(errors) == 3

    # zero-volume cell, bad stress shape
    flat = frame()
    flat.structure = Structure(Lattice([[4, 0, 0], [0, 4, 0], [0, 0, 0]]), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0]])
    assert "zero-volume cell" in frame_problem(flat)
    odd = frame()
    odd.stress = np.zeros(6)
    assert frame_problem(odd) == "stress of shape (6,), expected (3, 3)"

    # nothing usable: one exception naming the first errors
    allbad = tmp_path / "allbad.json"
    allbad.write_text(json.dumps(docs[1:]))
    with pytest.raises(TrainingDataError, match="no usable training frame: .*mismatched number of atoms"):
        load_frames(allbad)


# -------------------------------------------------------------------------------------------------- hash
def test_dataset_hash_stable_and_sensitive(tmp_path):
    frames = [frame(), frame(a=4.1, energy=-2.0)]
    h = dataset_hash(frames)
    assert len(h) == 64 and h == dataset_hash([frame(), frame(a=4.1, energy=-2.0)])
    changed = [frame(), frame(a=4.1, energy=-2.001)]
    assert dataset_hash(changed) != h
    assert dataset_hash(frames[::-1]) != h  # order-sensitive
    forces = frame()
    forces.forces[0, 0] += 1e-4
    assert dataset_hash([forces, frames[1]]) != h
    assert dataset_hash([frame(code="gpaw"), frames[1]]) != h
    # another process (another hash seed) gives the same digest
    path = write_json(frames, tmp_path / "f.json")
    code = ("import sys; from matfunnel.train.data import read_json, dataset_hash; "
            "print(dataset_hash(read_json(sys.argv[1])[0]))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == h


# ------------------------------------------------------------------------------------------------- store
@pytest.mark.dft
@pytest.mark.skipif(not HAS_GPAW, reason="GPAW not installed")
def test_read_store_dft_from_a_real_dft_stage(tmp_path):
    """The DFT gate's GPAW flow (quick preset, one 2-atom structure) run into a run folder's embedded store."""
    from jobflow import run_locally

    from matfunnel.common.documents import HullDoc
    from matfunnel.common.store import embedded_store
    from matfunnel.dft.gate import DftGateMaker

    # compressed bcc Li with one atom off centre: forces and a compressive stress; the competing elemental
    # phase is the same structure, so the stage runs GPAW once
    li = Structure(Lattice.cubic(3.0), ["Li", "Li"], [[0, 0, 0], [0.53, 0.5, 0.5]])
    cands = [{"label": "li-x", "converged": True, "final_structure": li.as_dict(), "error": None}]
    hull = HullDoc(rows=[{"entry_id": "li-x", "e_above_hull": 0.0, "decomposition_vs_references": []}],
                   reference_entries=[{"entry_id": "ref-Li", "composition": {"Li": 2}, "energy": -3.8}],
                   phases={"li-x": li.as_dict(), "ref-Li": li.as_dict()})
    gate = DftGateMaker(threshold=0.05, max_candidates=1, preset="quick", settings={"kpts": [2, 2, 2]})
    run_dir = (tmp_path / "run").resolve()
    store = embedded_store(run_dir)
    run_locally(gate.make(cands, hull, None, "Li"), store=store, create_folders=True, root_dir=str(run_dir / "jobs"),
                log=False, raise_immediately=True)
    dft_doc = store.query_one({"name": "dft hull"}, load=True)["output"]
    (run,) = dft_doc["runs"]
    # the stage's runs keep their forces: a campaign's loop fine-tunes on them (campaign/loop.py)
    assert run["error"] is None and len(run["forces"]) == 2

    frames, errors = read_store_dft(store)
    assert errors == [] and len(frames) == 1
    (f,) = frames
    assert f.source.endswith("#li-x") and f.code == "gpaw" and f.energy == pytest.approx(run["energy"])
    assert f.forces.shape == (2, 3) and abs(f.forces[0, 0]) > 1e-3
    np.testing.assert_allclose(f.forces[0], -f.forces[1], atol=1e-4)
    np.testing.assert_allclose(f.stress, voigt_to_3x3(run["stress"]) * EV_A3_TO_GPA)
    assert np.all(np.diag(f.stress) < 0)  # squeezed: compressive
    assert f.structure == Structure.from_dict(run["structure"])
    assert f.info["energy_fingerprint"] == run["energy_fingerprint"]
    store.close()

    # the same from the run folder's path, its store/ folder, and through load_frames
    for where in (run_dir, run_dir / "store"):
        again, errors = read_store_dft(where)
        assert errors == [] and dataset_hash(again) == dataset_hash(frames)
    loaded, errors = load_frames(run_dir, require=("energy", "forces", "stress"))
    assert errors == [] and len(loaded) == 1
    frames, errors = read_store_dft(tmp_path / "nothing")
    assert frames == [] and len(errors) == 1 and "not found" in str(errors[0])


def test_read_store_dft_vasp_taskdoc_and_failed_runs():
    """A maggma store holding an atomate2-shaped VASP TaskDoc (hand-written: VASP cannot run here) and a failed
    GPAW record: kbar with VASP's sign become GPa positive-tensile; the failed run is one error."""
    from maggma.stores import MemoryStore

    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]],
                  site_properties={"magmom": [0.6, -0.6]})
    task = {"task_label": "static", "calcs_reversed": [{}],
            "output": {"structure": s.as_dict(), "energy": -7.5, "forces": [[0.1, 0, 0], [-0.1, 0, 0]],
                       "stress": [[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]]}}
    failed = {"label": "bad", "code": "gpaw", "error": "structure 'bad': SCF did not converge", "structure": None}
    store = MemoryStore(key="uuid")
    store.connect()
    store.update([{"uuid": "a", "name": "static", "metadata": {"candidate_id": "c1"}, "output": task,
                   "completed_at": "2026-01-01"},
                  {"uuid": "b", "name": "gpaw bad", "output": failed, "completed_at": "2026-01-02"}])
    frames, errors = read_store_dft(store)
    assert len(frames) == 1 and len(errors) == 1
    (f,) = frames
    assert f.code == "vasp" and f.energy == -7.5 and f.source.endswith("#c1:static")
    np.testing.assert_allclose(f.stress, -np.eye(3))  # +10 kbar (VASP: wants to expand) = -1 GPa
    assert f.magmoms.tolist() == [0.6, 0.6] and not f.structure.site_properties
    assert "#bad" in str(errors[0]) and "SCF did not converge" in str(errors[0])
