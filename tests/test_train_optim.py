"""Lamb and ALTO (matfunnel.train.optim): the update rules against numpy references of the formulas, ALTO with
alpha=0 is Lamb bit for bit, each optimizer minimises an ill-conditioned quadratic and fits a tiny MLP, resume from
a state_dict is bit-identical, and make_optimizer's errors. Random inputs are fresh each run (the ``rng`` fixture
prints its seed)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from matfunnel.train.optim import OPTIMIZER_NAMES, Alto, Lamb, make_optimizer

DTYPES = [torch.float32, torch.float64]
# float32 parameters are compared with a float64 reference of the same formulas
TOL = {torch.float32: {"rtol": 2e-5, "atol": 2e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-13}}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and keeps the test off the other cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- numpy references of the formulas (module docstring of matfunnel.train.optim) -------------------------------


def lamb_reference(x, g, st, lr, beta1, beta2, eps, weight_decay, trust_clamp=None):
    """One bias-corrected Lamb step of the float64 array ``x``; ``st`` holds t, m, v and is updated."""
    st["t"] += 1
    t = st["t"]
    st["m"] = beta1 * st["m"] + (1 - beta1) * g
    st["v"] = beta2 * st["v"] + (1 - beta2) * g * g
    m_hat = st["m"] / (1 - beta1**t)
    v_hat = st["v"] / (1 - beta2**t)
    u = m_hat / (np.sqrt(v_hat) + eps) + weight_decay * x
    w_norm, u_norm = np.linalg.norm(x), np.linalg.norm(u)
    if w_norm > 0 and u_norm > 0:
        r = w_norm / u_norm
        if trust_clamp is not None:
            r = min(max(r, trust_clamp[0]), trust_clamp[1])
    else:
        r = 1.0
    return x - lr * r * u


def alto_reference(x, g, st, lr, betas, alpha, eps, weight_decay, trust_clamp=None):
    """One ALTO step: a = EMA_{beta1}(g_k - g_{k-1}) (g_0 = 0), then Lamb(betas[1:]) on g + alpha a."""
    beta_a, beta2, beta3 = betas
    st["a"] = beta_a * st["a"] + (1 - beta_a) * (g - st["prev"])
    st["prev"] = g.copy()
    return lamb_reference(x, g + alpha * st["a"], st, lr, beta2, beta3, eps, weight_decay, trust_clamp)


def new_state(shape):
    z = np.zeros(shape)
    return {"t": 0, "m": z.copy(), "v": z.copy(), "a": z.copy(), "prev": z.copy()}


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy().copy()


def random_groups(rng, dtype, alto: bool):
    """Two param groups with random hyper-parameters (group 2 overrides lr, weight decay and the trust clamp)."""
    shapes = [[(5, 3), (4,)], [(6,)]]
    params = [[torch.nn.Parameter(torch.tensor(rng.normal(size=s), dtype=dtype)) for s in group] for group in shapes]
    lamb_betas = (float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.9, 0.9999)))
    hyper = {
        "lr": float(rng.uniform(1e-3, 0.1)),
        "betas": ((float(rng.uniform(0.0, 0.99)),) + lamb_betas) if alto else lamb_betas,
        "eps": 1e-6,
        "weight_decay": float(rng.uniform(0.0, 0.1)),
    }
    if alto:
        hyper["alpha"] = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 5.0))
    group2 = {"params": params[1], "lr": float(rng.uniform(1e-3, 0.1)), "weight_decay": 0.0,
              "trust_clamp": (0.5, 2.0)}
    return params, [{"params": params[0]}, group2], hyper


def set_random_grads(rng, params):
    for p in params:
        p.grad = torch.tensor(rng.normal(size=tuple(p.shape)), dtype=p.dtype)


# --- the update rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_lamb_steps_match_numpy_reference(rng, dtype):
    params, groups, hyper = random_groups(rng, dtype, alto=False)
    opt = Lamb(groups, **hyper)
    flat = [p for group in params for p in group]
    group_of = {id(p): g for g, group in enumerate(params) for p in group}
    ref_x = [as_np(p) for p in flat]
    ref_state = [new_state(p.shape) for p in flat]
    for _ in range(3):
        set_random_grads(rng, flat)
        grads = [as_np(p.grad) for p in flat]
        opt.step()
        for i, p in enumerate(flat):
            second = group_of[id(p)] == 1
            ref_x[i] = lamb_reference(ref_x[i], grads[i], ref_state[i],
                                      lr=groups[1]["lr"] if second else hyper["lr"],
                                      beta1=hyper["betas"][0], beta2=hyper["betas"][1], eps=hyper["eps"],
                                      weight_decay=0.0 if second else hyper["weight_decay"],
                                      trust_clamp=(0.5, 2.0) if second else None)
            np.testing.assert_allclose(as_np(p), ref_x[i], **TOL[dtype])
            assert p.dtype == dtype
            assert opt.state[p]["exp_avg"].dtype == dtype


def test_lamb_trust_ratio_is_one_where_a_norm_is_zero(rng):
    lr = 0.1
    zero_w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    still = torch.nn.Parameter(torch.tensor(rng.normal(size=3)))
    opt = Lamb([zero_w, still], lr=lr, weight_decay=0.0, eps=1e-6)
    g = rng.normal(size=4)
    zero_w.grad = torch.tensor(g)
    still.grad = torch.zeros(3, dtype=torch.float64)
    before = as_np(still)
    opt.step()
    # ||w|| = 0: ratio 1, so the first step is lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps)
    np.testing.assert_allclose(as_np(zero_w), -lr * g / (np.abs(g) + 1e-6), rtol=1e-12)
    # zero gradient and no decay: ||u|| = 0, nothing moves (and no NaN)
    np.testing.assert_array_equal(as_np(still), before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_alto_with_alpha_zero_is_lamb_step_for_step(rng, dtype):
    params, groups, hyper = random_groups(rng, dtype, alto=True)
    hyper["alpha"] = 0.0
    twins = [[torch.nn.Parameter(p.detach().clone()) for p in group] for group in params]
    twin_groups = [{**g, "params": twins[i]} for i, g in enumerate(groups)]
    alto = Alto(groups, **hyper)
    lamb_hyper = {k: v for k, v in hyper.items() if k != "alpha"} | {"betas": hyper["betas"][1:]}
    lamb = Lamb(twin_groups, **lamb_hyper)
    flat, flat_twins = [p for g in params for p in g], [p for g in twins for p in g]
    for _ in range(25):
        set_random_grads(rng, flat)
        for p, q in zip(flat, flat_twins, strict=True):
            q.grad = p.grad.clone()
        alto.step()
        lamb.step()
        for p, q in zip(flat, flat_twins, strict=True):
            assert torch.equal(p, q)
            assert torch.equal(alto.state[p]["exp_avg"], lamb.state[q]["exp_avg"])
            assert torch.equal(alto.state[p]["exp_avg_sq"], lamb.state[q]["exp_avg_sq"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_alto_steps_match_numpy_reference(rng, dtype):
    params, groups, hyper = random_groups(rng, dtype, alto=True)
    print(f"alto hyper-parameters: {hyper}")
    opt = Alto(groups, **hyper)
    flat = [p for group in params for p in group]
    group_of = {id(p): g for g, group in enumerate(params) for p in group}
    ref_x = [as_np(p) for p in flat]
    ref_state = [new_state(p.shape) for p in flat]
    for _ in range(4):
        set_random_grads(rng, flat)
        grads = [as_np(p.grad) for p in flat]
        opt.step()
        for i, p in enumerate(flat):
            second = group_of[id(p)] == 1
            ref_x[i] = alto_reference(ref_x[i], grads[i], ref_state[i],
                                      lr=groups[1]["lr"] if second else hyper["lr"], betas=hyper["betas"],
                                      alpha=hyper["alpha"], eps=hyper["eps"],
                                      weight_decay=0.0 if second else hyper["weight_decay"],
                                      trust_clamp=(0.5, 2.0) if second else None)
            np.testing.assert_allclose(as_np(p), ref_x[i], **TOL[dtype])
            np.testing.assert_allclose(as_np(opt.state[p]["exp_grad_diff"]), ref_state[i]["a"], **TOL[dtype])
            # p.grad is left as it was
            np.testing.assert_array_equal(as_np(p.grad), grads[i])


def test_alto_first_step_scales_the_gradient_by_one_plus_alpha_one_minus_beta1():
    """g_0 = 0, so a_1 = (1 - beta1) g_1 and the moments see (1 + alpha (1 - beta1)) g_1."""
    g = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    opt = Alto([torch.nn.Parameter(torch.ones(3, dtype=torch.float64))], betas=(0.9, 0.9, 0.99), alpha=-5.0)
    p = opt.param_groups[0]["params"][0]
    p.grad = g.clone()
    opt.step()
    factor = 1 + (-5.0) * (1 - 0.9)
    torch.testing.assert_close(opt.state[p]["exp_avg"], (1 - 0.9) * factor * g, rtol=1e-14, atol=0)


# --- they optimise -----------------------------------------------------------------------------------------------

CONFIGS = {
    "adam": ("adam", {"lr": 0.3}),
    "adamw": ("adamw", {"lr": 0.3, "weight_decay": 0.0}),
    "lamb": ("lamb", {"lr": 0.05, "weight_decay": 0.0}),
    "alto-explore": ("alto", {"lr": 0.05, "weight_decay": 0.0}),  # the paper's large-batch alpha=-5, beta1=0.99
    "alto-exploit": ("alto", {"lr": 0.05, "weight_decay": 0.0, "alpha": 0.5, "betas": (0.01, 0.9, 0.99)}),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_minimises_an_ill_conditioned_quadratic(rng, config):
    """f(x) = (x - c)^T A (x - c) / 2 with A's eigenvalues spread over 1..100 (condition number 100), 400 steps."""
    name, kwargs = CONFIGS[config]
    d, steps = 20, 400
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = torch.tensor(q @ np.diag(np.logspace(0, 2, d)) @ q.T)
    c = torch.tensor(rng.normal(size=d))
    x = torch.nn.Parameter(torch.tensor(3 * rng.normal(size=d)))
    opt = make_optimizer(name, [x], **kwargs)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def f():
        return 0.5 * (x - c) @ a @ (x - c)

    f0 = f().item()
    for _ in range(steps):
        opt.zero_grad()
        f().backward()
        opt.step()
        schedule.step()
    assert f().item() < f0 / 1e3, (config, f0, f().item())


