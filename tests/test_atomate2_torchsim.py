"""atomate2's TorchSim makers running our CHGNet (real 0.3.0 weights) through jobflow.

One flow (serialized to JSON and rebuilt first, as a workflow manager would) relaxes two perturbed cells with
atomate2's optimize body. A static job then evaluates the relaxed cells, with the optimization as its
``prev_task``, and a short MD job runs on the original cells. The tests check that the relaxed energies equal
our engine's, the static energies equal our potential's, the MD energies are finite, the documents carry the
potential's provenance, and atomate2's ``pick_model`` comes back unchanged.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from jobflow import Flow, JobStore, run_locally
from maggma.stores import MemoryStore
from monty.json import MontyDecoder, jsanitize
from pymatgen.core import Lattice, Structure

ts = pytest.importorskip("torch_sim")
core = pytest.importorskip("atomate2.torchsim.core")

# these need atomate2's torchsim module: imported only once the skips above have passed
from matfunnel.makers.atomate2_torchsim import (  # noqa: E402
    MATFUNNEL_MODEL,
    MatfunnelTorchSimCalculation,
    MatfunnelTorchSimIntegrateMaker,
    MatfunnelTorchSimOptimizeMaker,
    MatfunnelTorchSimStaticMaker,
    MatfunnelTorchSimTaskDoc,
    supplying_model,
)
from matfunnel.potential import load_potential  # noqa: E402

POTENTIAL = "chgnet-0.3.0"
FMAX = 0.02
ORIGINAL_PICK_MODEL = core.pick_model


def cells(rng) -> list[Structure]:
    """A perturbed, strained rocksalt MgO (4 atoms) and bcc Mo (2 atoms)."""
    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21 * (1 + 0.03 * rng.standard_normal())),
                                    ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    mgo.make_supercell([1, 1, 2])
    mo = Structure(Lattice.cubic(3.15 * (1 + 0.03 * rng.standard_normal())), ["Mo", "Mo"],
                   [[0, 0, 0], [0.5, 0.5, 0.5]])
    for s in (mgo, mo):
        s.perturb(0.08)
    return [mgo, mo]


@pytest.fixture(scope="module")
def run():
    """Run the flow once. Returns (structures, store, uuids, pick_model seen during the run)."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"random seed: {seed}")
    structs = cells(np.random.default_rng(seed))

    opt = MatfunnelTorchSimOptimizeMaker(potential=POTENTIAL, max_steps=2000,
                                         convergence_fn_kwargs={"force_tol": FMAX, "include_cell_forces": True})
    relax = opt.make(structs)
    static = MatfunnelTorchSimStaticMaker(potential=POTENTIAL).make(relax.output.structures,
                                                                    prev_task=relax.output)
    md = MatfunnelTorchSimIntegrateMaker(potential=POTENTIAL, integrator=ts.Integrator.nvt_langevin, n_steps=15,
                                         temperature=300, timestep=0.002).make(structs)
    flow = Flow([relax, static, md])
    # what a workflow manager stores and runs: enums become their values, makers are rebuilt from dicts
    flow = Flow.from_dict(json.loads(json.dumps(jsanitize(flow.as_dict(), strict=True, enum_values=True))))

    store = JobStore(MemoryStore())
    run_locally(flow, store=store, ensure_success=True)
    uuids = {"relax": relax.uuid, "static": static.uuid, "md": md.uuid}
    return structs, store, uuids


def output(store, uuid) -> MatfunnelTorchSimTaskDoc:
    """A job's output as stored, decoded by its @class."""
    doc = MontyDecoder().process_decoded(store.get_output(uuid))
    assert isinstance(doc, MatfunnelTorchSimTaskDoc)
    return doc


