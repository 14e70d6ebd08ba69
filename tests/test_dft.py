"""Tests for matfunnel.dft: real GPAW calculations (quick preset) plus the VASP route.

The GPAW tests run genuine PAW-PBE plane-wave DFT, single process, on 1-2 atom cells
(and a Cl2 molecule in a small box); together they take well under a minute.

VASP cannot exist on this machine (licensed binary, licensed POTCARs) and atomate2's
reference VASP outputs (its tests/test_data tree) are not shipped in the atomate2
wheel, so VASP is NOT run and atomate2's ``mock_vasp`` fake-run machinery cannot be
used: the VASP tests build the real atomate2 flow and check its jobs, makers and the
INCAR/KPOINTS it would write (POTCARs replaced by potcar_spec), and check the
TaskDoc -> MP2020 ComputedStructureEntry conversion on a hand-built (mocked) TaskDoc.
"""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matfunnel.dft import (
    GpawSettings,
    dft_hull,
    dft_hull_from_results,
    expand_results,
    kpoint_mesh,
    plan_dft_runs,
    run_gpaw,
)
from matfunnel.dft.gpaw import _initial_magmoms, _to_atoms, check_atoms

HAS_GPAW = importlib.util.find_spec("gpaw") is not None


def dft(func):
    """Real-GPAW test: marked `dft` (and `slow`-free: each run is seconds)."""
    return pytest.mark.dft(pytest.mark.skipif(not HAS_GPAW, reason="GPAW not installed")(func))


# ----------------------------------------------------------------- structures
def rocksalt(a: float = 5.64) -> Structure:
    conv = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    return conv.get_primitive_structure()


def cscl_nacl(a: float = 3.49) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def bcc_na_conventional() -> Structure:
    return Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cl2_box(box: float = 7.0, bond: float = 1.99) -> Structure:
    return Structure(Lattice.cubic(box), ["Cl", "Cl"], [[0, 0, 0], [bond / box, 0, 0]],
                     coords_are_cartesian=False)


QUICK = GpawSettings.quick()


@pytest.fixture(scope="module")
def nacl_static(tmp_path_factory):
    wd = tmp_path_factory.mktemp("gpaw_static")
    return run_gpaw(rocksalt(), QUICK, label="NaCl-rocksalt", workdir=wd), wd


# --------------------------------------------------------------- no-GPAW units
def test_settings_presets_and_roundtrip():
    q, s = GpawSettings.preset("quick"), GpawSettings.preset("standard")
    assert 250 <= q.ecut <= 300 and q.kpt_density < s.kpt_density and s.ecut >= 500
    assert q.relax is None and s.relax is None  # static by default
    assert GpawSettings.from_dict(q.as_dict()) == q
    assert GpawSettings.quick(ecut=280).ecut == 280
    assert q.energy_fingerprint() != s.energy_fingerprint()
    with pytest.raises(ValueError):
        GpawSettings(smearing="gaussian-ish")
    with pytest.raises(ValueError):
        GpawSettings.preset("nope")


def test_kpoint_mesh_rules():
    atoms = _to_atoms(rocksalt())
    assert kpoint_mesh(atoms, GpawSettings(kpt_density=2.0)) == [4, 4, 4]
    dense = kpoint_mesh(atoms, GpawSettings(kpt_density=4.0))
    assert all(d > c for d, c in zip(dense, [4, 4, 4], strict=False))
    assert kpoint_mesh(atoms, GpawSettings(kpts=(3, 3, 3))) == [3, 3, 3]
    kppa = kpoint_mesh(atoms, GpawSettings(kppa=1000))
    assert len(kppa) == 3 and kppa[0] == kppa[1] == kppa[2] and kppa[0] >= 6


