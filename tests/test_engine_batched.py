"""The batched FIRE engine: ASE agreement, failure isolation, refill, symmetry, RelaxMaker on top."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matfunnel.engine import relax_batched, relax_structures
from matfunnel.engine.testing import PairPotential

FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """scipy's 3x3 expm/logm in ASE's filter crawl when OpenBLAS threads fight over busy cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: thread hand-offs on shared cores cost more than the math
    with threadpool_limits(1, user_api="blas"):
        yield
    torch.set_num_threads(n)


def ar_cell(rng, a=3.6, strain=0.04, rattle=0.1, reps=(1, 1, 1), el="Ar") -> Structure:
    lat = a * (np.eye(3) + strain * rng.normal(size=(3, 3)))
    s = Structure(Lattice(lat), [el] * 4, FCC)
    s.make_supercell(list(reps))
    s.perturb(rattle) if rattle else None
    return s


def test_identical_to_ase_fire_frechet_with_the_same_potential(rng):
    """Same potential, same arithmetic: step counts and geometries agree to round-off."""
    pot = PairPotential()
    structs = [ar_cell(rng), ar_cell(rng, reps=(1, 1, 2), strain=0.06)]
    for relax_cell in (True, False):
        ref = relax_structures(structs, pot, fmax=0.01, max_steps=200, relax_cell=relax_cell)
        got = relax_batched(structs, pot, fmax=0.01, max_steps=200, relax_cell=relax_cell)
        for a, b in zip(ref, got, strict=True):
            assert a.converged and b.converged and b.error is None
            assert a.n_steps == b.n_steps
            sa, sb = Structure.from_dict(a.final_structure), Structure.from_dict(b.final_structure)
            assert abs(a.energy - b.energy) < 1e-8
            assert np.abs(sa.lattice.matrix - sb.lattice.matrix).max() < 1e-7
            assert np.abs(sa.cart_coords - sb.cart_coords).max() < 1e-7
            if not relax_cell:
                assert np.allclose(sb.lattice.matrix, Structure.from_dict(b.initial_structure).lattice.matrix)


def test_agrees_with_ase_on_chgnet(rng):
    """chgnet-0.3.0 (float32): final energies within 1 meV/atom, cells within 0.5 %."""
    from matfunnel.potential import load_potential

    try:
        pot = load_potential("chgnet-0.3.0")
    except Exception:  # noqa: BLE001 - our own CHGNet not usable: fall back to the package
        pot = load_potential("chgnet-reference")
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.9), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    nacl.apply_strain((0.04 * rng.random(3) - 0.02).tolist())
    nacl.perturb(0.05)
    cu = Structure(Lattice(3.75 * (np.eye(3) + 0.02 * rng.normal(size=(3, 3)))), ["Cu"] * 4, FCC)
    cu.perturb(0.08)
    structs = [nacl, cu]
    ref = relax_structures(structs, pot, fmax=0.05, max_steps=200)
    got = relax_batched(structs, pot, fmax=0.05, max_steps=200)
    for a, b in zip(ref, got, strict=True):
        assert a.converged and b.converged, (a.error, b.error)
        assert abs(a.e_per_atom - b.e_per_atom) < 1e-3
        la = Structure.from_dict(a.final_structure).lattice
        lb = Structure.from_dict(b.final_structure).lattice
        assert np.abs(np.array(la.abc) / np.array(lb.abc) - 1).max() < 5e-3
        assert abs(la.volume / lb.volume - 1) < 5e-3
        assert np.abs(np.array(b.forces)).max() < 0.05 + 1e-9
        assert set(a.as_dict()) == set(b.as_dict())
        assert b.magmoms is not None and len(b.magmoms) == len(b.forces)


