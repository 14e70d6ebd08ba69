"""The batched L-BFGS (engine/lbfgs.py) against ASE's LBFGS with the same potential, and optimizer= everywhere."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matfunnel.engine import relax_batched, relax_structures
from matfunnel.engine.optimizers import resolve
from matfunnel.engine.testing import PairPotential

FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ar_cell(rng, a=3.6, strain=0.04, rattle=0.1, reps=(1, 1, 1)) -> Structure:
    s = Structure(Lattice(a * (np.eye(3) + strain * rng.normal(size=(3, 3)))), ["Ar"] * 4, FCC)
    s.make_supercell(list(reps))
    s.perturb(rattle)
    return s


def _same(a, b, tol_e=1e-9, tol_x=1e-7):
    assert a.converged and b.converged, (a.error, b.error)
    assert a.n_steps == b.n_steps
    assert abs(a.energy - b.energy) < tol_e
    sa, sb = Structure.from_dict(a.final_structure), Structure.from_dict(b.final_structure)
    assert np.abs(sa.lattice.matrix - sb.lattice.matrix).max() < tol_x
    assert np.abs(sa.cart_coords - sb.cart_coords).max() < tol_x


@pytest.mark.parametrize("relax_cell", [True, False])
def test_identical_to_ase_lbfgs_on_rattled_and_strained_cells(rng, relax_cell):
    """Same potential: the same step counts, energies to 1e-9 eV and geometries to 1e-7 A (also a hard one)."""
    pot = PairPotential()
    structs = [ar_cell(rng), ar_cell(rng, reps=(1, 1, 2), strain=0.06),
               ar_cell(rng, reps=(2, 1, 2), strain=0.08, rattle=0.3)]  # the hard one: ~100 steps
    ref = relax_structures(structs, pot, fmax=0.01, max_steps=300, relax_cell=relax_cell, optimizer="lbfgs")
    got = relax_batched(structs, pot, fmax=0.01, max_steps=300, relax_cell=relax_cell, optimizer="lbfgs")
    for a, b in zip(ref, got, strict=True):
        _same(a, b)
        assert b.data["engine"] == "batched-lbfgs"
    # ASE's parameters are passed through as ASE takes them
    cfg = {"alpha": 20.0, "maxstep": 0.1, "memory": 5}
    ref = relax_structures(structs[:2], pot, fmax=0.01, max_steps=300, optimizer="lbfgs", config=cfg)
    got = relax_batched(structs[:2], pot, fmax=0.01, max_steps=300, optimizer="lbfgs", config=cfg)
    for a, b in zip(ref, got, strict=True):
        _same(a, b)


def test_selective_dynamics_held_like_ase(rng):
    pot = PairPotential()
    s = ar_cell(rng, reps=(1, 1, 2))
    s.add_site_property("selective_dynamics", [[False] * 3 if i < 2 else [True] * 3 for i in range(len(s))])
    (ref,) = relax_structures([s], pot, fmax=0.01, max_steps=300, relax_cell=False, optimizer="lbfgs")
    (got,) = relax_batched([s], pot, fmax=0.01, max_steps=300, relax_cell=False, optimizer="lbfgs")
    _same(ref, got)
    final = Structure.from_dict(got.final_structure)
    assert np.allclose(final.cart_coords[:2], s.cart_coords[:2])


def test_refill_and_failures_as_fire_has_them(rng):
    """Structures joining and leaving a running batch get the result they get alone; a broken one leaves alone."""
    pot = PairPotential(nan_element=36)
    fast = [ar_cell(rng, strain=0.0, rattle=0.02, a=3.55) for _ in range(3)]
    slow = [ar_cell(rng, strain=0.08, rattle=0.25, reps=(1, 1, 2)) for _ in range(2)]
    bad = ar_cell(rng)
    bad.replace(0, "Kr")
    structs = [slow[0], fast[0], bad, fast[1], slow[1], fast[2]]
    mixed = relax_batched(structs, pot, fmax=0.01, max_steps=400, max_atoms=12, optimizer="lbfgs")
    assert "NaN" in mixed[2].error and not mixed[2].converged
    for k in (0, 1, 3, 4, 5):
        (alone,) = relax_batched([structs[k]], pot, fmax=0.01, max_steps=400, optimizer="lbfgs")
        _same(mixed[k], alone, tol_x=1e-8)


def test_curvature_check_keeps_only_positive_curvature_pairs(rng):
    """With the check, the relaxation still converges to the same minimum on a smooth potential."""
    pot = PairPotential()
    structs = [ar_cell(rng, reps=(1, 1, 2), strain=0.06)]
    (plain,) = relax_batched(structs, pot, fmax=0.01, max_steps=300, optimizer="lbfgs")
    (checked,) = relax_batched(structs, pot, fmax=0.01, max_steps=300, optimizer="lbfgs",
                               config={"curvature_check": True})
    assert checked.converged and abs(checked.e_per_atom - plain.e_per_atom) < 1e-4
    with pytest.raises(ValueError, match="no curvature check"):
        relax_structures(structs, pot, optimizer="lbfgs", config={"curvature_check": True})


def test_optimizer_names_and_parameters_are_checked():
    assert resolve()[0].name == "fire"
    assert resolve("LBFGS", {"alpha": 10})[1].alpha == 10
    with pytest.raises(ValueError, match="unknown optimizer 'bfgs2'"):
        resolve("bfgs2")
    with pytest.raises(ValueError, match=r"unknown lbfgs parameter\(s\) \['dt'\]"):
        resolve("lbfgs", {"dt": 0.1})
    with pytest.raises(ValueError, match="memory >= 1"):
        resolve("lbfgs", {"memory": 0})
    from matfunnel.engine.fire import FireConfig

    with pytest.raises(ValueError, match="takes a LbfgsConfig"):
        resolve("lbfgs", FireConfig())


def test_relax_maker_takes_the_optimizer_and_keys_its_results_by_it(tmp_path, monkeypatch, rng):
    from jobflow import run_locally

    from matfunnel.makers import RelaxMaker
    from matfunnel.potential.registry import REGISTERED, PotentialEntry

    monkeypatch.setitem(REGISTERED, "pair-test",
                        PotentialEntry("pair-test", lambda device, **kw: PairPotential(device=device)))
    s = ar_cell(rng)
    docs = {}
    for opt in ("fire", "lbfgs", "lbfgs"):  # the second lbfgs run finds its result in the cache
        maker = RelaxMaker(potential="pair-test", optimizer=opt, fmax=0.01, progress=False,
                           result_cache=str(tmp_path / "cache.sqlite"))
        out = run_locally(maker.make([s], ["a"]), ensure_success=True, log=False)
        (doc,) = next(iter(out.values()))[1].output
        docs.setdefault(opt, []).append(doc)
    fire, (lb, lb_again) = docs["fire"][0], docs["lbfgs"]
    assert fire["converged"] and lb["converged"] and not lb["cached"] and lb_again["cached"]
    assert fire["data"]["engine"] == "batched-fire" and lb["data"]["engine"] == "batched-lbfgs"
    assert fire["n_steps"] != lb["n_steps"]  # not FIRE's result from the cache
    (ref,) = relax_batched([s], PairPotential(), fmax=0.01, optimizer="lbfgs")
    assert lb["n_steps"] == ref.n_steps and abs(lb["energy"] - ref.energy) < 1e-9
    maker = RelaxMaker(potential="pair-test", optimizer="newton", progress=False)
    with pytest.raises(ValueError, match="unknown optimizer 'newton'"):
        run_locally(maker.make([s], ["a"]), ensure_success=True, log=False, raise_immediately=True)
