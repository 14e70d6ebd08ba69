"""The potential interface on the reference backend (real CHGNet 0.3.0 weights)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from pymatgen.io.ase import AseAtomsAdaptor

from builders import fcc
from matfunnel.potential import StructureError, load_potential


def test_load_potential_unknown_name():
    with pytest.raises(ValueError, match="unknown potential 'nope'"):
        load_potential("nope")


def test_predict_matches_chgnet_and_accepts_atoms(reference_potential, rng):
    from chgnet.model import CHGNet

    s = fcc("Cu", 3.6 + 0.1 * rng.random())
    s.perturb(0.05)
    ref = CHGNet.load(model_name="0.3.0", verbose=False).predict_structure(s)
    (out,) = reference_potential.predict([s])
    assert out["energy"] == pytest.approx(float(ref["e"]) * len(s), abs=1e-5)
    np.testing.assert_allclose(out["forces"], ref["f"], atol=1e-5)
    np.testing.assert_allclose(out["stress"], ref["s"], atol=1e-4)
    assert out["forces"].shape == (4, 3) and out["stress"].shape == (3, 3) and out["magmoms"].shape == (4,)
    (from_atoms,) = reference_potential.predict([AseAtomsAdaptor.get_atoms(s)])
    assert from_atoms["energy"] == pytest.approx(out["energy"], abs=1e-6)


def test_calculator_units_and_sign(reference_potential):
    s = fcc("Al", 4.2)  # expanded: tensile stress, positive in chgnet/ASE convention
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = reference_potential.calculator()
    (out,) = reference_potential.predict([s])
    assert atoms.get_potential_energy() == pytest.approx(out["energy"])
    voigt = atoms.get_stress()
    assert voigt[0] == pytest.approx(out["stress"][0, 0] * units.GPa, rel=1e-6)
    # stress is the strain derivative of the energy / volume: check by finite difference
    eps = 1e-4
    e = []
    for sign in (1, -1):
        a = atoms.copy()
        a.set_cell(atoms.cell * (1 + sign * eps), scale_atoms=True)
        a.calc = reference_potential.calculator()
        e.append(a.get_potential_energy())
    dEdeps = (e[0] - e[1]) / (2 * eps) / atoms.get_volume() / 3
    assert dEdeps == pytest.approx(voigt[:3].mean(), rel=0.02, abs=1e-4)
    assert voigt[:3].mean() > 0  # expanded cell: energy rises with strain -> positive (tensile) stress


def test_bad_inputs_clear_errors(reference_potential):
    good = fcc("Al", 4.05)
    overlap = good.copy()
    overlap.append("Al", [0.01, 0.0, 0.0])
    nan = good.copy()
    nan.translate_sites([0], [np.nan, 0, 0], frac_coords=False)
    with pytest.raises(StructureError, match="'overlap'.*closer than 0.5"):
        reference_potential.predict([good, overlap], labels=["good", "overlap"])
    out = reference_potential.predict([good, overlap, nan], labels=["good", "overlap", "nan"], errors="record")
    assert "energy" in out[0] and np.isfinite(out[0]["energy"])
    assert "overlap" in out[1]["error"] and "NaN" in out[2]["error"]


def test_disordered_and_dummy_species_are_rejected_by_name():
    from pymatgen.core import DummySpecies, Lattice, Structure

    from matfunnel.potential.validate import site_numbers

    pot = load_potential("chgnet-0.3.0")
    alloy = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}, "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    vacancy = Structure(Lattice.cubic(3.6), [{"Fe": 0.9}, "Ni"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    dummy = Structure(Lattice.cubic(3.6), ["Fe", DummySpecies("X")], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ionic = Structure(Lattice.cubic(4.2), ["Mg2+", "O2-"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    out = pot.predict([alloy, vacancy, dummy, ionic], labels=["alloy", "vacancy", "dummy", "ionic"], errors="record")
    assert "'alloy'" in out[0]["error"] and "disordered" in out[0]["error"]
    assert "'vacancy'" in out[1]["error"] and "disordered" in out[1]["error"]
    assert "'dummy'" in out[2]["error"] and "X not covered" in out[2]["error"]
    assert np.isfinite(out[3]["energy"])  # oxidation-state decorations are fine
    assert site_numbers(ionic).tolist() == list(ionic.atomic_numbers) == [12, 8]


def test_coincident_atoms_and_element_table_agree_with_brute_force(rng):
    """The one-integer-per-point duplicate check and the element lookup table, on fresh random cells."""
    from pymatgen.core import Lattice, Structure

    from matfunnel.potential.validate import coincident_atoms, validate_structure

    for _ in range(40):
        n = int(rng.integers(2, 12))
        frac = rng.random((n, 3))
        if rng.random() < 0.5:  # a duplicate, possibly through a periodic image (x and x + 1)
            a, b = rng.choice(n, 2, replace=False)
            frac[b] = frac[a] + rng.integers(-1, 2, size=3)
        s = Structure(Lattice(np.eye(3) * 5 + rng.normal(0, 0.3, (3, 3))), ["Na"] * n, frac)
        wrapped = np.mod(frac, 1.0)
        diff = np.abs(wrapped[:, None] - wrapped[None])
        diff = np.minimum(diff, 1 - diff).max(2) + np.eye(n)
        assert coincident_atoms(s) == bool((diff < 1e-7).any())
    ok = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    validate_structure(ok, "ok", {11, 17}, check_distances=False)
    with pytest.raises(StructureError, match="element.*Cl.*not covered"):
        validate_structure(ok, "nacl", {11, 12}, check_distances=False)