def test_broken_members_leave_and_the_rest_finish(rng):
    # Kr -> NaN energies, Xe -> exploding forces, Ne pairs attract without bound (collapse)
    pot = PairPotential(nan_element=36, explode_element=54, collapse_element=10)
    good = [ar_cell(rng), ar_cell(rng)]
    nan = ar_cell(rng)
    nan.replace(0, "Kr")
    boom = ar_cell(rng)
    boom.replace(1, "Xe")
    collapse = Structure(Lattice.cubic(6.0), ["Ne", "Ne", "Ar"], [[0, 0, 0], [0.2, 0, 0], [0.5, 0.5, 0.5]])
    overlap = ar_cell(rng, rattle=0)
    overlap.append("Ar", [0.02, 0, 0])
    structs = [good[0], nan, boom, collapse, overlap, good[1]]
    labels = ["good0", "nan", "boom", "collapse", "overlap", "good1"]
    seen = []
    res = relax_batched(structs, pot, labels=labels, fmax=0.02, max_steps=300,
                        on_result=lambda i, r: seen.append(i))
    assert sorted(seen) == list(range(6))
    for k in (0, 5):
        assert res[k].converged and res[k].error is None
        alone = relax_batched([structs[k]], pot, fmax=0.02, max_steps=300)[0]
        assert alone.n_steps == res[k].n_steps and abs(alone.energy - res[k].energy) < 1e-9
    assert "'nan'" in res[1].error and "NaN" in res[1].error
    assert "'boom'" in res[2].error and "exploded" in res[2].error
    assert "'collapse'" in res[3].error and res[3].n_steps > 0
    assert any(w in res[3].error for w in ("closer than", "exploded", "NaN"))
    assert "'overlap'" in res[4].error and "closer than" in res[4].error
    for k in (1, 2, 3, 4):
        assert not res[k].converged and res[k].final_structure is None


def test_refill_gives_each_structure_the_result_it_gets_alone(rng):
    pot = PairPotential()
    fast = [ar_cell(rng, strain=0.0, rattle=0.02, a=3.55) for _ in range(3)]
    slow = [ar_cell(rng, strain=0.08, rattle=0.25, reps=(1, 1, 2)) for _ in range(2)]
    structs = [slow[0], fast[0], fast[1], slow[1], fast[2]]
    order = []
    # room for ~2 structures at a time: finished ones must be replaced while the slow ones run
    mixed = relax_batched(structs, pot, fmax=0.01, max_steps=400, max_atoms=12,
                          on_result=lambda i, r: order.append(i))
    alone = [relax_batched([s], pot, fmax=0.01, max_steps=400)[0] for s in structs]
    for m, a in zip(mixed, alone, strict=True):
        assert m.converged and a.converged
        assert m.n_steps == a.n_steps
        assert abs(m.energy - a.energy) < 1e-9
        assert np.allclose(Structure.from_dict(m.final_structure).cart_coords,
                           Structure.from_dict(a.final_structure).cart_coords, atol=1e-8)
    assert order.index(1) < order.index(0)  # a fast one finished (and left) before the slow one


class NoisyPairPotential(PairPotential):
    """Pair potential plus random (asymmetric) noise on forces and stress."""

    def evaluate(self, *args, **kw):
        import torch

        ev = super().evaluate(*args, **kw)
        g = torch.Generator().manual_seed(self.n_calls)
        return ev._replace(
            forces=ev.forces + 0.02 * torch.randn(ev.forces.shape, generator=g, dtype=torch.float64),
            stress=ev.stress + 0.05 * torch.randn(ev.stress.shape, generator=g, dtype=torch.float64))


def test_symmetry_mode_keeps_the_space_group():
    # wurtzite-like AB with free u and c/a: noisy forces break the symmetry unless it is imposed
    s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.2, 5.3), ["Ar", "Kr"],
                                  [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.35]])
    assert SpacegroupAnalyzer(s, symprec=1e-3).get_space_group_number() == 186
    (free,) = relax_batched([s], NoisyPairPotential(), fmax=0.05, max_steps=200)
    (sym,) = relax_batched([s], NoisyPairPotential(), fmax=0.05, max_steps=200, symmetry=True)
    assert sym.converged, sym.error
    final = Structure.from_dict(sym.final_structure)
    assert SpacegroupAnalyzer(final, symprec=1e-4).get_space_group_number() == 186
    assert abs(final.volume / s.volume - 1) > 0.05  # it did relax
    assert SpacegroupAnalyzer(Structure.from_dict(free.final_structure), symprec=1e-4).get_space_group_number() < 186