def test_spin_auto_uses_mp_like_moments():
    fe_o = Structure(Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert _initial_magmoms(_to_atoms(fe_o), GpawSettings()) == [5.0, 0.6]
    assert _initial_magmoms(_to_atoms(fe_o), GpawSettings(spin="off")) is None
    assert _initial_magmoms(_to_atoms(rocksalt()), GpawSettings()) is None
    assert _initial_magmoms(_to_atoms(rocksalt()), GpawSettings(spin="on")) == [0.6, 0.6]
    o2 = Structure(Lattice.cubic(6.0), ["O", "O"], [[0, 0, 0], [0.2, 0, 0]])
    assert _initial_magmoms(_to_atoms(o2), GpawSettings()) == [0.6, 0.6]  # O2 triplet


def test_check_atoms_flags_broken_geometry():
    assert check_atoms(_to_atoms(rocksalt())) is None
    bad = Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0.01, 0, 0]])
    assert "overlap" in check_atoms(_to_atoms(bad))


# ---------------------------------------------------------------- real GPAW
@dft
def test_gpaw_static_nacl_sensible(nacl_static):
    rec, wd = nacl_static
    assert rec["error"] is None, rec["error"]
    assert rec["converged"] and rec["scf_converged"]
    assert rec["natoms"] == 2 and rec["composition"] == {"Na": 1.0, "Cl": 1.0}
    assert math.isfinite(rec["energy"])
    assert rec["energy_per_atom"] == pytest.approx(rec["energy"] / 2)
    # GPAW energies are relative to its reference atoms: a few eV/atom of cohesion
    assert -6.0 < rec["energy_per_atom"] < -1.0
    forces = np.array(rec["forces"])
    assert forces.shape == (2, 3) and np.abs(forces).max() < 1e-3  # zero by symmetry
    assert len(rec["stress"]) == 6 and np.all(np.isfinite(rec["stress"]))
    assert rec["spin_polarized"] is False and rec["magmom"] == 0.0
    assert rec["kpts"] == [4, 4, 4]
    assert rec["settings"]["ecut"] == QUICK.ecut
    import gpaw

    assert rec["gpaw_version"] == gpaw.__version__
    assert rec["wall_time_s"] > 0
    assert (wd / "NaCl-rocksalt.gpaw.txt").exists()
    assert Structure.from_dict(rec["structure"]).composition.reduced_formula == "NaCl"
    json.dumps(rec)  # plain JSON: can be a jobflow job output


@dft
def test_gpaw_static_is_deterministic(nacl_static, tmp_path):
    rec, _ = nacl_static
    again = run_gpaw(rocksalt(), QUICK, label="NaCl-rocksalt", workdir=tmp_path)
    assert again["error"] is None
    assert again["energy"] == pytest.approx(rec["energy"], abs=1e-6)


@dft
def test_gpaw_cell_relaxation_runs(tmp_path):
    # fcc Al strained to a=4.25 A (PBE ~4.04): a few FIRE/BFGS steps shrink the cell
    al = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.25), ["Al"], [[0, 0, 0]])
    al = al.get_primitive_structure()
    settings = GpawSettings.quick(relax="cell", fmax=0.05, steps=3)
    rec = run_gpaw(al, settings, label="Al-relax", workdir=tmp_path)
    assert rec["relax_steps"] >= 1
    assert rec["energy"] is not None and math.isfinite(rec["energy"])
    assert Structure.from_dict(rec["structure"]).volume < al.volume
    if not rec["relax_converged"]:  # 3 steps may not reach fmax: reported, not raised
        assert "relaxation not converged" in rec["error"] and "Al-relax" in rec["error"]
    assert (tmp_path / "Al-relax.opt.log").exists()


