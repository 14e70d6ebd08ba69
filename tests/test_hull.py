"""Tests of matfunnel.hull (real pymatgen; only the Materials Project web API is mocked).

The MP web API cannot be reached from here (no internet), so the mp-api path is tested by
replacing ``mp_api.client.MPRester`` with a fake that answers from a hand-built fixture
(``tests/fixtures/mp/Fe-O_get_entries_in_chemsys.json``, made from pymatgen objects by
``make_fe_o_fixture.py`` next to it; NOT real MP data). Everything else is real pymatgen.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import types
from pathlib import Path

import pytest
from monty.json import MontyEncoder
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from matfunnel.hull import (
    build_phase_diagram,
    compute_hull,
    e_form_vs_mp_elements,
    elemental_reference_energies,
    mlip_entry,
    plot_hull,
    process_entries,
    reference_entries,
)
from matfunnel.hull.entries import mp_compatibility

FIXTURE = Path(__file__).parent / "fixtures" / "mp" / "Fe-O_get_entries_in_chemsys.json"
SECRET = "test-key-0123456789abcdef"  # stands in for a real MP_API_KEY

# MP2020Compatibility.yaml values (eV per anion / per U cation)
OXIDE_CORR = -0.687
MN_U_CORR = -1.668


def rocksalt(a: str, b: str, lat: float = 4.4) -> Structure:
    return Structure(Lattice.cubic(lat), [a] * 4 + [b] * 4,
                     [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5],
                      [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])  # fmt: skip


def b2(a: str, b: str, lat: float = 2.88) -> Structure:
    return Structure(Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def entry_at(structure: Structure, e_form: float, entry_id: str) -> ComputedStructureEntry:
    """MLIP entry whose uncorrected energy is e_form (eV/atom) above the MP elemental refs."""
    refs = elemental_reference_energies()
    comp = structure.composition
    e_ref = sum(comp[el] * refs[el.symbol] for el in comp.elements)
    return mlip_entry(structure, e_ref + e_form * comp.num_atoms, entry_id)


def corrected_entry_at(structure: Structure, e_form: float, entry_id: str) -> ComputedStructureEntry:
    """MLIP entry whose MP2020-*corrected* energy is e_form (eV/atom) above the MP refs."""
    (probe,), _ = process_entries([entry_at(structure, 0.0, entry_id)])
    return entry_at(structure, e_form - probe.correction_per_atom, entry_id)


# --- 1. MLIP entries and MP2020 corrections --------------------------------------------


def test_mn_oxide_gets_oxide_and_mn_u_corrections():
    entry = mlip_entry(rocksalt("Mn", "O"), -60.0, "MnO-1", model="test-mlip")
    assert entry.parameters["run_type"] == "GGA+U"
    assert entry.parameters["is_hubbard"] is True
    assert entry.parameters["hubbards"] == {"Mn": 3.9}
    assert entry.parameters["potcar_symbols"] == ["PAW_PBE Mn_pv", "PAW_PBE O"]
    assert entry.data["mlip_model"] == "test-mlip"

    accepted, rejected = process_entries([entry])
    assert rejected == []
    (out,) = accepted
    adj = {a.name: a.value for a in out.energy_adjustments}
    assert adj["MP2020 anion correction (oxide)"] == pytest.approx(4 * OXIDE_CORR)
    assert adj["MP2020 GGA/GGA+U mixing correction (Mn)"] == pytest.approx(4 * MN_U_CORR)
    assert out.correction == pytest.approx(4 * (OXIDE_CORR + MN_U_CORR))
    assert entry.correction == 0  # input untouched
    # the POTCAR labels would also satisfy the (here disabled) POTCAR check
    assert mp_compatibility(check_potcar=True).process_entry(entry, inplace=False) is not None


def test_intermetallic_gets_no_correction():
    entry = mlip_entry(b2("Ni", "Al"), -11.0, "NiAl-1")
    assert entry.parameters["run_type"] == "GGA"
    assert entry.parameters["hubbards"] == {}
    (out,), rejected = process_entries([entry])
    assert rejected == []
    assert out.correction == 0
    assert out.energy_adjustments == []


def test_rejected_entries_are_reported_with_reason():
    no_u = mlip_entry(rocksalt("Mn", "O"), -60.0, "MnO-noU")
    no_u.parameters.update(run_type="GGA", is_hubbard=False, hubbards={})
    scan = mlip_entry(b2("Ni", "Al"), -11.0, "NiAl-scan")
    scan.parameters["run_type"] = "r2SCAN"
    ok = mlip_entry(b2("Ni", "Al"), -11.0, "NiAl-ok")
    accepted, rejected = process_entries([no_u, scan, ok])
    assert [e.entry_id for e in accepted] == ["NiAl-ok"]
    reasons = {r["entry_id"]: r["reason"] for r in rejected}
    assert "Invalid U value" in reasons["MnO-noU"] and "Mn" in reasons["MnO-noU"]
    assert "run type" in reasons["NiAl-scan"]


# --- 2/3. offline references and the hull ------------------------------------------------


def test_elemental_reference_energies_and_mbd_formation_energy():
    refs = elemental_reference_energies()
    assert len(refs) == 89
    assert refs["O"] == pytest.approx(-4.9467, abs=1e-4)
    nial = entry_at(b2("Ni", "Al"), -0.6, "NiAl")
    assert e_form_vs_mp_elements(nial) == pytest.approx(-0.6)


def test_offline_hull_stable_binary_unstable_polymorph_and_elements():
    nial_stable = entry_at(b2("Ni", "Al"), -0.60, "NiAl-B2")
    nial_poly = entry_at(b2("Ni", "Al", lat=3.0), -0.55, "NiAl-poly")
    refs = reference_entries("Ni-Al", offline=True)
    assert refs.label == "offline: 0 MLIP competing phases + MP elemental refs 2023-02-07 for Al-Ni"
    assert refs.details["source"] == "offline"

    pd = build_phase_diagram([nial_stable, nial_poly], refs)
    for ref in refs.entries:  # elemental references sit on the hull at 0
        assert pd.get_e_above_hull(ref) == pytest.approx(0, abs=1e-9)
        assert pd.get_form_energy_per_atom(ref) == pytest.approx(0, abs=1e-9)

    stable, poly = compute_hull([nial_stable, nial_poly], refs)
    assert stable["e_above_hull"] == pytest.approx(0, abs=1e-9)
    assert stable["is_stable"] is True
    assert stable["e_form_per_atom"] == pytest.approx(-0.60)
    assert stable["e_form_per_atom_mp_elements"] == pytest.approx(-0.60)
    assert stable["hull_distance"] == pytest.approx(-0.60)  # below the references' hull
    assert stable["decomposition"] == [{"entry_id": "NiAl-B2", "formula": "AlNi", "amount": 1.0}]
    assert {d["formula"] for d in stable["decomposition_vs_references"]} == {"Ni", "Al"}
    # the polymorph is measured against the other candidate: 0.05 eV/atom above it ...
    assert poly["e_above_hull"] == pytest.approx(0.05)
    assert poly["is_stable"] is False
    assert poly["decomposition"][0]["entry_id"] == "NiAl-B2"
    # ... while vs the references alone it is still 0.55 eV/atom below
    assert poly["hull_distance"] == pytest.approx(-0.55)
    assert "NiAl-B2" in poly["hull_entry_ids"] and "NiAl-poly" not in poly["hull_entry_ids"]
    assert poly["reference_label"] == refs.label
    assert poly["error"] is None
    json.dumps([stable, poly])  # plain JSON, as jobflow stores it


def test_offline_mlip_competing_phases_and_uncovered_candidate():
    competing = [
        entry_at(rocksalt("Mn", "O"), -1.5, "MnO-ref"),
        entry_at(b2("Ni", "Al"), -0.6, "NiAl-outside"),  # not in Mn-O: skipped
    ]
    refs = reference_entries(["O", "Mn"], mlip_competing=competing, mp_api_key="")
    assert refs.label == "offline: 1 MLIP competing phases + MP elemental refs 2023-02-07 for Mn-O"
    assert refs.details["n_mlip_outside_chemsys"] == 1
    cand = entry_at(rocksalt("Mn", "O", lat=4.5), -1.4, "MnO-cand")
    nial = entry_at(b2("Ni", "Al"), -0.6, "NiAl-cand")
    res, bad = compute_hull([cand, nial], refs)
    # same composition and same corrections: e_above_hull is the raw difference per atom
    assert res["e_above_hull"] == pytest.approx(0.1)
    assert res["hull_distance"] == pytest.approx(0.1)
    assert res["correction_per_atom"] == pytest.approx((OXIDE_CORR + MN_U_CORR) / 2)
    assert bad["e_above_hull"] is None and "not covered" in bad["error"]


# --- 2a. the mp-api path (MPRester mocked: the MP API cannot be reached here) ---------


class FakeMPRester:
    """Answers get_entries_in_chemsys from the fixture; counts requests."""

    calls: list[dict] = []
    fail_with: Exception | None = None

    def __init__(self, api_key=None, **kwargs):
        self.api_key = api_key

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_entries_in_chemsys(self, elements, **kwargs):
        FakeMPRester.calls.append({"elements": sorted(elements), **kwargs})
        if FakeMPRester.fail_with is not None:
            raise FakeMPRester.fail_with
        return [ComputedStructureEntry.from_dict(d) for d in json.loads(FIXTURE.read_text())]


@pytest.fixture
def fake_mp(monkeypatch):
    FakeMPRester.calls = []
    FakeMPRester.fail_with = None
    module = types.ModuleType("mp_api.client")
    module.MPRester = FakeMPRester
    monkeypatch.setitem(sys.modules, "mp_api.client", module)
    return FakeMPRester


def test_mp_api_references_are_cached_and_never_hold_the_key(fake_mp, tmp_path, monkeypatch, caplog):
    """MP API mocked (unreachable here): fixture answer, disk cache, key never persisted."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MP_API_KEY", SECRET)
    cache = tmp_path / "mp-cache"

    first = reference_entries("O-Fe", mlip_competing=[entry_at(b2("Fe", "O"), 0, "x")], cache_dir=cache)
    assert len(fake_mp.calls) == 1
    assert fake_mp.calls[0]["elements"] == ["Fe", "O"]
    assert fake_mp.calls[0]["additional_criteria"] == {"thermo_types": ["GGA_GGA+U"]}
    assert first.label.startswith("mp-api (5 entries, retrieved 20")
    assert first.details["cache_hit"] is False
    assert first.details["n_mlip_competing_ignored"] == 1

    second = reference_entries(["Fe", "O"], cache_dir=cache)  # same sorted chemsys
    assert len(fake_mp.calls) == 1  # no second request
    assert second.label.startswith("mp-api (5 entries, cached 20")
    assert [e.entry_id for e in second.entries] == [e.entry_id for e in first.entries]

    (cache_file,) = cache.iterdir()
    assert cache_file.name == "Fe-O__GGA_GGA+U.json.gz"
    with gzip.open(cache_file, "rt") as fh:
        assert SECRET not in fh.read()

    feo = corrected_entry_at(rocksalt("Fe", "O"), -1.35, "FeO-cand")
    (res,) = compute_hull([feo], second)
    assert res["e_above_hull"] == pytest.approx(0.10, abs=1e-6)  # fixture FeO (on its hull) is at -1.45
    assert res["decomposition"][0]["entry_id"] == "mp-715262-GGA+U"
    for doc in (first, second):
        assert SECRET not in json.dumps(doc.as_dict(), cls=MontyEncoder)
    assert SECRET not in json.dumps(res, cls=MontyEncoder)
    assert SECRET not in caplog.text