def test_symmetry_mode_starts_from_the_exact_symmetry(rng):
    """Noise below ``symprec`` is removed before the first step, as ASE's FixSymmetry does (``refine_symmetry``:
    the same cell parameters, positions within the noise), so the result is symmetric far below the noise."""
    from ase.spacegroup.symmetrize import refine_symmetry
    from pymatgen.io.ase import AseAtomsAdaptor

    from matfunnel.engine.symmetry import symmetrized

    s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.2, 5.3), ["Ar", "Kr"],
                                  [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.35]])
    s.add_site_property("magmom", [0.5] * len(s))
    noisy = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 1e-4, (len(s), 3)),
                      coords_are_cartesian=True, site_properties=s.site_properties)
    assert SpacegroupAnalyzer(noisy, symprec=1e-3).get_space_group_number() == 186
    assert SpacegroupAnalyzer(noisy, symprec=1e-5).get_space_group_number() < 186
    ours = symmetrized(noisy, 1e-3)
    atoms = AseAtomsAdaptor.get_atoms(noisy)
    refine_symmetry(atoms, 1e-3)
    np.testing.assert_allclose(ours.lattice.abc + ours.lattice.angles, atoms.cell.cellpar(), atol=1e-9)
    # the same arrangement up to where the origin sits (a polar group) and, within the noise, the free parameter u
    # (ours is the orbit average, ASE takes spglib's idealised positions)
    shift = ours.cart_coords - atoms.positions
    assert np.abs(shift - shift.mean(0)).max() < 3e-4 and np.abs(shift).max() < 1e-3
    assert SpacegroupAnalyzer(ours, symprec=1e-6).get_space_group_number() == 186
    assert ours.site_properties["magmom"] == [0.5] * len(s)
    (res,) = relax_batched([noisy], NoisyPairPotential(), fmax=0.05, max_steps=200, symmetry=True)
    assert res.converged and res.initial_structure == noisy.as_dict()  # the document keeps the input as given
    assert SpacegroupAnalyzer(Structure.from_dict(res.final_structure), symprec=1e-5).get_space_group_number() == 186


def test_symmetric_relaxation_matches_ase_fixsymmetry(rng):
    """The phonon checks' relaxation (batched, ``symmetry=True``) against ASE's FIRE + FixSymmetry (the path they
    used before): the same path, to round-off."""
    from matfunnel.phonons.symmetric_relax import relax_symmetric

    s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.3, 5.2), ["Ar", "Kr"],
                                  [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.37]])
    e_ab, e_c = 0.03 * rng.random(2)
    s.apply_strain([e_ab, e_ab, e_c])  # keeps the hexagonal cell
    pot = PairPotential()
    ref = relax_symmetric(s, pot, fmax=0.005, max_steps=1000)
    (got,) = relax_batched([s], pot, fmax=0.005, max_steps=1000, symmetry=True)
    assert ref.converged and got.converged and got.n_steps == ref.n_steps
    final = Structure.from_dict(got.final_structure)
    assert abs(got.energy - ref.energy) / len(s) < 1e-9
    assert abs(final.volume / ref.structure.volume - 1) < 1e-9
    assert SpacegroupAnalyzer(final, symprec=1e-5).get_space_group_number() == 186


