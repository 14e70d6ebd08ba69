"""chgnet-0.3.0's tensor entry point (``evaluate``), memory-budget batching and the chunked path."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matfunnel.potential import calibration
from matfunnel.potential.chgnet.potential import BYTES_PER_ITEM, BYTES_PER_ITEM_FUSED, ChgnetPotential
from matfunnel.potential.synthetic import random_structure, supercell

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def pot():
    return ChgnetPotential()


def _tensors(structs):
    z = torch.tensor(np.concatenate([s.atomic_numbers for s in structs]), dtype=torch.long)
    pos = torch.from_numpy(np.concatenate([s.cart_coords for s in structs]))
    cells = torch.from_numpy(np.stack([s.lattice.matrix for s in structs]))
    n = torch.tensor([len(s) for s in structs], dtype=torch.long)
    return z, pos, cells, n


def test_evaluate_matches_predict(pot):
    rng = np.random.default_rng(5)
    structs = [random_structure(rng, 40, rattle=0.08) for _ in range(5)]
    ref = pot.predict(structs)
    ev = pot.evaluate(*_tensors(structs))
    assert ev.errors is None
    assert ev.energy.dtype == torch.float64 and ev.energy.shape == (5,)
    assert ev.forces.shape == (sum(len(s) for s in structs), 3) and ev.stress.shape == (5, 3, 3)
    offsets = np.cumsum([0] + [len(s) for s in structs])
    for b, r in enumerate(ref):
        assert abs(float(ev.energy[b]) - r["energy"]) < 1e-5
        np.testing.assert_allclose(ev.forces[offsets[b]:offsets[b + 1]].numpy(), r["forces"], atol=2e-5)
        np.testing.assert_allclose(ev.stress[b].numpy(), r["stress"], atol=1e-4)
        np.testing.assert_allclose(ev.magmoms[offsets[b]:offsets[b + 1]].numpy(), r["magmoms"], atol=1e-5)
    # positions outside the cell, no stress
    z, pos, cells, n = _tensors(structs[:2])
    shifted = pos.clone()
    shifted[: int(n[0])] += cells[0, 0] * 3 - cells[0, 2]
    ev2 = pot.evaluate(z, shifted, cells, n, compute_stress=False)
    assert ev2.stress is None
    torch.testing.assert_close(ev2.energy, ev.energy[:2], atol=2e-5, rtol=0)
    torch.testing.assert_close(ev2.forces, ev.forces[: int(n.sum())], atol=5e-5, rtol=0)


def test_evaluate_reports_bad_structures(pot):
    rng = np.random.default_rng(6)
    good = random_structure(rng, 8, rattle=0.05)
    z, pos, cells, n = _tensors([good, good, good, good])
    k = len(good)
    pos = pos.clone()
    pos[k] = float("nan")  # structure 1: NaN coordinates
    z = z.clone()
    z[2 * k] = 118  # structure 2: element beyond the model
    cells = cells.clone()
    cells[3] *= 6.0  # structure 3: isolated atoms (cell and positions blown up)
    pos[3 * k:] *= 6.0
    ev = pot.evaluate(z, pos, cells, n)
    assert ev.errors[0] is None
    assert "NaN" in ev.errors[1] and "element" in ev.errors[2] and "no neighbour" in ev.errors[3]
    assert torch.isfinite(ev.energy[0]) and torch.isnan(ev.energy[1:]).all()
    assert torch.isfinite(ev.forces[:k]).all() and torch.isnan(ev.forces[k:]).all()
    assert abs(float(ev.energy[0]) - pot.predict(good)[0]["energy"]) < 1e-5


def test_batches_follow_the_memory_budget():
    p = ChgnetPotential(memory_budget=1 << 30)
    per_item = p.bytes_per_item
    if p.calibration is None:  # measuring failed: the built-in estimate
        assert per_item in (BYTES_PER_ITEM, BYTES_PER_ITEM_FUSED)
    else:
        assert per_item == int(p.calibration["bytes_per_item"] * calibration.MARGIN)
    small = ChgnetPotential(memory_budget=20_000 * per_item)  # 20,000 items per batch
    assert small.max_items == 20_000
    rng = np.random.default_rng(8)
    structs = [random_structure(rng, 30) for _ in range(12)]
    batches = small.plan_batches([len(s) for s in structs], [s.volume for s in structs])
    assert sorted(sum(batches, [])) == list(range(12)) and len(batches) > 1
    assert small.chunk_for(10_000, 5_000) is None
    assert small.chunk_for(15_000, 7_000) is None  # 10% over: packing estimates are that far off, not chunked
    assert small.chunk_for(50_000, 20_000) == 10_000  # over budget: chunked, at least MIN_CHUNK
    assert small.chunk_for(500_000, 300_000) == 100_000  # at most MAX_CHUNKS chunks


def test_chunked_matches_unchunked(pot):
    rng = np.random.default_rng(9)
    s = supercell(rng, 128, proto="rocksalt", bond=2.7)
    whole = pot.predict(s)[0]
    chunked = ChgnetPotential(memory_budget=BYTES_PER_ITEM * 10_000, chunk=1500)
    g_items = chunked.chunk_for(10**6, 10**6)
    assert g_items == 1500
    part = chunked.predict(s)[0]
    assert abs(part["energy"] - whole["energy"]) < 1e-4
    np.testing.assert_allclose(part["forces"], whole["forces"], rtol=1e-5, atol=2e-5)  # float32 summation order
    np.testing.assert_allclose(part["stress"], whole["stress"], rtol=1e-5, atol=1e-4)


def test_large_structure_runs_chunked():
    """A >3000-atom cell through the chunked path with a small memory budget (finite, symmetric forces)."""
    rng = np.random.default_rng(10)
    s = Structure(Lattice.cubic(3.2), ["Cu"], [[0, 0, 0]]) * (15, 15, 15)  # ~28 neighbours within 6 A
    s = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.05, (len(s), 3)), coords_are_cartesian=True)
    assert len(s) >= 3000
    pot = ChgnetPotential(memory_budget=400 << 20)
    assert 20 * len(s) > pot.max_items  # at least 20 directed edges per atom: chunked
    t0 = time.perf_counter()
    ev = pot.evaluate(*_tensors([s]))
    took = time.perf_counter() - t0
    assert ev.errors is None
    assert torch.isfinite(ev.forces).all() and torch.isfinite(ev.stress).all()
    # periodic cell: forces sum to ~zero
    assert float(ev.forces.sum(0).abs().max()) < 1e-2
    print(f"{len(s)} atoms chunked in {took:.1f} s")


def test_memory_model_is_calibrated_once_per_device(tmp_path, monkeypatch, caplog):
    """The bytes per item are measured on this machine (two probe cells in a child process on the CPU), cached,
    and reused; the measured line predicts the peak of a third cell; a failed measurement keeps the estimate."""
    import subprocess

    from matfunnel.potential import memprobe

    monkeypatch.setenv("MATFUNNEL_CACHE", str(tmp_path))
    p = ChgnetPotential(memory_budget=1 << 30, calibrate=True)
    rec = p.calibration
    assert rec["source"] == "measured" and rec["key"] == p.calibration_key()
    assert calibration.load(p.calibration_key())["bytes_per_item"] == rec["bytes_per_item"]
    assert p.bytes_per_item == int(rec["bytes_per_item"] * calibration.MARGIN)
    assert p.max_items == (1 << 30) // p.bytes_per_item
    # linear in the items: a cell between the two probes peaks where the line through them says (10%)
    spec = p.probe_spec()
    lo, hi = memprobe.SIZES["cpu"]
    spec.sizes = [lo, (lo + hi) // 2, hi]
    (n0, b0), (n1, b1), (n2, b2) = memprobe.measure_cpu(spec)
    predicted = b0 + (b2 - b0) / (n2 - n0) * (n1 - n0)
    assert abs(b1 - predicted) < 0.1 * (b2 - b0), (n0, b0, n1, b1, n2, b2)
    # the next potential on this device reads the cache: nothing is measured
    monkeypatch.setattr(memprobe, "measure_cpu", lambda *a, **k: pytest.fail("measured again"))
    again = ChgnetPotential(memory_budget=1 << 30)
    assert again.calibration["source"] == "cache" and again.bytes_per_item == p.bytes_per_item

    def broken(*a, **k):
        raise subprocess.CalledProcessError(1, "probe")
    monkeypatch.setattr(memprobe, "measure_cpu", broken)
    with caplog.at_level("WARNING", logger="matfunnel.potential.calibration"):
        assert again.calibrate(force=True) is None
    assert "memory calibration" in caplog.text and "failed" in caplog.text
    assert again.bytes_per_item == p.bytes_per_item  # the last good figure stays


def test_calibrate_command_reports_the_memory_model(capsys):
    from matfunnel.cli import main

    assert main(["calibrate"]) == 0
    out = capsys.readouterr().out
    pot = ChgnetPotential()
    assert pot.calibration_key() in out and f"{pot.calibration['bytes_per_item']} bytes per work item" in out


def test_probe_sizes_follow_a_memory_target():
    """With a memory target the second probe is the largest ladder cell the first one's cost says fits; a target
    that not even the second cell meets is an error (the calibration then keeps the built-in estimate)."""
    from matfunnel.potential import memprobe

    per_atom = 3_000_000  # bytes per atom of a made-up potential, 100 items per atom

    def run(cell):
        return 100 * len(cell), per_atom * len(cell)

    (n0, b0), (n1, b1) = memprobe._by_target(run, target_bytes=per_atom * 150)
    sizes = sorted({len(memprobe.probe_cell(n)) for n in memprobe.LADDER})
    assert n0 == 100 * sizes[0] and n1 == 100 * max(s for s in sizes if s <= 150)
    with pytest.raises(ValueError, match="second probe cell"):
        memprobe._by_target(run, target_bytes=per_atom * (sizes[1] - 1))