def tiny_mlp(seed: int, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 1)).to(dtype)


def regression_data(rng, dtype=torch.float32):
    x = torch.tensor(rng.uniform(-2, 2, size=(128, 2)), dtype=dtype)
    return x, torch.sin(x[:, :1]) * torch.cos(x[:, 1:])


MLP_CONFIGS = {
    "adam": ("adam", {"lr": 0.02}),
    "adamw": ("adamw", {"lr": 0.02}),
    "lamb": ("lamb", {"lr": 0.02}),
    "alto-explore": ("alto", {"lr": 0.02}),
    "alto-exploit": ("alto", {"lr": 0.02, "alpha": 0.5, "betas": (0.01, 0.9, 0.99)}),
}


@pytest.mark.parametrize("config", list(MLP_CONFIGS))
def test_fits_a_tiny_mlp_regression(rng, config):
    """Full-batch regression of sin(x) cos(y) by a 2-16-16-1 tanh MLP: the MSE falls 20-fold in 200 steps."""
    name, kwargs = MLP_CONFIGS[config]
    steps = 200
    x, y = regression_data(rng)
    net = tiny_mlp(int(rng.integers(2**31)))
    opt = make_optimizer(name, net.parameters(), **kwargs)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def loss():
        return torch.mean((net(x) - y) ** 2)

    l0 = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
        schedule.step()
    assert loss().item() < l0 / 20, (config, l0, loss().item())


