"""The torch-sim adapter on a third-party model family: MatterSim, through its own torch-sim interface.

Published MatterSim weights cannot be downloaded here, so a small M3GNet of MatterSim's own architecture is
built in a temporary folder (random initialisation, read-out fitted to EMT Cu/Al so that relaxations have a
basin; see ``thirdparty_models``), written with MatterSim's ``Potential.save`` and loaded by
``Potential.from_checkpoint``. The model reaches matfunnel by spec string only
(``torchsim:thirdparty_models:mattersim_model``); the reference is the package's own ASE calculator
(``MatterSimCalculator``, its own graph construction). Nothing is mocked.

Tolerances: the model runs in float32 on both sides (MatterSim's default), with energies of order 1 eV/atom:
1e-5 eV/atom on energies, 1e-5 eV/A on forces, 5e-4 GPa on stress (float32 sums over two different
neighbour lists: torch-sim-side graph construction vs pymatgen's in the calculator). Measured over 48 random
cells: 1.2e-6 eV/atom, 4.5e-7 eV/A, 4.3e-5 GPa; relaxed energies 1.4e-6 eV/atom apart, same FIRE step counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from matfunnel.potential import load_potential

pytest.importorskip("torch_sim")
mattersim = pytest.importorskip("mattersim")
pytest.importorskip("mattersim.torchsim")

import thirdparty_models  # noqa: E402 - tests/ is on sys.path; imported after the skips above

pytestmark = pytest.mark.filterwarnings("ignore:GraphConverter is deprecated:DeprecationWarning")

SPEC = "torchsim:thirdparty_models:mattersim_model"
EV_A3_TO_GPA = 160.21766208


def random_cells(rng, n: int, protos=None) -> list[Structure]:
    """Small rattled, strained rock-salt / fcc cells (fresh every run)."""
    protos = protos or [("Cu", "Cu", 3.75), ("Al", "Al", 3.95), ("Na", "Cl", 5.64), ("Mg", "O", 4.21),
                        ("Cu", "Al", 3.85)]
    out = []
    for k in range(n):
        a_el, b_el, a = protos[int(rng.integers(len(protos)))]
        a *= 1 + 0.03 * rng.standard_normal()
        prim = Lattice(0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]))  # fcc primitive cell
        species, coords = ([a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]]) if a_el != b_el else ([a_el], [[0, 0, 0]])
        s = Structure(prim, species, coords)
        s.make_supercell([[1, 0, 0], [0, 1, 0], [0, 0, int(rng.integers(1, 3))]])
        s.apply_strain(0.02 * rng.standard_normal(3))
        s.perturb(0.08)
        s.properties["label"] = f"{s.composition.reduced_formula}#{k}"
        out.append(s)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Graphs of a few atoms and ASE's 3x3 cell algebra: thread hand-offs (torch's and BLAS's) on shared cores
    cost more than the math."""
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(thirdparty_models.build_mattersim_checkpoint(tmp_path_factory.mktemp("mattersim") / "m3gnet.pth"))