def test_optimize_equals_our_engine(run):
    from matfunnel.engine import relax_batched

    structs, store, uuids = run
    doc = output(store, uuids["relax"])
    n = np.array([len(s) for s in structs])
    e_a2 = np.array(doc.output.energies) / n
    ours = relax_batched(structs, load_potential(POTENTIAL), fmax=FMAX, max_steps=2000)
    for k, r in enumerate(ours):
        assert r.error is None and r.converged, (k, r.error)
        assert abs(r.e_per_atom - e_a2[k]) < 1e-3, (k, r.e_per_atom, e_a2[k])
        assert doc.structures[k].composition == structs[k].composition
    # the relaxation moved something: the energy went down from the perturbed start
    start = [p["energy"] / len(s) for p, s in zip(load_potential(POTENTIAL).predict(structs), structs, strict=False)]
    assert np.all(e_a2 < np.array(start))


def test_static_equals_our_potential(run):
    _, store, uuids = run
    doc = output(store, uuids["static"])
    relaxed = output(store, uuids["relax"]).structures
    for a, b in zip(doc.structures, relaxed, strict=False):  # the static job got the optimization's structures
        np.testing.assert_allclose(a.cart_coords, b.cart_coords, atol=1e-8)
        np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-8)
    ours = load_potential(POTENTIAL).predict(doc.structures)
    for k, (s, o) in enumerate(zip(doc.structures, ours, strict=False)):
        assert abs(doc.output.energies[k] - o["energy"]) / len(s) < 1e-5, (k, doc.output.energies[k], o["energy"])
    forces = np.concatenate([np.asarray(f) for f in doc.calcs_reversed[0].output.all_forces])
    np.testing.assert_allclose(forces, np.concatenate([o["forces"] for o in ours]), atol=1e-4)


def test_integrate_gives_finite_energies(run):
    structs, store, uuids = run
    doc = output(store, uuids["md"])
    calc = doc.calcs_reversed[0]
    assert calc.task_type == "Molecular Dynamics" and calc.n_steps == 15
    assert len(doc.output.energies) == len(structs) and np.all(np.isfinite(doc.output.energies))
    assert [len(s) for s in doc.structures] == [len(s) for s in structs]


def test_documents_record_the_potential(run):
    _, store, uuids = run
    info = load_potential(POTENTIAL).model_info()
    assert info["weights_sha256"]
    for key in ("relax", "static", "md"):
        doc = output(store, uuids[key])
        calc = doc.calcs_reversed[0]
        assert isinstance(calc, MatfunnelTorchSimCalculation)
        assert calc.model == MATFUNNEL_MODEL and calc.model_path == f"matfunnel:{POTENTIAL}"
        assert calc.potential == POTENTIAL and calc.device == "cpu" and calc.model_info == info
        meta = store.query_one({"uuid": uuids[key]}, properties=["metadata"])["metadata"]
        assert meta["matfunnel_model"]["model_info"] == info and meta["matfunnel_model"]["potential"] == POTENTIAL
    chained = output(store, uuids["static"]).calcs_reversed  # static after the optimization: both recorded
    assert [c.task_type for c in chained] == ["Static", "Structure Optimization"]
    assert all(isinstance(c, MatfunnelTorchSimCalculation) for c in chained)


def test_pick_model_is_restored(run):
    assert core.pick_model is ORIGINAL_PICK_MODEL  # after three jobs

    class Boom(Exception):
        pass

    sentinel = object()
    with pytest.raises(Boom), supplying_model(sentinel):
        assert core.pick_model("MaceModel", "whatever") is sentinel
        with supplying_model(sentinel):  # nested: still swapped after the inner block
            pass
        assert core.pick_model("MaceModel", "whatever") is sentinel
        raise Boom
    assert core.pick_model is ORIGINAL_PICK_MODEL


def test_swap_is_confined_to_its_context():
    """While a matfunnel job holds the swap, another thread still gets atomate2's own models."""
    from atomate2.torchsim.schema import TorchSimModelType
    from torch_sim.models.lennard_jones import LennardJonesModel

    seen = {}

    def other_thread():
        seen["model"] = core.pick_model(TorchSimModelType.LENNARD_JONES, "", sigma=2.0, epsilon=0.01)

    sentinel = object()
    with supplying_model(sentinel):
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert core.pick_model(TorchSimModelType.LENNARD_JONES, "") is sentinel
    assert isinstance(seen["model"], LennardJonesModel)
    assert core.pick_model is ORIGINAL_PICK_MODEL
