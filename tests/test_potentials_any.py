"""Any MLIP by name: the registry, the torch-sim adapter (real SevenNet-0 weights from the sevenn wheel,
against sevenn's own ASE calculator), the unbatched ASE adapter, and clear errors for bad names and
missing weights. Nothing is mocked."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matfunnel.potential import (
    UnknownPotential,
    WeightsMissing,
    load_potential,
    registry,
)

pytest.importorskip("torch_sim")
sevenn = pytest.importorskip("sevenn")


def random_cells(rng, n: int) -> list[Structure]:
    """Small rattled, strained cells of elements SevenNet-0 covers (fresh every run)."""
    protos = [("Cu", "Cu", 3.62), ("Na", "Cl", 5.64), ("Mg", "O", 4.21), ("Al", "Al", 4.05), ("Li", "F", 4.03)]
    out = []
    for k in range(n):
        a_el, b_el, a = protos[int(rng.integers(len(protos)))]
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a * (1 + 0.03 * rng.standard_normal())),
                                      [a_el, b_el] if a_el != b_el else [a_el],
                                      [[0, 0, 0], [0.5, 0.5, 0.5]] if a_el != b_el else [[0, 0, 0]])
        s = s.get_primitive_structure()
        s.make_supercell([[1, 0, 0], [0, 1, 0], [0, 0, int(rng.integers(1, 3))]])
        s.apply_strain(0.02 * rng.standard_normal(3))
        s.perturb(0.08)
        s.properties["label"] = f"{s.composition.reduced_formula}#{k}"
        out.append(s)
    return out


@pytest.fixture(scope="module")
def sevennet():
    return load_potential("sevennet-0", calibrate=False)


@pytest.fixture(scope="module")
def sevenn_calc():
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator(str(registry.resolve("sevennet-0").weights_path()), device="cpu")


def test_registry_lists_models_and_status():
    rows = {r.name: r for r in registry.describe()}
    for name in ("chgnet-0.3.0", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0"):
        assert rows[name].status == "ready", rows[name]
    assert rows["sevennet-omni"].status.startswith("needs weights at ")  # not in the wheel
    assert rows["matris-10m-oam"].status.startswith("needs weights at ") or rows["matris-10m-oam"].status == "ready"


def test_bad_names_and_missing_weights_one_clear_error():
    with pytest.raises(UnknownPotential, match="unknown potential 'no-such-model'.*sevennet-0"):
        load_potential("no-such-model")
    with pytest.raises(UnknownPotential, match="cannot import module 'no_such_pkg.models'"):
        load_potential("torchsim:no_such_pkg.models:make")
    with pytest.raises(UnknownPotential, match="has no attribute 'Nope'"):
        load_potential("ase:ase.calculators.lj:Nope")
    with pytest.raises(UnknownPotential, match="PREFIX:MODULE:CALLABLE"):
        load_potential("torchsim:just_a_module")
    with pytest.raises(WeightsMissing) as err:
        load_potential("sevennet-omni")
    msg = str(err.value)
    assert "checkpoint_sevennet_omni.pth" in msg and "SevenNet_omni" in msg and "Nothing is downloaded" in msg


def test_sevennet_static_matches_sevenn_calculator(sevennet, sevenn_calc, rng):
    cells = random_cells(rng, 6)
    outs = sevennet.predict(cells)  # one batch through the adapter
    for s, o in zip(cells, outs, strict=False):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = sevenn_calc
        e = atoms.get_potential_energy()
        assert abs(o["energy"] - e) / len(s) < 1e-5, s.properties["label"]
        np.testing.assert_allclose(o["forces"], atoms.get_forces(), atol=2e-4)
        v = atoms.get_stress() * 160.21766208  # ASE eV/A^3 Voigt -> GPa, same sign as ours
        np.testing.assert_allclose(np.diag(o["stress"]), v[:3], atol=2e-3)
        np.testing.assert_allclose([o["stress"][1, 2], o["stress"][0, 2], o["stress"][0, 1]], v[3:], atol=2e-3)


def test_sevennet_batch_isolates_a_bad_member(sevennet):
    good = Structure(Lattice.cubic(3.62), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    bad = good.copy()
    bad.replace_species({"Cu": "Og"})  # Z=118: outside SevenNet-0's type map
    outs = sevennet.predict([good, bad, good], errors="record")
    assert "error" not in outs[0] and "error" not in outs[2]
    assert outs[0]["energy"] == pytest.approx(outs[2]["energy"], abs=1e-5)
    assert "error" in outs[1] and "Og" in outs[1]["error"] or "structure" in outs[1]["error"]


def test_sevennet_relaxation_matches_ase_fire_with_sevenn(sevennet, sevenn_calc, rng):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from matfunnel.engine import relax_batched

    cells = random_cells(rng, 3)
    ours = relax_batched(cells, sevennet, fmax=0.05, max_steps=300)
    for s, r in zip(cells, ours, strict=False):
        assert r.error is None, r.error
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = sevenn_calc
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=300)
        e_ref = atoms.get_potential_energy() / len(atoms)
        assert abs(r.e_per_atom - e_ref) < 1e-3, (s.properties["label"], r.e_per_atom, e_ref)


def test_torchsim_spec_string_runs_any_model_lj_equals_ase_lj(rng):
    """A user's torch-sim model by one string (torch-sim's own Lennard-Jones) against ASE's LJ."""
    from ase.calculators.lj import LennardJones

    kw = {"sigma": 2.3, "epsilon": 0.4, "cutoff": 6.0}
    pot = load_potential("torchsim:torch_sim.models.lennard_jones:LennardJonesModel", **kw)
    ase_pot = load_potential("ase:ase.calculators.lj:LennardJones", sigma=2.3, epsilon=0.4, rc=6.0, smooth=False)
    assert isinstance(ase_pot.calc, LennardJones)
    s = Structure(Lattice.cubic(3.9 + 0.1 * rng.random()), ["Ar"] * 4,
                  [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    s.make_supercell(2)
    s.perturb(0.1)
    (a,) = pot.predict([s])
    (b,) = ase_pot.predict([s])
    # the two may differ by a constant energy shift at the cutoff: forces and stress must agree
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-4)
    np.testing.assert_allclose(a["stress"], b["stress"], atol=1e-3)
    assert a["energy"] < 0 and np.isfinite(b["energy"])


def test_ase_adapter_records_bad_member_and_goes_on():
    pot = load_potential("ase:ase.calculators.emt:EMT")
    ok = Structure(Lattice.cubic(4.05), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    bad = ok.copy()
    bad.replace_species({"Al": "Li"})  # EMT has no parameters for Li
    outs = pot.predict([ok, bad], errors="record")
    assert "energy" in outs[0] and "error" in outs[1] and "EMT" in outs[1]["error"] or "Li" in outs[1]["error"]


def test_tiny_offline_campaign_with_sevennet(tmp_path):
    """The whole funnel (candidates, batched relaxation, offline hull with competing phases relaxed by the same
    model, report) with ``potential: sevennet-0``; the report records the model."""
    import csv
    import json

    from matfunnel.cli import main

    spec = tmp_path / "tiny7.yaml"
    spec.write_text(json.dumps({
        "name": "tiny7", "chemsys": "Al-Li",
        "candidates": {"sources": ["aflow"], "max_candidates": 3, "max_sites": 2},
        "potential": {"name": "sevennet-0", "kwargs": {"calibrate": False}},
        "relax": {"fmax": 0.05, "max_steps": 150, "batch_size": 8},
        "hull": {"references": "offline", "competing_max_sites": 2},
        "dft": {"engine": "none"},
    }))
    run_dir = tmp_path / "run"
    assert main(["run", str(spec), "--run-dir", str(run_dir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["potential"] == "sevennet-0"
    rows = list(csv.DictReader((run_dir / "report.csv").open()))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= 2
    # the elemental corners come from the same model: relaxed fcc Al or bcc Li lands on the hull
    assert min(float(r["e_above_hull"]) for r in ok) < 0.005
    assert all(float(r["e_above_hull"]) >= -1e-6 for r in ok)


def test_results_record_the_model(sevennet):
    """Every relaxation document names the model, its package version and a checksum of its weights."""
    import hashlib

    from matfunnel.makers.relax import RelaxMaker

    info = sevennet.model_info()
    path = registry.resolve("sevennet-0").weights_path()
    assert info["name"] == "sevennet-0" and info["package"] == "sevenn" and info["version"] == sevenn.__version__
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    s = Structure(Lattice.cubic(4.05), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    maker = RelaxMaker(potential="sevennet-0", potential_kwargs={"calibrate": False}, progress=False)
    (doc,) = RelaxMaker.relax_job.original(maker, [s])
    assert doc["error"] is None and doc["model"] == info
    ours = load_potential("chgnet-0.3.0").model_info()
    other = load_potential("chgnet-reference").model_info()
    assert ours["weights_sha256"] == other["weights_sha256"]  # same 0.3.0 file behind both
    assert other["package"] == "chgnet" and ours["package"] == "matfunnel"


def test_potential_kwargs_from_the_command_line(tmp_path, capsys):
    """--potential-kwargs: a JSON object or @FILE; anything else is one clear error, and the CLI exits 2."""
    from matfunnel.cli import main

    assert registry.parse_kwargs(None) == {} and registry.parse_kwargs("") == {}
    assert registry.parse_kwargs('{"modal": "PBE", "cutoff": 6.0}') == {"modal": "PBE", "cutoff": 6.0}
    f = tmp_path / "kw.json"
    f.write_text('{"sigma": 2.5}')
    assert registry.parse_kwargs(f"@{f}") == {"sigma": 2.5}
    with pytest.raises(ValueError, match="not JSON.*sigma=2"):
        registry.parse_kwargs("sigma=2")
    with pytest.raises(ValueError, match="expected a JSON object.*list"):
        registry.parse_kwargs("[1, 2]")
    with pytest.raises(ValueError, match="cannot read .*missing.json"):
        registry.parse_kwargs(f"@{tmp_path / 'missing.json'}")

    args = ["phonons", "compare", "--reference", str(tmp_path), "--out", str(tmp_path / "o.csv")]
    assert main([*args, "--potential", "sevennet-0", "--potential-kwargs", "{bad"]) == 2
    assert "--potential-kwargs: not JSON" in capsys.readouterr().err
    assert main([*args, "--potential", "sevennet-omni"]) == 2  # weights not in the wheel
    assert "checkpoint_sevennet_omni.pth" in capsys.readouterr().err
    # the kwargs reach the model: a wrong keyword is the model's own error, not silently dropped
    assert main([*args, "--potential", "sevennet-0", "--potential-kwargs", '{"no_such_option": 1}']) == 2
    assert "does not accept the keyword arguments ['no_such_option']" in capsys.readouterr().err