@pytest.fixture(scope="module")
def pot(checkpoint):
    return load_potential(SPEC, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def calc(checkpoint):
    return thirdparty_models.mattersim_calculator(checkpoint)


def _reference(calc, s: Structure):
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def test_loaded_by_spec_string_is_mattersims_own_interface(pot, checkpoint):
    from mattersim.torchsim import TorchSimWrapper

    from matfunnel.potential.torchsim import TorchSimPotential

    assert isinstance(pot, TorchSimPotential) and isinstance(pot.model, TorchSimWrapper)
    assert pot.name == SPEC and pot.name_kwargs == {"checkpoint": checkpoint}
    info = pot.model_info()
    assert info["package"] == "mattersim" and info["version"] == mattersim.__version__
    assert info["weights_sha256"]  # of the model's parameters (no weights file named)
    # batch sizing uses MatterSim's own two-body cutoff (it has no ``cutoff`` attribute)
    assert not hasattr(pot.model, "cutoff") and pot.cutoff == float(pot.model.two_body_cutoff)


def test_static_energy_forces_stress_match_mattersim_calculator(pot, calc, rng):
    cells = random_cells(rng, 6)
    outs = pot.predict(cells)  # one batch through the adapter
    for s, o in zip(cells, outs, strict=True):
        e, f, v = _reference(calc, s)
        label = s.properties["label"]
        assert abs(o["energy"] - e) / len(s) < 1e-5, (label, o["energy"], e)
        np.testing.assert_allclose(o["forces"], f, atol=1e-5, err_msg=label)
        v = v * EV_A3_TO_GPA  # ASE eV/A^3 Voigt (xx yy zz yz xz xy) -> GPa, same sign as ours
        np.testing.assert_allclose(np.diag(o["stress"]), v[:3], atol=5e-4, err_msg=label)
        np.testing.assert_allclose([o["stress"][1, 2], o["stress"][0, 2], o["stress"][0, 1]], v[3:], atol=5e-4,
                                   err_msg=label)
        np.testing.assert_allclose(o["stress"], o["stress"].T, atol=1e-4)


def test_stress_sign_and_units_from_the_energy(pot):
    """Our GPa stress is (1/V) dE/d(strain): compressed fcc Cu pushes outwards (negative), stretched pulls in."""
    for a, sign in ((3.3, -1), (4.2, 1)):
        s = Structure(Lattice.cubic(a), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        h = 2e-3
        plus, minus = s.copy(), s.copy()
        plus.apply_strain([h, 0, 0])
        minus.apply_strain([-h, 0, 0])
        o, op, om = pot.predict([s, plus, minus])
        fd = (op["energy"] - om["energy"]) / (2 * h) / s.volume * EV_A3_TO_GPA
        assert np.sign(o["stress"][0, 0]) == sign and np.sign(fd) == sign
        assert o["stress"][0, 0] == pytest.approx(fd, rel=2e-2, abs=2e-3)


def test_batched_equals_one_by_one(pot, rng):
    cells = random_cells(rng, 5)
    together = pot.predict(cells)
    for s, o in zip(cells, together, strict=True):
        (alone,) = pot.predict([s])
        assert abs(o["energy"] - alone["energy"]) / len(s) < 1e-5
        np.testing.assert_allclose(o["forces"], alone["forces"], atol=1e-5)
        np.testing.assert_allclose(o["stress"], alone["stress"], atol=1e-4)


def test_batch_isolates_a_bad_member(pot):
    good = Structure(Lattice.cubic(3.75), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    bad = good.copy()
    bad.replace_species({"Cu": "Og"})  # Z=118: beyond MatterSim's one-hot embedding (max_z 94)
    outs = pot.predict([good, bad, good], errors="record")
    assert "error" not in outs[0] and "error" not in outs[2] and "error" in outs[1]
    assert outs[0]["energy"] == pytest.approx(outs[2]["energy"], abs=1e-5)


def test_relaxation_matches_ase_fire_with_mattersim_calculator(pot, calc, rng):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from matfunnel.engine import relax_batched

    cells = random_cells(rng, 3, protos=[("Cu", "Cu", 3.75), ("Al", "Al", 3.95), ("Cu", "Al", 3.85)])
    ours = relax_batched(cells, pot, fmax=0.05, max_steps=300)
    for s, r in zip(cells, ours, strict=True):
        assert r.error is None, r.error
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = calc
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=300)
        e_ref = atoms.get_potential_energy() / len(atoms)
        assert abs(r.e_per_atom - e_ref) < 1e-3, (s.properties["label"], r.e_per_atom, e_ref)
        relaxed = Structure.from_dict(r.final_structure)
        assert relaxed.volume / len(s) == pytest.approx(atoms.get_volume() / len(atoms), rel=1e-3)