@dft
def test_dft_hull_nacl(tmp_path):
    candidates = [("NaCl-CsCl", cscl_nacl())]
    competing = [
        ("Na", bcc_na_conventional().get_primitive_structure()),
        ("Na-conventional", bcc_na_conventional()),   # same crystal: computed once
        ("Cl2", cl2_box()),
        ("NaCl-rocksalt", rocksalt()),
    ]
    hull, runs = dft_hull(candidates, competing, QUICK, workdir=tmp_path, return_runs=True)
    assert sorted(r["label"] for r in runs) == ["Cl2", "Na", "NaCl-CsCl", "NaCl-rocksalt"]
    assert all(r["error"] is None for r in runs), [r["error"] for r in runs]
    (res,) = hull
    assert res["error"] is None, res["errors"]
    # elemental references (and the stable rock-salt phase) sit on the hull
    assert res["competing_e_above_hull"]["Na"] == pytest.approx(0, abs=1e-9)
    assert res["competing_e_above_hull"]["Cl2"] == pytest.approx(0, abs=1e-9)
    assert res["competing_e_above_hull"]["NaCl-rocksalt"] == pytest.approx(0, abs=1e-9)
    assert set(res["elemental_references"]) == {"Na", "Cl"}
    # CsCl-type NaCl is strongly bound but above rock-salt
    assert -2.5 < res["dft_e_form_per_atom"] < -1.2
    assert math.isfinite(res["dft_e_above_hull"]) and 0 < res["dft_e_above_hull"] < 0.3
    assert res["stable"] is False
    assert res["dft_decomposition"][0]["id"] == "NaCl-rocksalt"
    assert res["dft_decomposition"][0]["fraction"] == pytest.approx(1.0)
    assert set(res["phases_used"]) == {"Na", "Na-conventional", "Cl2", "NaCl-rocksalt"}
    # physical check: PBE formation energy of rock-salt NaCl ~ -1.8 eV/atom
    e = {r["label"]: r["energy_per_atom"] for r in runs}
    e_form_rs = e["NaCl-rocksalt"] - 0.5 * (e["Na"] + e["Cl2"])
    assert -2.3 < e_form_rs < -1.5


@dft
def test_broken_structures_give_error_records(tmp_path):
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    rec = run_gpaw(overlap, QUICK, label="broken-1", workdir=tmp_path)
    assert rec["error"] and "broken-1" in rec["error"] and rec["converged"] is False
    assert rec["energy"] is None

    rec = run_gpaw("not a structure", QUICK, label="garbage", workdir=tmp_path)
    assert rec["error"] and "garbage" in rec["error"]

    # SCF cannot converge in 2 iterations: GPAW raises inside, we get a record
    rec = run_gpaw(rocksalt(), GpawSettings.quick(maxiter=2), label="noscf", workdir=tmp_path)
    assert rec["error"] and "noscf" in rec["error"] and "SCF" in rec["error"]
    assert rec["converged"] is False and rec["scf_converged"] is False

    # a hull whose elemental reference failed: candidate error, no exception
    na_overlap = Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0.02, 0, 0]])
    hull = dft_hull([("NaCl", rocksalt())], [("Na", na_overlap), ("Cl2", cl2_box())],
                    QUICK, workdir=tmp_path,
        run=lambda s, st, label, workdir: (run_gpaw(s, st, label, workdir)
                                           if label != "Cl2" else _fake(label, "Cl", -1.7)))
    assert hull[0]["error"] and "Na" in hull[0]["error"]
    assert hull[0]["dft_e_above_hull"] is None
    assert "Na" in hull[0]["excluded_phases"]


# ----------------------------------------------------- pure hull (fabricated)
def _fake(label, formula_el, epa, n=1, fp=None, error=None):
    comp = formula_el if isinstance(formula_el, dict) else {formula_el: float(n)}
    natoms = sum(comp.values())
    return {"label": label, "composition": comp, "natoms": natoms, "formula": label,
            "energy_per_atom": epa, "energy": None if epa is None else epa * natoms,
            "error": error, "converged": error is None, "wall_time_s": 0.0,
            "energy_fingerprint": fp or QUICK.energy_fingerprint()}


