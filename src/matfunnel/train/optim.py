r"""Optimizers for fine-tuning: :class:`Lamb`, its adaptation :class:`Alto`, and :func:`make_optimizer`.

Lamb
----
You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer and Hsieh, "Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes", ICLR 2020 (arXiv:1904.00962). For each parameter tensor (one "layer")
:math:`x` with gradient :math:`g_t` at step :math:`t = 1, 2, \dots`:

.. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2, \qquad m_0 = v_0 = 0 \\
    \hat m_t &= m_t / (1 - \beta_1^t), \qquad \hat v_t = v_t / (1 - \beta_2^t) \\
    u_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda\, x_{t-1} \\
    r_t &= \phi\!\left(\lVert x_{t-1} \rVert / \lVert u_t \rVert\right)
          \quad\text{(} r_t = 1 \text{ where either norm is 0)} \\
    x_t &= x_{t-1} - \eta\, r_t\, u_t

with :math:`\lVert\cdot\rVert` the Euclidean norm over the whole tensor, :math:`\lambda` the decoupled weight decay
and :math:`\phi` the identity, or the clamp to ``trust_clamp = (lo, hi)`` (the paper's :math:`\gamma_l, \gamma_u`;
the fallback ratio 1 of a zero norm is not clamped): Lamb with Adam's bias correction of the moments.

ALTO
----
Tong Zhao, Jiacheng Li, Yuanchang Zhou, Guangming Tan and Weile Jia, "Exploring Landscapes for Better Minima
along Valleys", NeurIPS 2025 (arXiv:2510.27153, https://openreview.net/forum?id=XxRKqFsvoK; the authors' code:
https://github.com/zhaotong94/E, PyPI ``e-optimizer-adaptor``).

The paper proposes an adaptor "E" for any gradient-based optimizer: it keeps an exponential moving average of the
*difference* of successive gradients (a cheap proxy of the Hessian along the path, the gradient's "acceleration")

.. math::

    a_k = \beta_1 a_{k-1} + (1 - \beta_1)(g_k - g_{k-1}), \qquad a_0 = 0,\ g_0 = 0

and feeds the base optimizer :math:`\tilde g_k = g_k + \alpha\, a_k` in place of :math:`g_k`. A negative
:math:`\alpha` makes the optimizer keep exploring along valleys (low, nearly flat loss) after reaching a minimum,
towards lower and flatter minima; a positive :math:`\alpha` exploits (converges faster into the minimum found).
ALTO is E applied to bias-corrected Lamb, so with the paper's naming (:math:`\beta_1` for the acceleration,
:math:`\beta_2, \beta_3` for Lamb's moments) one ALTO step is

.. math::

    a_k &= \beta_1 a_{k-1} + (1 - \beta_1)(g_k - g_{k-1}) \\
    \tilde g_k &= g_k + \alpha\, a_k \\
    m_k &= \beta_2 m_{k-1} + (1 - \beta_2)\, \tilde g_k, \qquad
    v_k = \beta_3 v_{k-1} + (1 - \beta_3)\, \tilde g_k^2 \\
    \hat m_k &= m_k / (1 - \beta_2^k), \qquad \hat v_k = v_k / (1 - \beta_3^k) \\
    u_k &= \hat m_k / (\sqrt{\hat v_k} + \epsilon) + \lambda\, x_{k-1}, \qquad
    x_k = x_{k-1} - \eta\, r_k\, u_k \quad\text{(} r_k \text{ as in Lamb)}

so ``Alto(params, betas=(b1, b2, b3), alpha=0, ...)`` is exactly ``Lamb(params, betas=(b2, b3), ...)``
(:math:`a_k` is still tracked, so changing ``alpha`` of a group mid-run uses the right history).

Defaults, from the authors' README and code: ``betas = (0.99, 0.9, 0.99)``, ``alpha = -5`` (their choice for
batches of 1K samples and more; for smaller batches they use ``alpha = 0.5``, ``beta1 = 0.01``), ``weight_decay =
1e-4``, ``eps = 1e-6`` (their factory; their class default is 1e-8). The learning rate is task-specific (their
example: 0.01); ours defaults to 1e-3. They discuss the regime :math:`|\alpha| < 1/(1 - \beta_1)`, inside which
the first step (:math:`\tilde g_1 = (1 + \alpha(1 - \beta_1))\, g_1`, as :math:`g_0 = 0`) points downhill; it is not
enforced here.
Larger batches call for larger :math:`-\alpha` and :math:`\beta_1`; :math:`\beta_1` sets how long exploration
persists and :math:`|\alpha|` the scale of the sharp minima that can be escaped.

What was read and what is assumed
    The full text of the paper (its Algorithm box) could not be retrieved here; the rule above comes from the
    paper's abstract and a summary of its method (":math:`a_k = \mathrm{EMA}(g_k - g_{k-1})` added to the
    gradient", negative exploration :math:`\alpha`), and from the authors' README (the meaning and defaults of
    :math:`\alpha, \beta_1, \beta_2, \beta_3`, "ALTO = adapted Lamb with bias correction"), whose reference
    implementation was read (not copied) to settle the details: :math:`a_k` is updated before the moments, both
    moments see :math:`\tilde g_k`, only :math:`m, v` are bias-corrected (not :math:`a`), and the previous
    gradient starts at zero, so :math:`a_1 = (1 - \beta_1) g_1`. Deliberate differences from that code: it clips
    the global gradient norm to 1 inside ``step`` (left to the training loop here) and applies the trust ratio
    only when the weight decay is non-zero (here always, as in Lamb, so that ``alpha = 0`` is Lamb).

Both optimizers take param groups (weight decay is usually switched off for biases and norms with a second group),
float32 and float64 parameters, and ``state_dict()``/``load_state_dict()`` (a resumed run continues bit for bit);
parameters whose ``grad`` is ``None`` are skipped and sparse gradients are refused. ``p.grad`` is never modified.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.optim.optimizer import ParamsT

__all__ = ["OPTIMIZER_NAMES", "Alto", "Lamb", "check_hyperparameters", "make_optimizer"]

OPTIMIZER_NAMES: tuple[str, ...] = ("adam", "adamw", "lamb", "alto")
"""The names :func:`make_optimizer` accepts."""


def check_hyperparameters(
    name: str,
    *,
    lr: Any = None,
    betas: Any = None,
    n_betas: int | None = None,
    weight_decay: Any = None,
    eps: Any = None,
) -> None:
    """Check an optimizer's hyper-parameters, raising one error that lists every problem.

    Arguments left at ``None`` are not checked.

    Parameters
    ----------
    name
        The optimizer's name, for the message.
    lr
        Learning rate; must be a finite number > 0.
    betas
        Decay rates; each must be in [0, 1).
    n_betas
        How many ``betas`` the optimizer takes.
    weight_decay
        Must be a finite number >= 0.
    eps
        Must be a finite number >= 0.

    Raises
    ------
    ValueError
        Naming every hyper-parameter that is out of range.
    """
    problems: list[str] = []

    def number(value: Any) -> float | None:
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            return None

    if lr is not None:
        x = number(lr)
        if x is None or not (math.isfinite(x) and x > 0):
            problems.append(f"lr={lr!r} (must be a finite number > 0)")
    if betas is not None:
        if isinstance(betas, str | bytes) or not isinstance(betas, Sequence):
            problems.append(f"betas={betas!r} (must be a tuple of numbers in [0, 1))")
        else:
            if n_betas is not None and len(betas) != n_betas:
                problems.append(f"betas={tuple(betas)!r} (takes {n_betas} values, got {len(betas)})")
            for i, b in enumerate(betas):
                x = number(b)
                if x is None or not 0.0 <= x < 1.0:
                    problems.append(f"betas[{i}]={b!r} (must be in [0, 1))")
    if weight_decay is not None:
        x = number(weight_decay)
        if x is None or not (math.isfinite(x) and x >= 0):
            problems.append(f"weight_decay={weight_decay!r} (must be a finite number >= 0)")
    if eps is not None:
        x = number(eps)
        if x is None or not (math.isfinite(x) and x >= 0):
            problems.append(f"eps={eps!r} (must be a finite number >= 0)")
    if problems:
        raise ValueError(f"invalid hyper-parameters for {name}: " + "; ".join(problems))


def _check_trust_clamp(name: str, trust_clamp: Any) -> tuple[float, float] | None:
    if trust_clamp is None:
        return None
    try:
        lo, hi = (float(v) for v in trust_clamp)
    except (TypeError, ValueError):
        raise ValueError(f"invalid hyper-parameters for {name}: trust_clamp={trust_clamp!r} "
                         "(must be None or a pair (lo, hi) with 0 <= lo <= hi)") from None
    if not (0.0 <= lo <= hi) or math.isnan(hi):
        raise ValueError(f"invalid hyper-parameters for {name}: trust_clamp={trust_clamp!r} "
                         "(must be None or a pair (lo, hi) with 0 <= lo <= hi)")
    return lo, hi


class Lamb(torch.optim.Optimizer):
    r"""Lamb: Adam moments with bias correction, decoupled weight decay and a layer-wise trust ratio.

    See the module docstring for the update rule.

    Parameters
    ----------
    params
        Parameters or param groups (dicts that may override any of the hyper-parameters below).
    lr
        Learning rate :math:`\eta` (> 0).
    betas
        :math:`(\beta_1, \beta_2)`, decay of the first and second moments, each in [0, 1).
    eps
        Added to :math:`\sqrt{\hat v}` (>= 0).
    weight_decay
        Decoupled weight decay :math:`\lambda` (>= 0), part of the update the trust ratio scales.
    trust_clamp
        ``None`` (the ratio as is) or ``(lo, hi)``: the trust ratio is clamped to it. Common choice: ``(0, 10)``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        trust_clamp: tuple[float, float] | None = None,
    ):
        name = type(self).__name__
        check_hyperparameters(name, lr=lr, betas=betas, n_betas=2, weight_decay=weight_decay, eps=eps)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "trust_clamp": _check_trust_clamp(name, trust_clamp)}
        super().__init__(params, defaults)

    # --- hooks for adaptations (Alto) ---------------------------------------------------------------------------

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _moment_betas(self, group: dict[str, Any]) -> tuple[float, float]:
        beta1, beta2 = group["betas"]
        return float(beta1), float(beta2)

    def _effective_grad(self, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        """The gradient the moments see; Lamb's own is the gradient itself."""
        return grad

    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one optimisation step.

        Parameters
        ----------
        closure
            Optional: re-evaluates the model and returns the loss (called with gradients enabled).

        Returns
        -------
        Any
            The closure's loss, or ``None``.

        Raises
        ------
        RuntimeError
            A parameter has a sparse gradient.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta_m, beta_v = self._moment_betas(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (e.g. "
                                       "nn.Embedding(sparse=True)); use dense gradients or torch.optim.SparseAdam")
                state = self.state[p]
                if len(state) == 0:
                    self._init_state(p, state)
                g = self._effective_grad(p.grad, state, group)
                _lamb_update(p, g, state, beta_m, beta_v, float(group["lr"]), float(group["eps"]),
                             float(group["weight_decay"]), group.get("trust_clamp"))
        return loss


def _lamb_update(
    p: torch.Tensor,
    g: torch.Tensor,
    state: dict[str, Any],
    beta_m: float,
    beta_v: float,
    lr: float,
    eps: float,
    weight_decay: float,
    trust_clamp: tuple[float, float] | None,
) -> None:
    """One bias-corrected Lamb update of ``p`` in place from the gradient ``g`` (see the module docstring)."""
    state["step"] += 1
    t = state["step"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(beta_m).add_(g, alpha=1.0 - beta_m)
    v.mul_(beta_v).addcmul_(g, g, value=1.0 - beta_v)
    m_hat = m / (1.0 - beta_m**t)
    denom = (v / (1.0 - beta_v**t)).sqrt_().add_(eps)
    update = m_hat.div_(denom)
    if weight_decay != 0.0:
        update.add_(p, alpha=weight_decay)
    w_norm = torch.linalg.vector_norm(p)
    u_norm = torch.linalg.vector_norm(update)
    ratio = w_norm / u_norm
    if trust_clamp is not None:
        ratio = ratio.clamp(trust_clamp[0], trust_clamp[1])
    ratio = torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
    p.add_(update.mul_(ratio * -lr))


class Alto(Lamb):
    r"""ALTO: Lamb adapted with an exploration term, the moving average of gradient differences.

    See the module docstring for the paper, the update rule and what was assumed. With ``alpha = 0`` it is
    :class:`Lamb` with ``betas = betas[1:]``, step for step.

    Parameters
    ----------
    params
        Parameters or param groups (dicts that may override any of the hyper-parameters below).
    lr
        Learning rate :math:`\eta` (> 0).
    betas
        :math:`(\beta_1, \beta_2, \beta_3)` in the paper's order: decay of the gradient-difference average
        :math:`a`, then of Lamb's first and second moments; each in [0, 1).
    alpha
        Coefficient :math:`\alpha` of :math:`a` added to the gradient: < 0 explores along valleys (the paper's
        large-batch choice, -5), > 0 converges faster into the minimum found (their small-batch choice, 0.5).
    eps
        Added to :math:`\sqrt{\hat v}` (>= 0).
    weight_decay
        Decoupled weight decay :math:`\lambda` (>= 0).
    trust_clamp
        ``None`` or ``(lo, hi)``, as in :class:`Lamb`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.99, 0.9, 0.99),
        alpha: float = -5.0,
        eps: float = 1e-6,
        weight_decay: float = 1e-4,
        trust_clamp: tuple[float, float] | None = None,
    ):
        name = type(self).__name__
        check_hyperparameters(name, lr=lr, betas=betas, n_betas=3, weight_decay=weight_decay, eps=eps)
        try:
            alpha_ok = math.isfinite(float(alpha))
        except (TypeError, ValueError):
            alpha_ok = False
        if not alpha_ok:
            raise ValueError(f"invalid hyper-parameters for {name}: alpha={alpha!r} (must be a finite number)")
        defaults = {"lr": lr, "betas": tuple(betas), "alpha": float(alpha), "eps": eps,
                    "weight_decay": weight_decay, "trust_clamp": _check_trust_clamp(name, trust_clamp)}
        torch.optim.Optimizer.__init__(self, params, defaults)  # Lamb.__init__ would check two betas

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        super()._init_state(p, state)
        state["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_grad_diff"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _moment_betas(self, group: dict[str, Any]) -> tuple[float, float]:
        _, beta2, beta3 = group["betas"]
        return float(beta2), float(beta3)

    def _effective_grad(self, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
        r""":math:`\tilde g_k = g_k + \alpha a_k`, updating :math:`a` and the stored previous gradient."""
        beta_a = float(group["betas"][0])
        alpha = float(group["alpha"])
        prev, acc = state["prev_grad"], state["exp_grad_diff"]
        acc.mul_(beta_a).add_(grad - prev, alpha=1.0 - beta_a)
        prev.copy_(grad)
        if alpha == 0.0:
            return grad
        return grad.add(acc, alpha=alpha)


_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "lamb": Lamb,
    "alto": Alto,
}
_N_BETAS = {"adam": 2, "adamw": 2, "lamb": 2, "alto": 3}


def make_optimizer(name: str, params: ParamsT | Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    Parameters
    ----------
    name
        One of ``"adam"``, ``"adamw"`` (torch's), ``"lamb"``, ``"alto"`` (this module's); case-insensitive.
    params
        Parameters or param groups.
    **kwargs
        The optimizer's keyword arguments (``lr``, ``betas``, ``weight_decay``, ...); ALTO's ``betas`` has three
        values (see :class:`Alto`).

    Returns
    -------
    torch.optim.Optimizer
        The optimizer.

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones), a keyword the optimizer does not take, or
        hyper-parameters out of range (lr > 0, each beta in [0, 1), weight_decay >= 0, eps >= 0; one error
        names them all).
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in _CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}")
    cls = _CLASSES[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"optimizer {key!r} takes no argument(s) {', '.join(unknown)}; it takes: "
                         f"{', '.join(accepted)}")
    check_hyperparameters(key, lr=kwargs.get("lr"), betas=kwargs.get("betas"), n_betas=_N_BETAS[key],
                          weight_decay=kwargs.get("weight_decay"), eps=kwargs.get("eps"))
    return cls(params, **kwargs)
