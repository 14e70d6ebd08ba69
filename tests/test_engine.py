"""ASE FIRE + FrechetCellFilter relaxation with per-structure failure isolation."""

from __future__ import annotations

import numpy as np
from jobflow import run_locally

from builders import fcc
from matfunnel.makers import RelaxMaker, StaticMaker


def test_relax_batch_isolates_failures(reference_potential, rng):
    from matfunnel.engine import relax_structures

    good = fcc("Cu", 3.8 + 0.1 * rng.random())  # strained: the cell must shrink
    good.perturb(0.05)
    overlap = fcc("Cu", 3.6)
    overlap.append("Cu", [0.05, 0.0, 0.0])
    unknown = fcc("Cu", 3.6)
    unknown.replace(0, "Og")  # element the potential does not cover
    res = relax_structures([good, overlap, unknown], reference_potential, labels=["good", "overlap", "og"],
                           fmax=0.05, max_steps=300)
    assert res[0].converged and res[0].error is None
    from pymatgen.core import Structure

    final = Structure.from_dict(res[0].final_structure)
    # FrechetCellFilter converges on the filter's atom forces, forces @ F (F: deformation gradient from the
    # starting cell), so the raw forces may exceed fmax by 1 / (smallest singular value of F) when the cell shrank
    F = np.linalg.solve(good.lattice.matrix, final.lattice.matrix).T
    bound = 0.05 / np.linalg.svd(F, compute_uv=False).min()
    assert np.linalg.norm(np.array(res[0].forces), axis=1).max() < bound + 1e-6
    # relaxed fcc Cu: CHGNet's lattice constant is close to experiment (3.61 A)
    a = final.volume ** (1 / 3)
    assert 3.5 < a < 3.7
    assert not res[1].converged and "'overlap'" in res[1].error and "closer than" in res[1].error
    assert "'og'" in res[2].error and "Og" in res[2].error


def test_relax_and_static_makers_one_job_per_batch(reference_potential):
    structs = [fcc("Al", 4.1), fcc("Ni", 3.55)]
    relax = RelaxMaker(fmax=0.05, max_steps=200, progress=False).make(structs, ["al", "ni"])
    static = StaticMaker().make(structs, ["al", "ni"])
    out = run_locally([relax, static], ensure_success=True, log=False)
    relaxed = out[relax.uuid][1].output
    assert [d["label"] for d in relaxed] == ["al", "ni"]
    assert all(d["converged"] and d["error"] is None for d in relaxed)
    statics = out[static.uuid][1].output
    # relaxing lowers the energy
    for r, s in zip(relaxed, statics, strict=True):
        assert r["energy"] <= s["energy"] + 1e-6