def test_mp_api_failure_falls_back_offline_with_masked_error(fake_mp, tmp_path):
    """MP API mocked (unreachable here): a failing request degrades to offline references."""
    fake_mp.fail_with = ConnectionError(f"could not reach api.materialsproject.org with key {SECRET}")
    refs = reference_entries("Fe-O", mp_api_key=SECRET, cache_dir=tmp_path)
    assert refs.label.startswith("offline: 0 MLIP competing phases + MP elemental refs 2023-02-07")
    assert refs.label.endswith("(mp-api failed)")
    assert "ConnectionError" in refs.details["mp_api_error"]
    assert SECRET not in refs.details["mp_api_error"]
    assert list(tmp_path.iterdir()) == []  # nothing cached


# --- 4. plots ----------------------------------------------------------------------------


def test_plot_hull_binary_and_fallback(tmp_path):
    refs = reference_entries("Ni-Al", offline=True)
    cands = [entry_at(b2("Ni", "Al"), -0.6, "NiAl-B2"), entry_at(b2("Ni", "Al", 3.0), -0.5, "p")]
    png_magic = b"\x89PNG"
    out = plot_hull(build_phase_diagram(cands, refs), tmp_path / "pd.png")
    assert out.read_bytes()[:4] == png_magic
    out = plot_hull(compute_hull(cands, refs), tmp_path / "sub" / "bars.png")
    assert out.read_bytes()[:4] == png_magic
    quaternary = reference_entries("Li-Mn-O-Ni", offline=True)
    pd4 = build_phase_diagram([corrected_entry_at(rocksalt("Mn", "O"), -1.5, "MnO")], quaternary)
    out = plot_hull(pd4, tmp_path / "pd4.png")
    assert out.read_bytes()[:4] == png_magic