def test_relax_maker_runs_the_batched_engine_with_the_cache(tmp_path, monkeypatch):
    from jobflow import run_locally

    from matfunnel.makers import RelaxMaker
    from matfunnel.potential.registry import REGISTERED, PotentialEntry

    monkeypatch.setitem(REGISTERED, "pair-test",
                        PotentialEntry("pair-test", lambda device, **kw: PairPotential(device=device)))
    monkeypatch.setenv("MATFUNNEL_RESULT_CACHE", str(tmp_path / "cache.sqlite"))
    rng = np.random.default_rng(0)
    structs = [ar_cell(rng), ar_cell(rng)]
    maker = RelaxMaker(potential="pair-test", fmax=0.02, max_steps=200, progress=False)
    out = run_locally(maker.make(structs, ["a", "b"]), ensure_success=True, log=False)
    docs = next(iter(out.values()))[1].output
    assert [d["label"] for d in docs] == ["a", "b"]
    assert all(d["converged"] and not d["cached"] and d["potential"] == "pair-test" for d in docs)
    assert docs[0]["data"]["engine"] == "batched-fire"
    again = run_locally(maker.make(structs, ["a", "b"]), ensure_success=True, log=False)
    docs2 = next(iter(again.values()))[1].output
    assert all(d["cached"] for d in docs2)
    assert [d["energy"] for d in docs2] == [d["energy"] for d in docs]


def test_relax_maker_bad_inputs_get_error_documents_and_the_job_succeeds(tmp_path, monkeypatch):
    """A malformed document, a disordered structure and a potential failure each become that input's error
    document; the job succeeds, its output lives in the ``data`` store, and only the potential failure is left
    out of the cache (a rerun tries it again)."""
    from jobflow import run_locally

    from matfunnel.common.store import embedded_store
    from matfunnel.makers import RelaxMaker
    from matfunnel.potential.base import Evaluation
    from matfunnel.potential.registry import REGISTERED, PotentialEntry

    class FailsOnKr(PairPotential):
        fail = True

        def evaluate(self, numbers, positions, cells, n_atoms, **kw):
            ev = super().evaluate(numbers, positions, cells, n_atoms, **kw)
            counts = n_atoms.tolist()
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
            kr = [FailsOnKr.fail and int(numbers[lo]) == 36 for lo in starts]
            errs = ["OutOfMemoryError: pretend" if k else None for k in kr]
            energy = torch.where(torch.tensor(kr), torch.full_like(ev.energy, float("nan")), ev.energy)
            return Evaluation(energy, ev.forces, ev.stress, ev.magmoms, errs)

    import torch

    monkeypatch.setitem(REGISTERED, "pair-flaky",
                        PotentialEntry("pair-flaky", lambda device, **kw: FailsOnKr(device=device)))
    monkeypatch.setenv("MATFUNNEL_RESULT_CACHE", str(tmp_path / "cache.sqlite"))
    rng = np.random.default_rng(1)
    good, kr = ar_cell(rng), ar_cell(rng, el="Kr", a=4.0)
    disordered = Structure(Lattice.cubic(3.6), [{"Ar": 0.5, "Kr": 0.5}] * 4, FCC)
    inputs = [good.as_dict(), {"@class": "Structure", "sites": []}, disordered, kr]
    store = embedded_store(tmp_path / "store")
    maker = RelaxMaker(potential="pair-flaky", fmax=0.02, max_steps=200, progress=False)
    job = maker.make(inputs)
    run_locally(job, store=store, ensure_success=True, log=False)
    assert "blob_uuid" in store.docs_store.query_one({"uuid": job.uuid})["output"]  # not in the outputs document
    docs = store.get_output(job.uuid, load=True)
    assert docs[0]["converged"] and docs[0]["error"] is None
    assert docs[1]["label"] == "structure#1" and "not a pymatgen Structure document" in docs[1]["error"]
    assert "disordered" in docs[2]["error"] and docs[2]["label"] == "KrAr#2"
    assert "OutOfMemoryError" in docs[3]["error"]
    FailsOnKr.fail = False  # the "memory" is back
    job2 = maker.make(inputs)
    run_locally(job2, store=store, ensure_success=True, log=False)
    docs2 = store.get_output(job2.uuid, load=True)
    assert docs2[0]["cached"] and docs2[0]["energy"] == docs[0]["energy"]
    assert not docs2[3]["cached"] and docs2[3]["converged"] and docs2[3]["error"] is None  # retried, not replayed
    assert docs2[2]["error"] == docs[2]["error"] and "not a pymatgen" in docs2[1]["error"]


