"""chgnet-0.3.0 for training: ``create_graph=True`` (plain-autograd mode, double backward) and float64 energy sums.

* the differentiable outputs equal the inference outputs (float64, to rounding);
* the parameters' gradients of a loss on energies, forces and stress match central finite differences;
* outside :func:`plain_autograd` the fast paths (custom Functions, fused CPU kernels) are still taken;
* a float32 model's energy of a 500-atom cell is summed in float64 (no drift with the cell's size).
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matfunnel.potential import triton_select
from matfunnel.potential.chgnet import basis, cpu_ops, ops
from matfunnel.potential.chgnet.graph import build_graph
from matfunnel.potential.chgnet.mode import is_plain, plain_autograd
from matfunnel.potential.chgnet.potential import ChgnetPotential
from matfunnel.potential.synthetic import random_structure

warnings.filterwarnings("ignore")
KEYS = ("energy", "forces", "stress", "magmoms")


@pytest.fixture(scope="module")
def pot64():
    return ChgnetPotential(dtype="float64", calibrate=False)


@pytest.fixture(scope="module")
def pot32():
    return ChgnetPotential(dtype="float32", calibrate=False)


def _structures() -> list[Structure]:
    rng = np.random.default_rng(20240611)
    with_angles = random_structure(rng, 8, proto="rocksalt", n_species=2, rattle=0.08, shear=0.05)
    mixed = random_structure(rng, 12, rattle=0.1, shear=0.1)
    # simple cubic at 3.4 A: every bond is longer than the bond-graph cutoff (3 A), so no angle at all
    long_only = Structure(Lattice.cubic(3.4), ["Cu"], [[0.02, 0.0, 0.01]])
    return [with_angles, mixed, long_only]


def _graph(pot, structs):
    return build_graph(*pot._arrays(structs))


def _per_structure_items(g, b: int) -> tuple[int, int, int]:
    """(short bonds, long bonds, angles) of structure ``b`` of the batch ``g``."""
    sb = g.batch.index_select(0, g.src)
    short = int((sb[: g.n_short] == b).sum())
    long = int((sb[g.n_short:] == b).sum())
    ab = sb[: g.n_short].index_select(0, g.angle_b2) if g.n_angles else sb[:0]
    return short, long, int((ab == b).sum())


def _assert_rel(got, want, rtol, what):
    scale = max(float(want.abs().max()), 1e-12)
    err = float((got.detach() - want.detach()).abs().max())
    assert err <= rtol * scale, f"{what}: max diff {err:.3e} (scale {scale:.3e})"


def test_create_graph_outputs_equal_inference(pot64):
    structs = _structures()
    g = _graph(pot64, structs)
    items = [_per_structure_items(g, b) for b in range(len(structs))]
    assert items[0][2] > 0 and items[0][1] > 0  # angles and long bonds
    assert items[1][2] > 0 and items[1][1] > 0
    assert items[2] == (0, items[2][1], 0) and items[2][1] > 0  # long bonds only, no angle
    model = pot64.model
    for graph in (g, _graph(pot64, structs[2:])):  # the batch, and the angle-free structure alone
        want = model(graph)
        got = model(graph, create_graph=True)
        assert not is_plain()
        for k in KEYS:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            _assert_rel(got[k], want[k], 1e-10, k)
    assert want["energy"].dtype == torch.float64


def _loss(out, n_atoms, w_e=1.0, w_f=1.0, w_s=1e-3):
    e = out["energy"] / n_atoms
    return w_e * (e**2).sum() + w_f * (out["forces"] ** 2).mean() + w_s * (out["stress"] ** 2).mean()


def test_parameter_gradients_match_finite_differences(pot64):
    structs = _structures()[:2]
    g = _graph(pot64, structs)
    n_atoms = torch.tensor([len(s) for s in structs], dtype=torch.float64)
    model = pot64.model
    names = ["atom_embedding", "atom_convs.1.mlp.w1", "bond_convs.0.mlp.w2_core", "bond_convs.1.mlp.ln_gate.weight",
             "readout.0.weight", "rbf_freq_ag", "angle_freq"]
    params = dict(model.named_parameters())
    try:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        _loss(model(g, create_graph=True), n_atoms).backward()
        grads = {k: params[k].grad.detach().clone() for k in names}
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(False)
        for k in names:
            p, grad = params[k], grads[k]
            flat = grad.reshape(-1)
            idx = int(flat.abs().argmax())
            assert float(flat[idx].abs()) > 1e-8, f"{k}: no gradient"
            view = p.data.reshape(-1)
            x0 = float(view[idx])
            h = 1e-5 * max(1.0, abs(x0))
            vals = []
            for x in (x0 + h, x0 - h):
                view[idx] = x
                vals.append(float(_loss(model(g), n_atoms)))
            view[idx] = x0
            fd = (vals[0] - vals[1]) / (2 * h)
            rel = abs(fd - float(flat[idx])) / abs(fd)
            print(f"{k}[{idx}]: autograd {float(flat[idx]):+.10e}, relative difference to FD {rel:.1e}")
            assert rel < 1e-5, f"{k}[{idx}]: autograd {float(flat[idx]):.10e}, finite difference {fd:.10e}"
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(False)


def test_chunked_create_graph_matches_unchunked(pot64):
    """The chunked path (checkpointed parts, recomputed in plain mode) gives the same gradients."""
    structs = _structures()[:2]
    g = _graph(pot64, structs)
    n_atoms = torch.tensor([len(s) for s in structs], dtype=torch.float64)
    model = pot64.model
    chunk = min(2 * g.n_edges, g.n_angles) // 2 + 1  # at least two parts on both levels
    w = model.bond_convs[0].mlp.w1
    try:
        w.requires_grad_(True)
        (full,) = torch.autograd.grad(_loss(model(g, create_graph=True), n_atoms), w)
        (chunked,) = torch.autograd.grad(_loss(model(g, create_graph=True, chunk=chunk), n_atoms), w)
    finally:
        w.requires_grad_(False)
    _assert_rel(chunked, full, 1e-10, "chunked gradient")


def test_plain_mode_scope():
    ix = ops.Index(torch.tensor([0, 2, 2, 1]), 3)
    x = torch.randn(3, 4, requires_grad=True)
    d = torch.rand(5, dtype=torch.float64) + 0.5
    freq = torch.arange(1.0, 4.0, dtype=torch.float64)

    def kinds():
        return (type(ops.gather(x, ix).grad_fn).__name__, type(ops.scatter(x[ix.idx], ix).grad_fn).__name__,
                type(basis.radial(d.requires_grad_(True), freq, 6.0, 8).grad_fn).__name__)

    fast = kinds()
    assert fast[0].startswith("_Gather") and fast[1].startswith("_Scatter") and fast[2].startswith("_Radial")
    with plain_autograd():
        assert is_plain() and triton_select.is_suspended()
        assert not triton_select.enabled(torch.zeros(1))
        assert not cpu_ops.enabled(torch.zeros(1))
        with plain_autograd():  # nested
            assert is_plain()
        assert is_plain()
        plain = kinds()
        assert not any(name.startswith(("_Gather", "_Scatter", "_Radial")) for name in plain)
        seen = []
        t = threading.Thread(target=lambda: seen.append(is_plain()))  # another thread is not in plain mode
        t.start()
        t.join()
        assert seen == [False]
    assert not is_plain() and not triton_select.is_suspended()
    with pytest.raises(RuntimeError, match="inside"), plain_autograd():
        raise RuntimeError("inside")
    assert not is_plain() and not triton_select.is_suspended()
    assert kinds() == fast


def test_fast_kernels_outside_plain_mode(pot32, monkeypatch):
    """The fused CPU kernels run for inference, also after a create_graph pass; never inside one."""
    if not cpu_ops.available("cpu"):
        pytest.skip("fused CPU kernels unavailable (no compiler)")
    calls = []
    real = cpu_ops.gated
    monkeypatch.setattr(cpu_ops, "gated", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = _graph(pot32, _structures()[:2])
    model = pot32.model
    out = model(g, create_graph=True)
    assert calls == []
    with pytest.raises(RuntimeError), plain_autograd():
        raise RuntimeError("failed step")
    fast = model(g)
    assert calls and not is_plain()
    for k in KEYS:
        torch.testing.assert_close(out[k], fast[k], atol=2e-4, rtol=1e-4)


def test_float32_energy_of_large_cell_summed_in_float64(pot32, pot64):
    """500-atom L1_2 Hf3Au cell: a float32 sum of the site energies was 4e-5 eV/atom off; now < 5e-6."""
    base = Structure(Lattice.cubic(4.42), ["Au", "Hf", "Hf", "Hf"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cell = base * (5, 5, 5)
    n = len(cell)
    e32 = pot32.model(_graph(pot32, [cell]), compute_forces=False, compute_stress=False)["energy"]
    e64 = pot64.model(_graph(pot64, [cell]), compute_forces=False, compute_stress=False)["energy"]
    assert e32.dtype == torch.float64
    drift = abs(float(e32[0]) - float(e64[0])) / n
    assert drift < 5e-6, f"float32 energy off by {drift:.2e} eV/atom"
    # and through the Potential interface
    via_predict = pot32.predict([base * (3, 3, 3)])[0]["energy"] / 108
    assert abs(via_predict - float(e64[0]) / n) < 5e-6
