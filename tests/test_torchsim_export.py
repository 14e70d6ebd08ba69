"""Our CHGNet inside torch-sim: torch-sim's own optimize and integrate run matfunnel's batched CHGNet
(real 0.3.0 weights), and the relaxed energies equal our engine's."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

ts = pytest.importorskip("torch_sim")


def cells(rng) -> list[Structure]:
    out = []
    for a, els in [(4.05, ["Al"]), (5.64, ["Na", "Cl"]), (4.21, ["Mg", "O"]), (3.62, ["Cu"])]:
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a * (1 + 0.04 * rng.standard_normal())), els,
                                      [[0, 0, 0], [0.5, 0.5, 0.5]][: len(els)]).get_primitive_structure()
        s.make_supercell([1, 1, 2])
        s.perturb(0.1)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def model():
    from matfunnel.potential.torchsim_export import torchsim_model

    return torchsim_model("chgnet-0.3.0")


def test_export_static_matches_our_potential(model, rng):
    from matfunnel.potential import load_potential

    structs = cells(rng)
    out = model(ts.io.structures_to_state(structs, device="cpu", dtype=model.dtype))
    ours = load_potential("chgnet-0.3.0").predict(structs)
    for k, o in enumerate(ours):
        assert float(out["energy"][k]) == pytest.approx(o["energy"], abs=1e-6)
        np.testing.assert_allclose(out["stress"][k].numpy() * 160.21766208, o["stress"], atol=1e-6)
    np.testing.assert_allclose(out["forces"].numpy(), np.concatenate([o["forces"] for o in ours]), atol=1e-6)


def test_torchsim_optimize_equals_our_engine(model, rng):
    from matfunnel.engine import relax_batched
    from matfunnel.potential import load_potential

    structs = cells(rng)
    final = ts.optimize(system=structs, model=model, optimizer=ts.Optimizer.fire, max_steps=500,
                        convergence_fn=ts.generate_force_convergence_fn(0.05, include_cell_forces=True),
                        init_kwargs={"cell_filter": ts.CellFilter.frechet})
    e_ts = model(final)["energy"].numpy() / np.array([len(s) for s in structs])
    ours = relax_batched(structs, load_potential("chgnet-0.3.0"), fmax=0.05)
    for k, r in enumerate(ours):
        assert r.error is None
        assert abs(r.e_per_atom - e_ts[k]) < 1e-3, (k, r.e_per_atom, e_ts[k])


def test_torchsim_integrate_runs_our_chgnet(model, rng):
    structs = cells(rng)
    state = ts.integrate(system=structs, model=model, integrator=ts.Integrator.nvt_langevin, n_steps=20,
                         temperature=300, timestep=0.002)
    e = model(state)["energy"].numpy()
    assert np.all(np.isfinite(e)) and e.shape == (len(structs),)