def test_offline_mlip_elements_replace_mp_corners():
    """An MLIP-relaxed elemental phase is the corner of the offline hull (self-consistent);
    the MP elemental entry then only measures the potential's offset."""
    from pymatgen.core import Lattice, Structure

    mp = elemental_reference_energies()
    al = Structure(Lattice.cubic(4.04), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    offset = 0.08
    al_mlip = mlip_entry(al, 4 * (mp["Al"] + offset), "Al-mlip")
    refs = reference_entries("Al-Ni", mlip_competing=[al_mlip], offline=True)
    assert refs.label == "offline: 1 MLIP competing phases + MP elemental refs 2023-02-07 for Ni"
    assert refs.details["elemental_refs"]["Al"] == "mlip"
    assert abs(refs.details["mlip_minus_mp_elemental"]["Al"] - offset) < 1e-9
    ids = {str(e.entry_id) for e in refs.entries}
    assert "Al-mlip" in ids and not any(i.startswith("mp-134") for i in ids)
    # a candidate at the MLIP Al energy is on the hull at 0 (not 0.08 above an MP corner)
    cand = mlip_entry(al, 4 * (mp["Al"] + offset), "Al-cand")
    (row,) = compute_hull([cand], refs)
    assert abs(row["e_above_hull"]) < 1e-9 and abs(row["e_form_per_atom"]) < 1e-9