# --- resume, param handling ---------------------------------------------------------------------------------------


def grouped(net: torch.nn.Module, name: str):
    """Weights with decay, biases without (and a different lr), ALTO with alpha != 0."""
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    kwargs = {"lr": 0.02, "weight_decay": 0.01}
    if name == "alto":
        kwargs["alpha"] = -3.0
        kwargs["betas"] = (0.9, 0.9, 0.99)
    groups = [{"params": weights}, {"params": biases, "weight_decay": 0.0, "lr": 0.01, "trust_clamp": (0.0, 10.0)}]
    return make_optimizer(name, groups, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["lamb", "alto"])
def test_state_dict_resume_is_bit_identical(rng, name, dtype):
    x, y = regression_data(rng, dtype)
    seed = int(rng.integers(2**31))
    total, cut = 12, 5

    def train(net, opt, n):
        for _ in range(n):
            opt.zero_grad()
            torch.mean((net(x) - y) ** 2).backward()
            opt.step()

    net = tiny_mlp(seed, dtype)
    opt = grouped(net, name)
    train(net, opt, total)

    first = tiny_mlp(seed, dtype)
    opt1 = grouped(first, name)
    train(first, opt1, cut)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt1.state_dict()}, buffer)
    del first, opt1
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = tiny_mlp(seed + 1, dtype)  # other initial weights: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    opt2 = grouped(resumed, name)
    opt2.load_state_dict(checkpoint["optimizer"])
    train(resumed, opt2, total - cut)

    for (n, p), q in zip(net.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), n
        assert p.dtype == q.dtype == dtype
        s, t = opt.state[p], opt2.state[q]
        assert s.keys() == t.keys()
        for key in s:
            if torch.is_tensor(s[key]):
                assert torch.equal(s[key], t[key]), (n, key)
            else:
                assert s[key] == t[key] == total, (n, key)


