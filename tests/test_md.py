"""Batched MD: NVE energy conservation, Langevin temperature, NPT pressure, isolation, MDMaker."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matfunnel.engine import run_md
from matfunnel.engine.testing import CosinePotential, PairPotential


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: thread hand-offs on shared cores cost more than the arithmetic."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def grid_crystal(n: int = 16, el: str = "Cu", spacing: float = 2.0) -> Structure:
    """Atoms on the minima of :class:`CosinePotential` (grid 2 A)."""
    side = int(round(n ** (1 / 3))) or 1
    pts = [[i, j, k] for i in range(side) for j in range(side) for k in range(side)][:n]
    m = max(side, 1)
    return Structure(Lattice.cubic(spacing * m), [el] * len(pts), np.array(pts) / m)


def test_nve_conserves_energy_with_chgnet():
    from matfunnel.potential import load_potential

    try:
        pot = load_potential("chgnet-0.3.0")
    except Exception:  # noqa: BLE001
        pot = load_potential("chgnet-reference")
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    (r,) = run_md([si], pot, ensemble="nve", steps=40, timestep=1.0, temperature=600, sample_every=1, seed=3)
    assert r.error is None and r.n_steps == 40
    tr = r.trajectory
    total = (np.array(tr["energy"]) + np.array(tr["kinetic_energy"])) / len(si)
    kin = np.array(tr["kinetic_energy"]) / len(si)
    assert np.ptp(kin) > 0.01  # energy really flows between kinetic and potential
    assert np.abs(total - total[0]).max() < 1e-3  # eV/atom over 40 fs at 1 fs
    assert abs(np.polyfit(np.arange(len(total)), total, 1)[0]) * 1000 < 1e-3  # drift per ps, eV/atom


def test_langevin_reaches_each_target_temperature():
    pot = CosinePotential(k=5.0)  # 1 eV barriers: atoms stay in their wells up to 1000 K
    targets = [100.0, 300.0, 600.0, 1000.0] * 2
    structs = [grid_crystal(27) for _ in targets]
    res = run_md(structs, pot, ensemble="nvt", steps=800, timestep=5.0, temperature=targets, friction=0.02,
                 sample_every=2, max_frames=1000, seed=11)
    ratios = []
    for r, t in zip(res, targets, strict=True):
        assert r.error is None
        temp = np.array(r.trajectory["temperature"])
        steps = np.array(r.trajectory["step"])
        late = temp[steps >= 200]  # after ~20 friction times
        ratios.append(late.mean() / t)
        # one structure: 300 samples, correlation ~25 fs -> relative s.e. ~2-3 %; 25 % is > 8 sigma
        assert abs(late.mean() / t - 1) < 0.25
    # pooled over 8 structures: s.e. ~1 %; 6 % is > 6 sigma
    assert abs(np.mean(ratios) - 1) < 0.06


def test_trajectory_of_a_structure_does_not_depend_on_its_batch_mates():
    pot = CosinePotential()
    a, b = grid_crystal(8), grid_crystal(27, el="Fe")
    alone = run_md([a], pot, ensemble="nvt", steps=30, timestep=5.0, temperature=300, seed=[5], sample_every=3)[0]
    both = run_md([b, a], pot, ensemble="nvt", steps=30, timestep=5.0, temperature=[50, 300], seed=[9, 5],
                  sample_every=3)[1]
    assert np.allclose(alone.trajectory["positions"], both.trajectory["positions"], atol=1e-4)
    assert np.allclose(alone.trajectory["energy"], both.trajectory["energy"], atol=1e-10)


def test_npt_moves_the_volume_towards_zero_pressure():
    pot = PairPotential(sigma=3.4, epsilon=0.0104, cutoff=6.5)  # argon-like
    ar = Structure(Lattice.cubic(5.0), ["Ar"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    ar.make_supercell([2, 1, 1])  # compressed: high pressure, must expand
    (r,) = run_md([ar], pot, ensemble="npt", steps=300, timestep=4.0, temperature=20, pressure=0.0, tau_p=100,
                  compressibility=0.3, sample_every=5, seed=1)
    assert r.error is None
    p = np.array(r.trajectory["pressure"])
    vol = np.array(r.trajectory["volume"])
    assert p[0] > 0.2  # GPa
    assert vol[-1] > vol[0] * 1.05
    late = p[len(p) // 2:]
    assert abs(late.mean()) < 0.1 * p[0]


def test_md_failure_is_isolated():
    pot = PairPotential(collapse_element=10)
    good = grid_crystal(8, el="Ar", spacing=3.8)
    bad = Structure(Lattice.cubic(6.0), ["Ne", "Ne", "Ar"], [[0, 0, 0], [0.2, 0, 0], [0.5, 0.5, 0.5]])
    res = run_md([bad, good], pot, ensemble="nve", steps=200, timestep=2.0, temperature=10, labels=["bad", "good"])
    assert res[0].error and "'bad'" in res[0].error and res[0].n_steps < 200
    assert res[1].error is None and res[1].n_steps == 200


def test_md_maker_writes_trajectories_to_their_store(tmp_path, monkeypatch):
    from jobflow import run_locally

    from matfunnel.common.store import embedded_store
    from matfunnel.makers import MDMaker
    from matfunnel.potential.registry import REGISTERED, PotentialEntry

    monkeypatch.setitem(REGISTERED, "cosine-test",
                        PotentialEntry("cosine-test", lambda device, **kw: CosinePotential(device=device)))
    store = embedded_store(tmp_path)
    job = MDMaker(potential="cosine-test", ensemble="nvt", steps=50, timestep=5.0, sample_every=2,
                  max_frames=8).make([grid_crystal(8), grid_crystal(8, el="Fe")], ["cu", "fe"], [200.0, 400.0])
    run_locally(job, store=store, ensure_success=True, log=False)
    raw = store.docs_store.query_one({"uuid": job.uuid})
    assert "blob_uuid" in raw["output"][0]["trajectory"]  # only a reference in the outputs store
    docs = store.get_output(job.uuid, load=True)
    assert [d["label"] for d in docs] == ["cu", "fe"]
    assert [d["temperature"] for d in docs] == [200.0, 400.0]
    for d in docs:
        assert d["n_steps"] == 50 and d["error"] is None
        tr = d["trajectory"]
        assert len(tr["step"]) < 8 and tr["step"][0] == 0 and tr["step"][-1] >= 40  # thinned, spans the run
        assert len(tr["positions"][0]) == 8
    assert store.additional_stores["trajectories"].count() == 2


@pytest.mark.parametrize("ensemble", ["nve", "npt"])
def test_every_ensemble_runs_on_a_batch(ensemble):
    pot = CosinePotential()
    res = run_md([grid_crystal(8), grid_crystal(27)], pot, ensemble=ensemble, steps=10, timestep=2.0,
                 temperature=100, sample_every=5)
    assert all(r.error is None and r.n_steps == 10 and r.final_structure for r in res)


def test_md_inputs_checked_and_bad_ones_isolated(tmp_path, monkeypatch):
    """numpy arrays work as per-structure values; wrong lengths and negative temperatures fail at once, naming
    the argument; a malformed structure document gets its error document and the others run."""
    from jobflow import run_locally

    from matfunnel.common.store import embedded_store
    from matfunnel.makers import MDMaker
    from matfunnel.potential.registry import REGISTERED, PotentialEntry

    pot = CosinePotential()
    structs = [grid_crystal(8), grid_crystal(8, el="Fe")]
    res = run_md(structs, pot, ensemble="nvt", steps=5, temperature=np.array([100.0, 200.0]), seed=np.array([3, 4]))
    assert [r.temperature for r in res] == [100.0, 200.0] and all(r.error is None for r in res)
    with pytest.raises(ValueError, match=r"temperature must be one number or one per structure \(2\)"):
        run_md(structs, pot, temperature=[300.0])
    with pytest.raises(ValueError, match="temperature must be at least 0"):
        run_md(structs, pot, temperature=[300.0, -5.0])
    with pytest.raises(ValueError, match="labels has 3 entries"):
        run_md(structs, pot, labels=["a", "b", "c"])
    monkeypatch.setitem(REGISTERED, "cosine-test",
                        PotentialEntry("cosine-test", lambda device, **kw: CosinePotential(device=device)))
    store = embedded_store(tmp_path)
    job = MDMaker(potential="cosine-test", ensemble="nvt", steps=10, sample_every=5).make(
        [structs[0].as_dict(), {"lattice": "nonsense"}, structs[1]])
    run_locally(job, store=store, ensure_success=True, log=False)
    docs = store.get_output(job.uuid, load=True)
    assert docs[0]["error"] is None and docs[2]["error"] is None and docs[0]["n_steps"] == 10
    assert docs[1]["label"] == "structure#1" and "not a pymatgen Structure document" in docs[1]["error"]


def test_md_maker_reuses_finished_runs_from_the_cache(tmp_path, monkeypatch):
    """With a result cache, a rerun with the same inputs (seed included) takes each finished structure's run
    from it; another seed is another run."""
    from jobflow import run_locally

    from matfunnel.common.store import embedded_store
    from matfunnel.makers import MDMaker
    from matfunnel.potential.registry import REGISTERED, PotentialEntry

    monkeypatch.setitem(REGISTERED, "cosine-test",
                        PotentialEntry("cosine-test", lambda device, **kw: CosinePotential(device=device)))
    monkeypatch.setenv("MATFUNNEL_RESULT_CACHE", str(tmp_path / "cache.sqlite"))
    store = embedded_store(tmp_path / "store")
    structs = [grid_crystal(8), grid_crystal(8, el="Fe")]

    def run(**kw):
        job = MDMaker(potential="cosine-test", ensemble="nvt", steps=20, sample_every=5, **kw).make(structs)
        run_locally(job, store=store, ensure_success=True, log=False)
        return store.get_output(job.uuid, load=True)

    first, again, other = run(), run(), run(seed=7)
    assert not any(d["cached"] for d in first) and all(d["cached"] for d in again)
    assert [d["energy"] for d in again] == [d["energy"] for d in first]
    assert again[1]["trajectory"]["positions"] == first[1]["trajectory"]["positions"]
    assert not any(d["cached"] for d in other) and other[0]["energy"] != first[0]["energy"]