def test_cache_keys_tell_held_atoms_apart(rng):
    from matfunnel.common.cache import structure_fingerprint

    s = ar_cell(rng)
    held = s.copy(site_properties={"selective_dynamics": [[False] * 3] + [[True] * 3] * 3})
    free = s.copy(site_properties={"selective_dynamics": [[True] * 3] * 4})
    prints = [structure_fingerprint(x) for x in (s, held, free)]
    assert prints[0] != prints[1] != prints[2] and prints[0] == structure_fingerprint(s.as_dict())


def test_final_structure_documents_match_pymatgen(rng):
    """The engine writes final structures with ``structure_dict``; it must be pymatgen's own ``as_dict``."""
    from pymatgen.core import Lattice, Species, Structure

    from matfunnel.engine.documents import structure_dict

    for oxi in (False, True):
        species = [Species("Li", 1), Species("O", -2), Species("O", -2)] if oxi else ["Li", "O", "O"]
        s = Structure(Lattice(np.eye(3) * 3 + rng.normal(0, 0.3, (3, 3))), species, rng.random((3, 3)),
                      site_properties={"magmom": [1.0, 2.0, 3.0]})
        s.properties["label"] = "doc-test"
        lat = s.lattice.matrix @ (np.eye(3) + rng.normal(0, 0.02, (3, 3)))
        cart = s.cart_coords + rng.normal(0, 0.1, (3, 3))
        slow = Structure(Lattice(lat), s.species, cart, coords_are_cartesian=True)
        slow.properties = dict(s.properties)
        want, got = slow.as_dict(), structure_dict(s, lat, cart)
        assert set(got) == set(want) and set(got["lattice"]) == set(want["lattice"])
        assert got["properties"] == want["properties"] and got["charge"] == want["charge"]
        for k in ("a", "b", "c", "alpha", "beta", "gamma", "volume"):
            assert abs(got["lattice"][k] - want["lattice"][k]) < 1e-9
        for a, b in zip(got["sites"], want["sites"], strict=True):
            assert a["species"] == b["species"] and a["label"] == b["label"] and a["properties"] == b["properties"]
            np.testing.assert_allclose(a["abc"], b["abc"], atol=1e-12)
            np.testing.assert_allclose(a["xyz"], b["xyz"], atol=1e-12)
        assert Structure.from_dict(got) == slow


def test_initial_documents_equal_pymatgen(rng):
    """The engines' initial-structure documents (:class:`SiteTable`) are ``Structure.as_dict()`` exactly: oxidation
    states, dummy species, site labels and properties, structure properties; disordered sites use pymatgen's own."""
    from pymatgen.core import DummySpecies, Lattice, Species, Structure

    from matfunnel.engine.documents import SiteTable, initial_dict

    n = 7
    species = [Species("Li", 1), Species("O", -2), DummySpecies("X"), "Fe", "Fe", Species("Li", 1), "O"]
    s = Structure(Lattice(np.eye(3) * 4 + rng.normal(0, 0.3, (3, 3))), species, rng.random((n, 3)),
                  site_properties={"magmom": list(rng.normal(0, 1, n))},
                  labels=["a", None, "x", None, "Fe2", None, None])
    s.properties["label"] = "initial-doc"
    want = s.as_dict()
    assert SiteTable(s).initial() == want and initial_dict(s) == want
    assert [d["label"] for d in want["sites"]][:4] == ["a", "O2-", "x", "Fe"]  # the labels really differ
    disordered = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    assert initial_dict(disordered) == disordered.as_dict()
    with pytest.raises(ValueError, match="ordered"):
        SiteTable(disordered)
    assert initial_dict("not a structure") == {}


