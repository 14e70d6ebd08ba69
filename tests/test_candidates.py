"""Candidates stage: real pymatgen data, no mocks."""

from __future__ import annotations

import json

import pytest
from monty.json import MontyDecoder, MontyEncoder
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from matfunnel.candidates import (
    CandidateSet,
    competing_phase_structures,
    generate_candidates,
    load_user_structures,
    parse_chemsys,
)


@pytest.fixture(scope="module")
def limno():
    return generate_candidates("Li-Mn-O")


@pytest.fixture(scope="module")
def alli():
    return generate_candidates("Al-Li", max_candidates=50)


def _rank_key(s: Structure):
    return (-s.properties["score"], len(s), s.properties["candidate_id"])


# -- chemsys --------------------------------------------------------------------------------------


def test_parse_chemsys():
    assert parse_chemsys("Li-Mn-O") == ["Li", "Mn", "O"]
    assert parse_chemsys("O-Li-Mn-Li") == ["Li", "Mn", "O"]
    assert parse_chemsys(["Zn", "Cu"]) == ["Cu", "Zn"]


@pytest.mark.parametrize("bad", ["Li-Xx-O", "Li--O", "", "li-o", "Li-Mn-O2", "Li-D"])
def test_parse_chemsys_errors(bad):
    with pytest.raises(ValueError, match="chemical system|element"):
        parse_chemsys(bad)


def test_unknown_element_in_generate_and_competing():
    with pytest.raises(ValueError, match="unknown element 'Qq'"):
        generate_candidates("Li-Qq")
    with pytest.raises(ValueError, match="unknown element 'Qq'"):
        competing_phase_structures("Qq-O")


# -- generation -----------------------------------------------------------------------------------


def test_limno_candidates_charge_neutral_and_in_system(limno):
    assert len(limno) > 0
    assert limno.params["ionic"] is True
    for s in limno:
        p = s.properties
        assert {e.symbol for e in s.composition.elements} == {"Li", "Mn", "O"}
        oxi = p["oxidation_states"]
        charge = sum(oxi[el.symbol] * n for el, n in s.composition.items())
        assert abs(charge) < 1e-6, (p["candidate_id"], oxi)
        assert p["role"] == "candidate" and p["label"] == p["candidate_id"]
        assert p["candidate_id"].startswith(s.composition.reduced_formula + "-")
        assert p["source"] == "aflow" and p["source_id"] and p["prototype"]["aflow"]
        assert p["substitution"] and 0 < p["score"] <= 1
        assert all(site.specie.symbol in ("Li", "Mn", "O") for site in s)  # plain elements
    assert len(set(limno.ids)) == len(limno)
    st = limno.stats
    assert st["valid"] == st["generated"] - st["invalid"]
    assert st["returned"] == len(limno) == st["examined"] - st["duplicates"]
    assert st["capped"] == st["valid"] - st["examined"]


def test_deterministic(limno):
    again = generate_candidates("Li-Mn-O")
    assert again.ids == limno.ids
    assert [s.properties["score"] for s in again] == [s.properties["score"] for s in limno]


def test_intermetallic_ranking_and_cap(alli):
    assert len(alli) == 50 and alli.stats["capped"] > 0
    assert alli.params["ionic"] is False
    for s in alli:
        assert {e.symbol for e in s.composition.elements} == {"Al", "Li"}
        assert s.properties["oxidation_states"] is None
    # documented ranking: score descending, then fewer sites, then candidate id
    keys = [_rank_key(s) for s in alli]
    assert keys == sorted(keys)
    assert [s.properties["rank"] for s in alli] == list(range(50))
    capped = generate_candidates("Al-Li", max_candidates=7)
    assert len(capped) == 7
    assert capped.ids == alli.ids[:7]


def test_user_duplicate_in_other_setting_is_removed(limno):
    best = limno.candidates[0]
    plain = Structure(best.lattice, [sp.symbol for sp in best.species], best.frac_coords)
    supercell = plain * (2, 1, 1)
    shifted = plain.copy()
    shifted.translate_sites(range(len(shifted)), [0.13, 0.27, 0.31], frac_coords=True)
    supercell.properties = {"label": "my-supercell"}
    shifted.properties = {"label": "my-shifted"}
    res = generate_candidates("Li-Mn-O", user_structures=[supercell, shifted])
    assert res.stats["sources_user"] == 2
    top = res.candidates[0]
    # the user structure is kept as is with score 1 and wins; its copies are duplicates
    assert top.properties["source"] == "user" and top.properties["score"] == 1.0
    assert best.properties["candidate_id"] not in res.ids
    assert best.properties["source_id"] in top.properties["duplicates"]
    assert res.stats["duplicates"] >= limno.stats["duplicates"] + 2
    same_formula = [s for s in res if s.properties["source"] == "user"]
    assert len(same_formula) == 1  # supercell and shifted copy collapse into one


def test_invalid_candidates_are_reported_not_raised():
    # Cs-Cl 0.6 A apart passes validation, but shrinks to ~0.36 A once scaled to Li-F radii
    tight = Structure(Lattice.cubic(4.0), ["Cs", "Cl"], [[0, 0, 0], [0.15, 0, 0]])
    tight.properties = {"label": "tight"}
    res = generate_candidates("Li-F", user_structures=[tight], sources=("user",))
    assert res.stats["invalid"] >= 1
    assert any("closer than" in r["reason"] and r["source_id"] == "user:tight" for r in res.rejected)
    assert all("closer" not in str(s.properties) for s in res)