@pytest.mark.parametrize("name", ["lamb", "alto"])
def test_params_without_grad_are_skipped(rng, name):
    used = torch.nn.Parameter(torch.tensor(rng.normal(size=4)))
    unused = torch.nn.Parameter(torch.tensor(rng.normal(size=3)))
    before = unused.detach().clone()
    opt = make_optimizer(name, [{"params": [used]}, {"params": [unused], "lr": 0.5}], lr=0.1)
    used.grad = torch.tensor(rng.normal(size=4))
    opt.step()
    assert torch.equal(unused, before)
    assert unused not in opt.state
    assert opt.state[used]["step"] == 1


@pytest.mark.parametrize("name", ["lamb", "alto"])
def test_sparse_gradients_are_refused(name):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = make_optimizer(name, emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad is not None and emb.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("name", ["lamb", "alto"])
def test_step_returns_the_closure_loss(rng, name):
    w = torch.nn.Parameter(torch.tensor(rng.normal(size=5)))
    opt = make_optimizer(name, [w])

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    expected = (w.detach() ** 2).sum()
    assert torch.equal(opt.step(closure), expected)
    assert opt.state[w]["step"] == 1


# --- the factory and hyper-parameter checks ------------------------------------------------------------------------


def test_make_optimizer_builds_each_name():
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "lamb": Lamb, "alto": Alto}
    assert set(OPTIMIZER_NAMES) == set(expected)
    for name, cls in expected.items():
        w = torch.nn.Parameter(torch.zeros(2))
        opt = make_optimizer(f" {name.upper()} ", [w], lr=0.05, weight_decay=0.0)
        assert type(opt) is cls
        assert opt.param_groups[0]["lr"] == 0.05
    alto = make_optimizer("alto", [torch.nn.Parameter(torch.zeros(2))], alpha=0.5, betas=(0.01, 0.9, 0.99))
    assert alto.param_groups[0]["alpha"] == 0.5
    assert alto.param_groups[0]["betas"] == (0.01, 0.9, 0.99)
    defaults = Alto([torch.nn.Parameter(torch.zeros(2))]).defaults
    assert defaults["betas"] == (0.99, 0.9, 0.99) and defaults["alpha"] == -5.0 and defaults["weight_decay"] == 1e-4


def test_make_optimizer_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'") as err:
        make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2))])
    for name in OPTIMIZER_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_make_optimizer_names_every_bad_hyperparameter_in_one_error(name):
    betas = (0.9, 1.0, 0.99) if name == "alto" else (0.9, 1.0)
    with pytest.raises(ValueError, match=f"invalid hyper-parameters for {name}") as err:
        make_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], lr=0.0, betas=betas, weight_decay=-0.1)
    message = str(err.value)
    assert "lr=0.0" in message and "betas[1]=1.0" in message and "weight_decay=-0.1" in message


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("lamb", {"lr": -1e-3}, "lr=-0.001"),
        ("lamb", {"lr": math.nan}, "lr=nan"),
        ("adamw", {"betas": (-0.1, 0.999)}, r"betas\[0\]=-0.1"),
        ("alto", {"betas": (0.9, 0.999)}, "takes 3 values, got 2"),
        ("lamb", {"betas": (0.99, 0.9, 0.99)}, "takes 2 values, got 3"),
        ("adam", {"eps": -1.0}, "eps=-1.0"),
        ("alto", {"alpha": math.inf}, "alpha=inf"),
        ("lamb", {"trust_clamp": (2.0, 1.0)}, "trust_clamp"),
        ("lamb", {"momentum": 0.9}, "takes no argument.* momentum"),
    ],
)
def test_make_optimizer_rejects_bad_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_constructors_check_too():
    w = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="invalid hyper-parameters for Lamb: lr=0"):
        Lamb(w, lr=0)
    with pytest.raises(ValueError, match=r"invalid hyper-parameters for Alto: betas\[2\]=1"):
        Alto(w, betas=(0.9, 0.9, 1))
    with pytest.raises(ValueError, match="weight_decay=-1"):
        Alto(w, weight_decay=-1)