@pytest.mark.parametrize("cpp", [True, False])
def test_min_distances_match_brute_force(rng, cpp):
    """The engine's overlap check (cell list at 1 A) against pymatgen's distance matrix, images included."""
    import torch

    from matfunnel.engine.state import from_structures, min_distances
    from matfunnel.potential.chgnet import cpu_ops

    structs = []
    for k in range(12):
        n = int(rng.integers(1, 9))
        lat = np.diag(rng.uniform(2.0, 6.0, 3)) + rng.normal(0, 0.6, (3, 3))  # skewed, some tiny
        s = Structure(Lattice(lat), ["Si"] * n, rng.random((n, 3)))
        if k % 3 == 0 and n > 1:  # push one pair, possibly across the boundary, under 1 A
            s.translate_sites([1], s.lattice.get_fractional_coords(s[0].coords - s[1].coords
                                                                   + rng.normal(0, 0.4, 3)), to_unit_cell=False)
        structs.append(s)
    structs.append(Structure(Lattice.cubic(0.8), ["H"], [[0, 0, 0]]))  # only its own images are close
    state = from_structures(structs)
    with cpu_ops.use(cpp):
        got = min_distances(state.positions, state.cell, state.batch, len(structs)).tolist()
    for s, d in zip(structs, got, strict=True):
        dm = s.distance_matrix + np.diag(np.full(len(s), np.inf)) if len(s) > 1 else np.full((1, 1), np.inf)
        # self-images: the shortest lattice vector (integer combinations up to 2; cells here are not too skewed)
        shortest = min(np.linalg.norm(np.dot(np.array(c) - 2, s.lattice.matrix)) for c in np.ndindex(5, 5, 5)
                       if tuple(c) != (2, 2, 2))
        want = min(float(dm.min()), shortest)
        if want < 1.0:
            assert d == pytest.approx(want, abs=1e-9), s
        else:
            assert d == float("inf")
    assert torch.isfinite(torch.tensor(got)).sum() >= 3  # the check sees real overlaps in this set