def test_candidate_set_roundtrip(limno):
    text = json.dumps(limno, cls=MontyEncoder)
    back = json.loads(text, cls=MontyDecoder)
    assert isinstance(back, CandidateSet)
    assert back.ids == limno.ids and back.stats == limno.stats


# -- user files -----------------------------------------------------------------------------------


@pytest.fixture()
def user_dir(tmp_path):
    # anti-fluorite Li2O, conventional cell (12 atoms)
    li = [[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)]
    o = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    good = Structure(Lattice.cubic(4.61), ["Li"] * 8 + ["O"] * 4, li + o)
    CifWriter(good).write_file(tmp_path / "good.cif")
    good.to(filename=str(tmp_path / "good_POSCAR"), fmt="poscar")
    (tmp_path / "good_list.json").write_text(json.dumps([good.as_dict(), good.as_dict()]))
    (tmp_path / "garbage.cif").write_text("this is not a CIF file\n<html>oops</html>\n")
    (tmp_path / "empty.vasp").write_text("")
    overlap = Structure(Lattice.cubic(4.0), ["Li", "O"], [[0, 0, 0], [0.05, 0, 0]])
    overlap.to(filename=str(tmp_path / "overlap.vasp"), fmt="poscar")
    CifWriter(overlap).write_file(tmp_path / "overlap.cif")
    no_atoms = Structure(Lattice.cubic(4.0), [], [])
    (tmp_path / "no_atoms.json").write_text(json.dumps(no_atoms.as_dict()))
    (tmp_path / "README.txt").write_text("not a structure, ignored when scanning the folder")
    return tmp_path


def test_load_user_structures_reports_bad_files(user_dir):
    structs, errors = load_user_structures(user_dir)
    files = sorted(s.properties["source_file"].rsplit("/", 1)[-1] for s in structs)
    assert files == ["good.cif", "good_POSCAR", "good_list.json", "good_list.json"]
    assert all(s.composition.reduced_formula == "Li2O" for s in structs)
    bad = {e["file"].rsplit("/", 1)[-1]: e for e in errors}
    assert set(bad) == {"garbage.cif", "empty.vasp", "overlap.vasp", "overlap.cif", "no_atoms.json"}
    for name, err in bad.items():
        assert name in err["error"]  # every message names its file
    assert "closer than" in bad["overlap.vasp"]["error"]
    assert "no atoms" in bad["no_atoms.json"]["error"]
    assert "empty" in bad["empty.vasp"]["error"]
    labels = [s.properties["label"] for s in structs]
    assert "good_list#0" in labels and "good_list#1" in labels


def test_generate_with_user_files(user_dir):
    res = generate_candidates("Li-O", user_structures=[user_dir], sources=("user",), max_candidates=10)
    assert len(res.errors) == 5
    assert res.stats["sources_user"] == 4
    # four copies of the same user structure -> one candidate
    assert [s.properties["source"] for s in res] == ["user"] * len(res)
    assert sum(s.properties["score"] == 1.0 for s in res) == 1


# -- competing phases -----------------------------------------------------------------------------


def test_competing_phases_binary_intermetallic():
    phases = competing_phase_structures("Al-Li")
    labels = [s.properties["label"] for s in phases]
    assert len(labels) == len(set(labels))
    assert all(s.properties["role"] == "competing" for s in phases)
    elems = {s.composition.reduced_formula for s in phases if s.properties["kind"] == "element"}
    assert elems == {"Al", "Li"}
    assert "Li:bcc(A2)" in labels and "Al:fcc(A1)" in labels
    binaries = [s for s in phases if s.properties["kind"] == "binary"]
    assert len(binaries) >= 5
    assert all({e.symbol for e in s.composition.elements} == {"Al", "Li"} for s in binaries)
    assert 5 <= len(phases) <= 60 and max(len(s) for s in phases) <= 10
    assert [s.properties["label"] for s in competing_phase_structures("Li-Al")] == labels


def test_competing_phases_ionic_are_charge_neutral():
    phases = competing_phase_structures("Li-Mn-O")
    labels = {s.properties["label"] for s in phases}
    assert {"Li:bcc(A2)", "Mn:bcc(A2)", "O2:alpha-O2", "MnO:rocksalt(B1)", "Li2O:fluorite(C1)"} <= labels
    o2 = next(s for s in phases if s.properties["label"] == "O2:alpha-O2")
    assert min(o2.distance_matrix[0][1:]) == pytest.approx(1.208, abs=1e-3)
    ox_formulas = {s.composition.reduced_formula for s in phases if "O" in s.composition}
    assert "LiO" not in ox_formulas and "Li2O" in ox_formulas
    assert {"MnO", "MnO2", "Mn2O3"} <= ox_formulas


def test_mixed_valence_spinel_is_kept():
    """Spinel LiMn2O4 needs Mn3+/Mn4+: no one-state-per-site map is neutral, yet it must not be
    filtered out; its recorded oxidation states balance (Mn 3.5)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    cands = generate_candidates("Li-Mn-O", max_candidates=60, max_sites=14)
    spinels = [s for s in cands if s.composition.reduced_formula == "LiMn2O4"]
    assert spinels
    assert any(SpacegroupAnalyzer(s, symprec=0.1).get_space_group_symbol() == "Fd-3m" for s in spinels)
    for s in spinels:
        oxi = s.properties["oxidation_states"]
        assert abs(oxi["Mn"] - 3.5) < 1e-6
        assert abs(sum(oxi[el.symbol] * n for el, n in s.composition.items())) < 1e-6