def test_dft_hull_from_results_math():
    comp = [_fake("Li", "Li", -1.9), _fake("Al", "Al", -3.7), _fake("Al-hcp", "Al", -3.6),
            _fake("LiAl-ref", {"Li": 1, "Al": 1}, -3.0),
            _fake("Al-bad", "Al", -9.0, error="structure 'Al-bad': boom"),
            _fake("Al-other", "Al", -9.0, fp={"ecut": 999}),
            _fake("Na", "Na", -1.3)]
    cands = [_fake("LiAl-new", {"Li": 1, "Al": 1}, -2.95), _fake("Li3Al", {"Li": 3, "Al": 1}, -2.7),
             _fake("dead", {"Li": 1, "Al": 1}, None, error="structure 'dead': SCF")]
    out = dft_hull_from_results(cands, comp)
    a, b, dead = out
    assert a["dft_e_form_per_atom"] == pytest.approx(-2.95 + 2.8)
    assert a["dft_e_above_hull"] == pytest.approx(0.05)
    assert a["dft_decomposition_energy"] == pytest.approx(0.05)
    assert a["elemental_references"]["Al"]["id"] == "Al"
    assert "Al-bad" in a["excluded_phases"] and "Al-other" in a["excluded_phases"]
    assert "Na" not in a["phases_used"] and "Al-hcp" in a["phases_used"]
    assert a["competing_e_above_hull"]["Al-hcp"] == pytest.approx(0.1)
    # Li3Al below the Li-LiAl tie line: stable, negative decomposition energy
    tie = 0.5 * -1.9 + 0.5 * -3.0
    assert b["stable"] and b["dft_e_above_hull"] == 0.0
    assert b["dft_decomposition_energy"] == pytest.approx(-2.7 - tie)
    assert dead["error"] and dead["dft_e_above_hull"] is None


def test_plan_deduplicates_and_expands():
    prim = bcc_na_conventional().get_primitive_structure()
    plan = plan_dft_runs([("c1", rocksalt())],
                         [("Na", prim), ("Na2", bcc_na_conventional()), ("c1", rocksalt()),
                          ("NaCl-big", rocksalt(5.9))])
    assert [sid for sid, _ in plan["runs"]] == ["c1", "Na", "NaCl-big"]
    assert plan["alias"]["Na2"] == "Na" and plan["alias"]["c1"] == "c1"
    recs = [_fake("c1", {"Na": 1, "Cl": 1}, -3.3), _fake("Na", "Na", -1.3),
            _fake("NaCl-big", {"Na": 1, "Cl": 1}, -3.2)]
    cand, comp = expand_results(recs, plan)
    assert [r["label"] for r in comp] == ["Na", "Na2", "c1", "NaCl-big"]
    na2 = comp[1]
    assert na2["duplicate_of"] == "Na" and na2["natoms"] == 2
    assert na2["energy"] == pytest.approx(-2.6)
    # the reduced plan a workflow passes between jobs (no structures) works too
    small = {k: plan[k] for k in ("alias", "candidate_ids", "competing_ids")}
    _, comp2 = expand_results(recs, small)
    assert comp2[1]["label"] == "Na2" and comp2[1]["energy_per_atom"] == -1.3
    with pytest.raises(ValueError):
        plan_dft_runs([("x", rocksalt())], [("x", cscl_nacl())])