def test_overlap_found_on_the_potentials_graph_at_the_first_step():
    """chgnet-0.3.0 reports the minimum distance on its own graph: no all-pairs check before the batch, the
    overlap is reported at step 0 as the cause (not as the huge forces it gives); coincident atoms, which
    a graph cannot see, are still rejected before."""
    from matfunnel.potential import load_potential

    pot = load_potential("chgnet-0.3.0")
    assert pot.distances_on_graph
    good = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    close = Structure(Lattice.cubic(4.2), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.52, 0.5, 0.5]])
    same = Structure(Lattice.cubic(4.2), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    res = relax_batched([good, close, same], pot, labels=["good", "close", "same"], fmax=0.05, max_steps=100)
    assert res[0].converged, res[0].error
    assert "'close'" in res[1].error and "closer than" in res[1].error and "step 0" in res[1].error
    assert res[1].n_steps == 0 and res[1].initial_structure["sites"]
    assert "'same'" in res[2].error and "same point" in res[2].error


@pytest.mark.parametrize("relax_cell", [False, True])
def test_selective_dynamics_held_like_ase_constraints(rng, relax_cell):
    """Atoms fixed by ``selective_dynamics`` stay where ASE's FixAtoms keeps them (fixed cell: in place; cell
    relaxation: carried by the cell's deformation only), and the path is ASE's to round-off."""
    pot = PairPotential()
    s = ar_cell(rng, reps=(1, 1, 2), strain=0.05, rattle=0.15)
    s.add_site_property("selective_dynamics", [[False] * 3] * 2 + [[True] * 3] * (len(s) - 2))
    ref = relax_structures([s], pot, fmax=0.01, max_steps=300, relax_cell=relax_cell)[0]
    got = relax_batched([s], pot, fmax=0.01, max_steps=300, relax_cell=relax_cell)[0]
    assert ref.converged and got.converged and got.error is None
    assert got.n_steps == ref.n_steps
    sa, sb = Structure.from_dict(ref.final_structure), Structure.from_dict(got.final_structure)
    assert abs(ref.energy - got.energy) < 1e-8
    assert np.abs(sa.cart_coords - sb.cart_coords).max() < 1e-7
    # the two fixed atoms kept their fractional coordinates; the free ones moved
    assert np.abs(sb.frac_coords[:2] - s.frac_coords[:2]).max() < 1e-9
    assert np.abs(sb.frac_coords[2:] - s.frac_coords[2:]).max() > 1e-3
    assert sb.site_properties["selective_dynamics"][0] == [False] * 3  # the constraint stays in the document
    free = relax_batched([s.copy(site_properties={"selective_dynamics": [[True] * 3] * len(s)})], pot, fmax=0.01,
                         max_steps=300, relax_cell=relax_cell)[0]
    assert abs(free.energy - got.energy) > 1e-6  # holding atoms changes the result


def test_relaxation_trajectory_is_sampled_thinned_and_ends_at_the_result(rng):
    pot = PairPotential()
    s = ar_cell(rng, reps=(1, 1, 2), strain=0.06, rattle=0.2)
    res = relax_batched([s, ar_cell(rng)], pot, fmax=0.005, max_steps=400, trajectory_every=2, max_frames=8)
    none = relax_batched([s], pot, fmax=0.005, max_steps=400)[0]
    assert none.trajectory is None and none.n_steps == res[0].n_steps and abs(none.energy - res[0].energy) < 1e-10
    for r in res:
        tr = r.trajectory
        assert r.converged and 2 <= len(tr["step"]) <= 8
        assert tr["step"][0] == 0 and tr["step"][-1] == r.n_steps and tr["step"] == sorted(set(tr["step"]))
        assert all(st % tr["stride"] == 0 for st in tr["step"][:-1])
        assert tr["energy"][-1] == pytest.approx(r.energy) and tr["fmax"][-1] < 0.005 < tr["fmax"][0]
        final = Structure.from_dict(r.final_structure)
        assert np.abs(np.array(tr["positions"][-1]) - final.cart_coords).max() < 1e-4
        assert tr["volume"][-1] == pytest.approx(final.volume)
    assert res[0].n_steps > 2 * 8  # long enough that thinning happened
    assert res[0].trajectory["stride"] > 2


def test_bad_arguments_fail_at_once_with_the_argument_named(rng):
    pot = PairPotential()
    s = [ar_cell(rng), ar_cell(rng)]
    with pytest.raises(ValueError, match="labels has 1 entries for 2 structures"):
        relax_batched(s, pot, labels=["a"])
    for bad in (float("nan"), -1.0, 0.0):
        with pytest.raises(ValueError, match="fmax must be a positive"):
            relax_batched(s, pot, fmax=bad)
    with pytest.raises(ValueError, match="max_steps"):
        relax_batched(s, pot, max_steps=-3)


def test_a_potential_failure_is_marked_as_retryable(rng):
    """A failure raised by the potential (e.g. out of memory) is reported, and flagged so that caches skip it."""
    from matfunnel.potential.base import Evaluation

    class Flaky(PairPotential):
        def evaluate(self, numbers, positions, cells, n_atoms, **kw):
            ev = super().evaluate(numbers, positions, cells, n_atoms, **kw)
            big = n_atoms == 8  # the 8-atom cell fails, the 4-atom one does not
            errs = ["OutOfMemoryError: pretend" if b else None for b in big.tolist()]
            energy = torch.where(big, torch.full_like(ev.energy, float("nan")), ev.energy)
            return Evaluation(energy, ev.forces, ev.stress, ev.magmoms, errs)

    import torch

    res = relax_batched([ar_cell(rng, reps=(1, 1, 2)), ar_cell(rng)], Flaky(), fmax=0.05, max_steps=50)
    assert "OutOfMemoryError" in res[0].error and res[0].data["potential_error"] == "OutOfMemoryError: pretend"
    assert res[1].error is None and "potential_error" not in res[1].data