# ------------------------------------------------------------------- VASP
def test_vasp_flow_jobs_and_inputs():
    """Builds atomate2's MP GGA flow; VASP is not run (it cannot exist here)."""
    pytest.importorskip("atomate2")
    from matfunnel.dft import vasp_flow

    fe_o = Structure(Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    flow = vasp_flow(fe_o, metadata={"candidate_id": "c-1"})
    relax_flow, static_job = flow.jobs
    assert [j.name for j in relax_flow.jobs] == ["MP GGA relax 1", "MP GGA relax 2"]
    assert static_job.name == "MP GGA static"
    assert flow.output.uuid == static_job.output.uuid  # flow output = static TaskDoc
    assert flow.metadata["candidate_id"] == "c-1"

    static_maker = static_job.maker
    static_in = static_maker.input_set_generator.get_input_set(fe_o, potcar_spec=True)
    incar = static_in.incar
    assert incar["ENCUT"] == 520 and incar["NSW"] == 0 and incar["ISPIN"] == 2
    assert incar["LDAU"] and incar["MAGMOM"] == [5, 0.6]  # MP GGA+U for Fe oxides
    relax_in = relax_flow.jobs[0].maker.input_set_generator.get_input_set(
        fe_o, potcar_spec=True)
    assert relax_in.incar["ISIF"] == 3 and relax_in.incar["NSW"] > 0
    assert "POTCAR.spec" in relax_in or "POTCAR.spec" in dict(relax_in)


def test_vasp_entry_from_mocked_taskdoc():
    """TaskDoc -> MP2020 ComputedStructureEntry on a hand-built (mock) TaskDoc."""
    pytest.importorskip("emmet.core.tasks")
    from emmet.core.tasks import OutputDoc, TaskDoc
    from monty.json import jsanitize
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    from matfunnel.dft import vasp_entry, vasp_result

    s = Structure(Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    params = {"potcar_spec": [{"titel": "PAW_PBE Fe_pv 06Sep2000", "hash": None},
                              {"titel": "PAW_PBE O 08Apr2002", "hash": None}],
              "run_type": "GGA+U", "is_hubbard": True, "hubbards": {"Fe": 5.3, "O": 0.0}}
    entry = ComputedEntry(s.composition, -15.0, parameters=params)
    td = TaskDoc.model_construct(entry=entry, output=OutputDoc.model_construct(structure=s),
                                 structure=s, task_id="mock-1")
    cse = vasp_entry(td)
    assert isinstance(cse, ComputedStructureEntry)
    assert cse.uncorrected_energy == pytest.approx(-15.0)
    assert cse.correction < 0  # MP2020 oxide + Fe U corrections
    assert cse.structure == s
    raw = vasp_entry(td, apply_mp2020=False)
    assert raw.correction == 0
    # the serialized form jobflow stores works too
    res = vasp_result(jsanitize(td, strict=True, allow_bson=True))
    assert res["error"] is None and res["mp2020_compatible"]
    assert res["energy_per_atom"] == pytest.approx(-7.5)
    assert res["corrected_energy_per_atom"] == pytest.approx(cse.energy_per_atom)
    # wrong functional -> not MP2020-compatible, still no exception
    bad = TaskDoc.model_construct(
        entry=ComputedEntry(s.composition, -15.0, parameters={**params, "run_type": "r2SCAN"}),
        output=OutputDoc.model_construct(structure=s), structure=s)
    assert vasp_result(bad)["mp2020_compatible"] is False
    assert vasp_result({"nothing": 1})["error"]


@dft
def test_gpaw_symmetry_analysis_failure_reruns_without_symmetry(tmp_path):
    # a relaxed B2-like LiAl cell on which GPAW's k-point symmetry analysis raises SymmetryAnalysisBug (found by
    # a campaign's loop); the run goes on with symmetry off and says so, and the energy matches a symmetry-free run
    lattice = [[-1.4235103078235252, -2.465592179391456, -1.4347190152704764e-10],
               [1.423510307914964, -2.4655921794442492, -3.236089600704928e-10],
               [-2.478956998813594e-10, -1.6437281191958975, 4.684045494716223]]
    cell = Structure(Lattice(lattice), ["Al", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    settings = GpawSettings.quick(ecut=200.0, kpts=(2, 2, 2))
    rec = run_gpaw(cell, settings, label="LiAl-symbug", workdir=tmp_path / "a")
    assert rec["error"] is None and rec["symmetry"].startswith("off (GPAW's symmetry analysis failed")
    off = run_gpaw(cell, GpawSettings.quick(ecut=200.0, kpts=(2, 2, 2), extra={"symmetry": "off"}),
                   label="LiAl-nosym", workdir=tmp_path / "b")
    assert "symmetry" not in off and rec["energy"] == pytest.approx(off["energy"], abs=1e-6)
