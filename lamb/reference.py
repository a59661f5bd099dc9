r"""Float64 NumPy statements of every algorithm in You et al. (2020), line by line in the paper's notation.

This module is the ground truth of the project: the PyTorch and JAX optimizers are tested against it, and
the book's chapters build up to it. It trades every speed trick for legibility. Sources:

- You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer, Hsieh. *Large Batch Optimization for
  Deep Learning: Training BERT in 76 minutes*. ICLR 2020 (arXiv:1904.00962 v5): Algorithm 1 (LARS),
  Algorithm 2 (LAMB), the appendix (N-LAMB, NN-LAMB), Figures 2 and 3 (bias correction, norms).
- Kingma and Ba. *Adam*. ICLR 2015. Loshchilov and Hutter. *Decoupled Weight Decay Regularization*.
  ICLR 2019. Dozat. *Incorporating Nesterov Momentum into Adam*. ICLR workshop 2016. Duchi, Hazan and
  Singer. *Adaptive Subgradient Methods*. JMLR 2011. You, Gitman and Ginsburg. *Large Batch Training of
  Convolutional Networks*. arXiv:1708.03888, 2017.

Conventions
-----------
A model's parameters are a list of arrays ``x = [x^(1), ..., x^(h)]``, one array per layer ``i``; the
gradients ``g`` have the same structure. Every algorithm is one pure function::

    state, params = algorithm(state, params, grads, lr=..., **hyperparameters)

``state`` is ``None`` before the first step; the function returns a new state (a ``dict``) and new
parameters and never modifies its inputs. ``state["t"]`` is the number of steps taken. ``lr`` is
:math:`\eta_t`, the learning rate of *this* step (schedules are the caller's business). Everything is
computed in float64; all vector operations are element-wise.

Layer-wise algorithms (LARS, LAMB, N-LAMB, NN-LAMB) take

- ``norm``: ``"l2"`` (default), ``"l1"`` or ``"linf"``, the norm of the trust ratio (paper, Figure 3);
- ``trust_clip``: ``None`` for :math:`\phi(z) = z`, which is what the authors' code uses, or a pair
  ``(gamma_l, gamma_u)`` for :math:`\phi(z) = \min(\max(z, \gamma_l), \gamma_u)` (paper, Algorithm 2);
- ``weight_decay_mask`` and ``layer_adaptation_mask``: one bool per layer (``None``: all ``True``). A layer
  outside the first gets no weight decay; a layer outside the second gets trust ratio 1 (BERT's recipe
  excludes biases and normalization weights from both).

The zero-norm rule (the official TensorFlow implementation's): a layer whose weight norm
:math:`\|x^{(i)}\|` or update norm :math:`\|u^{(i)}\|` is zero gets trust ratio 1, so zero-initialised
layers still move and nothing divides by zero. The trust ratios of the last step are returned in
``state["trust_ratio"]`` (one float per layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NORMS = ("l1", "l2", "linf")
NESTEROV_VARIANTS = (None, "n", "nn")

Arrays = list[np.ndarray]


# --------------------------------------------------------------------------------------------------
# Validation: bad input gets a clear error that names the value and what is allowed.


def _check_nonnegative(name: str, value: float) -> None:
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_beta(name: str, value: float) -> None:
    _check_nonnegative(name, value)
    if not value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_norm(norm: str) -> str:
    """Return ``norm`` if it is one of ``"l1"``, ``"l2"``, ``"linf"``; raise ``ValueError`` otherwise."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def check_trust_clip(trust_clip) -> tuple[float, float] | None:
    """Return ``trust_clip`` as ``(gamma_l, gamma_u)`` with ``0 <= gamma_l <= gamma_u``, or ``None``."""
    if trust_clip is None:
        return None
    try:
        gamma_l, gamma_u = trust_clip
        gamma_l, gamma_u = float(gamma_l), float(gamma_u)
    except (TypeError, ValueError):
        raise ValueError(
            f"trust_clip must be None or a pair (gamma_l, gamma_u) of numbers, got {trust_clip!r}"
        ) from None
    if not (math.isfinite(gamma_l) and 0 <= gamma_l <= gamma_u) or math.isnan(gamma_u):
        raise ValueError(
            f"trust_clip must satisfy 0 <= gamma_l <= gamma_u (gamma_u may be inf), got {trust_clip!r}"
        )
    return gamma_l, gamma_u


def check_nesterov(nesterov) -> str | None:
    """Return ``nesterov`` if it is ``None``, ``"n"`` or ``"nn"``; raise ``ValueError`` otherwise."""
    if nesterov not in NESTEROV_VARIANTS:
        raise ValueError(f"nesterov must be one of {NESTEROV_VARIANTS}, got {nesterov!r}")
    return nesterov


def _check_momentum_decay(momentum_decay) -> None:
    if momentum_decay is not None:
        _check_nonnegative("momentum_decay", momentum_decay)


def _as_float64(arrays: Sequence[np.ndarray], name: str) -> Arrays:
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if np.iscomplexobj(a):
            raise TypeError(f"{name}[{i}] is complex ({a.dtype}); only real arrays are supported")
        out.append(a.astype(np.float64))
    return out


def _prepare(params, grads, mask_names_and_values):
    params = _as_float64(params, "params")
    grads = _as_float64(grads, "grads")
    if len(params) != len(grads):
        raise ValueError(f"params has {len(params)} layers but grads has {len(grads)}")
    for i, (x, g) in enumerate(zip(params, grads)):
        if x.shape != g.shape:
            raise ValueError(f"layer {i}: params shape {x.shape} differs from grads shape {g.shape}")
    masks = []
    for name, mask in mask_names_and_values:
        if mask is None:
            mask = [True] * len(params)
        mask = [bool(b) for b in mask]
        if len(mask) != len(params):
            raise ValueError(f"{name} has {len(mask)} entries, one per layer ({len(params)}) is needed")
        masks.append(mask)
    return params, grads, masks


# --------------------------------------------------------------------------------------------------
# The pieces: norms, the scaling function phi, the trust ratio, momentum schedules.


def layer_norm(a: np.ndarray, norm: str = "l2") -> float:
    r"""The norm of a whole layer, flattened: :math:`\|a\|_1`, :math:`\|a\|_2` or :math:`\|a\|_\infty`."""
    check_norm(norm)
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    if norm == "l1":
        return float(np.sum(np.abs(a)))
    if norm == "l2":
        return float(np.sqrt(np.sum(a * a)))
    return float(np.max(np.abs(a)))


def phi(z: float, trust_clip: tuple[float, float] | None = None) -> float:
    r"""The scaling function: :math:`\phi(z) = z`, or :math:`\min(\max(z, \gamma_l), \gamma_u)` when clipped."""
    if trust_clip is None:
        return z
    gamma_l, gamma_u = check_trust_clip(trust_clip)
    return min(max(z, gamma_l), gamma_u)


def trust_ratio(x: np.ndarray, u: np.ndarray, norm: str = "l2", trust_clip=None) -> float:
    r"""The layer-wise trust ratio :math:`\phi(\|x\|) / \|u\|` of a layer ``x`` and its update direction ``u``.

    Zero-norm rule: 1 where :math:`\|x\| = 0` or :math:`\|u\| = 0` (the official implementation's rule), so
    a zero-initialised layer still moves, by :math:`\eta u`, and nothing divides by zero.
    """
    x_norm = layer_norm(x, norm)
    u_norm = layer_norm(u, norm)
    if x_norm == 0.0 or u_norm == 0.0:
        return 1.0
    return phi(x_norm, trust_clip) / u_norm


def momentum_schedule(beta1: float, t: int, momentum_decay: float | None = 4e-3) -> float:
    r"""Dozat's warming momentum schedule :math:`\beta_{1,t} = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})`.

    ``momentum_decay`` is :math:`\psi` (0.004 in Dozat 2016 and ``torch.optim.NAdam``); ``None`` gives the
    constant schedule :math:`\beta_{1,t} = \beta_1`.
    """
    if momentum_decay is None:
        return beta1
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


def momentum_product(beta1: float, t: int, momentum_decay: float | None = 4e-3) -> float:
    r""":math:`P_1(t) = \prod_{i=1}^{t} \beta_{1,i}` (with a constant schedule, :math:`\beta_1^t`)."""
    product = 1.0
    for i in range(1, t + 1):
        product *= momentum_schedule(beta1, i, momentum_decay)
    return product


def _zeros_like(params: Arrays) -> Arrays:
    return [np.zeros_like(x) for x in params]


# --------------------------------------------------------------------------------------------------
# Baselines: SGD with momentum, Adagrad, Adam, AdamW, Nadam.


def sgd_momentum(state, params, grads, *, lr, momentum=0.9, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
    r"""SGD with heavy-ball momentum, as ``torch.optim.SGD`` states it.

    .. math::
        g_t &\leftarrow g_t + \lambda x_t \\
        b_t &= \mu b_{t-1} + (1 - \tau) g_t \quad (b_1 = g_1) \\
        x_{t+1} &= x_t - \eta_t b_t \quad\text{or, with Nesterov,}\quad x_t - \eta_t (g_t + \mu b_t)
    """
    _check_nonnegative("lr", lr)
    _check_beta("momentum", momentum)
    _check_nonnegative("dampening", dampening)
    _check_nonnegative("weight_decay", weight_decay)
    params, grads, _ = _prepare(params, grads, [])
    t = 0 if state is None else state["t"]
    new_b, new_x = [], []
    for i, (x, g) in enumerate(zip(params, grads)):
        g = g + weight_decay * x                                      # L2 regularization
        if t == 0:
            b = g.copy()                                              # b_1 = g_1
        else:
            b = momentum * state["b"][i] + (1 - dampening) * g        # b_t = mu b_{t-1} + (1 - tau) g_t
        direction = g + momentum * b if nesterov else b
        new_b.append(b)
        new_x.append(x - lr * direction)                              # x_{t+1} = x_t - eta_t b_t
    return {"t": t + 1, "b": new_b}, new_x


def adagrad(state, params, grads, *, lr, eps=1e-10, weight_decay=0.0):
    r"""Adagrad (Duchi et al. 2011), as ``torch.optim.Adagrad`` with no lr decay.

    .. math::
        s_t = s_{t-1} + g_t^2, \qquad x_{t+1} = x_t - \eta_t \frac{g_t}{\sqrt{s_t} + \epsilon}
    """
    _check_nonnegative("lr", lr)
    _check_nonnegative("eps", eps)
    _check_nonnegative("weight_decay", weight_decay)
    params, grads, _ = _prepare(params, grads, [])
    t = 0 if state is None else state["t"]
    s_prev = _zeros_like(params) if state is None else state["s"]
    new_s, new_x = [], []
    for x, g, s in zip(params, grads, s_prev):
        g = g + weight_decay * x                                      # L2 regularization
        s = s + g * g                                                 # s_t = s_{t-1} + g_t^2
        new_s.append(s)
        new_x.append(x - lr * g / (np.sqrt(s) + eps))                # x_{t+1} = x_t - eta g / (sqrt(s) + eps)
    return {"t": t + 1, "s": new_s}, new_x


def _adam_moments(state, grads, beta1, beta2):
    """m_t, v_t of Adam (and of LAMB): exponential moving averages of g and g^2, with m_0 = v_0 = 0."""
    m_prev = _zeros_like(grads) if state is None else state["m"]
    v_prev = _zeros_like(grads) if state is None else state["v"]
    m = [beta1 * m_i + (1 - beta1) * g for m_i, g in zip(m_prev, grads)]        # m_t
    v = [beta2 * v_i + (1 - beta2) * g * g for v_i, g in zip(v_prev, grads)]    # v_t
    return m, v


def _adam_direction(m, v, t, beta1, beta2, eps, bias_correction):
    r"""r_t = m_hat / (sqrt(v_hat) + eps), with m_hat = m_t / (1 - beta1^t), v_hat = v_t / (1 - beta2^t)."""
    if bias_correction:
        m = [m_i / (1 - beta1**t) for m_i in m]                       # m_t <- m_t / (1 - beta1^t)
        v = [v_i / (1 - beta2**t) for v_i in v]                       # v_t <- v_t / (1 - beta2^t)
    return [m_i / (np.sqrt(v_i) + eps) for m_i, v_i in zip(m, v)]   # r_t = m_t / (sqrt(v_t) + eps)


def _check_adam(lr, beta1, beta2, eps, weight_decay):
    _check_nonnegative("lr", lr)
    _check_beta("beta1", beta1)
    _check_beta("beta2", beta2)
    _check_nonnegative("eps", eps)
    _check_nonnegative("weight_decay", weight_decay)


def adam(state, params, grads, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         bias_correction=True):
    r"""Adam (Kingma and Ba 2015), with L2 regularization as ``torch.optim.Adam`` adds it.

    .. math::
        g_t &\leftarrow g_t + \lambda x_t \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t)
            \quad\text{(only with bias correction)} \\
        x_{t+1} &= x_t - \eta_t\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)

    The first bias-corrected step is :math:`\eta\, g_1 / (|g_1| + \epsilon)`: a signed step of size about
    :math:`\eta` in every coordinate.
    """
    _check_adam(lr, beta1, beta2, eps, weight_decay)
    params, grads, _ = _prepare(params, grads, [])
    t = (0 if state is None else state["t"]) + 1
    grads = [g + weight_decay * x for x, g in zip(params, grads)]    # L2: the decay enters the moments
    m, v = _adam_moments(state, grads, beta1, beta2)
    r = _adam_direction(m, v, t, beta1, beta2, eps, bias_correction)
    new_x = [x - lr * r_i for x, r_i in zip(params, r)]              # x_{t+1} = x_t - eta_t r_t
    return {"t": t, "m": m, "v": v}, new_x


def adamw(state, params, grads, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
          bias_correction=True, weight_decay_mask=None):
    r"""AdamW (Loshchilov and Hutter 2019): Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    .. math::
        r_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon), \qquad x_{t+1} = x_t - \eta_t (r_t + \lambda x_t)

    The decay never enters the moments. This is LAMB with every trust ratio forced to 1.
    """
    _check_adam(lr, beta1, beta2, eps, weight_decay)
    params, grads, (decay,) = _prepare(params, grads, [("weight_decay_mask", weight_decay_mask)])
    t = (0 if state is None else state["t"]) + 1
    m, v = _adam_moments(state, grads, beta1, beta2)
    r = _adam_direction(m, v, t, beta1, beta2, eps, bias_correction)
    new_x = [
        x - lr * (r_i + (weight_decay if d else 0.0) * x)            # x_{t+1} = x_t - eta_t (r_t + lambda x_t)
        for x, r_i, d in zip(params, r, decay)
    ]
    return {"t": t, "m": m, "v": v}, new_x


def nadam(state, params, grads, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
          momentum_decay=4e-3):
    r"""Nadam (Dozat 2016): Adam with Nesterov momentum and a warming momentum schedule.

    As ``torch.optim.NAdam`` states it (L2 weight decay, constant :math:`\beta_1` in the moving average,
    the schedule :math:`\beta_{1,t}` only in the look-ahead):

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= \frac{\beta_{1,t+1}\, m_t}{1 - P_1(t+1)} + \frac{(1-\beta_{1,t})\, g_t}{1 - P_1(t)},
            \qquad \hat v_t = \frac{v_t}{1-\beta_2^t} \\
        x_{t+1} &= x_t - \eta_t\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)

    with :math:`P_1(t) = \prod_{i \le t} \beta_{1,i}` (:func:`momentum_product`). N-LAMB's
    :math:`\hat v_t` carries an extra factor :math:`\beta_2` (see :func:`nlamb`); this one does not.
    """
    _check_adam(lr, beta1, beta2, eps, weight_decay)
    _check_momentum_decay(momentum_decay)
    params, grads, _ = _prepare(params, grads, [])
    t = (0 if state is None else state["t"]) + 1
    grads = [g + weight_decay * x for x, g in zip(params, grads)]
    m, v = _adam_moments(state, grads, beta1, beta2)
    m_hat = _nesterov_first_moment(m, grads, t, beta1, momentum_decay, bias_correction=True)
    v_hat = [v_i / (1 - beta2**t) for v_i in v]
    new_x = [x - lr * mh / (np.sqrt(vh) + eps) for x, mh, vh in zip(params, m_hat, v_hat)]
    return {"t": t, "m": m, "v": v}, new_x


# --------------------------------------------------------------------------------------------------
# The paper: LARS (Algorithm 1), LAMB (Algorithm 2), N-LAMB and NN-LAMB (appendix).


def _check_layerwise(lr, weight_decay, norm, trust_clip):
    _check_nonnegative("lr", lr)
    _check_nonnegative("weight_decay", weight_decay)
    check_norm(norm)
    return check_trust_clip(trust_clip)


def _layerwise_update(params, directions, lr, weight_decay, decay, adapt, norm, trust_clip):
    r"""x_{t+1}^(i) = x_t^(i) - eta_t phi(||x_t^(i)||) / ||u^(i)|| * u^(i), with u^(i) = direction + lambda x.

    ``directions`` is r_t (LAMB) or m_t (LARS, whose decay is already inside m_t: pass weight_decay=0).
    """
    new_x, ratios = [], []
    for x, d, lam, a in zip(params, directions, decay, adapt):
        u = d + (weight_decay if lam else 0.0) * x                   # u = r_t^(i) + lambda x_t^(i)
        rho = trust_ratio(x, u, norm, trust_clip) if a else 1.0     # phi(||x^(i)||) / ||u^(i)||
        new_x.append(x - lr * rho * u)                               # x_{t+1}^(i) = x_t^(i) - eta rho u
        ratios.append(rho)
    return new_x, ratios


def lars(state, params, grads, *, lr, beta1=0.9, weight_decay=0.0, norm="l2", trust_clip=None, nesterov=False,
         weight_decay_mask=None, layer_adaptation_mask=None):
    r"""LARS as the paper's Algorithm 1 states it: the trust ratio normalizes the momentum.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)(g_t + \lambda x_t), \qquad m_0 = 0 \\
        x_{t+1}^{(i)} &= x_t^{(i)} - \eta_t \frac{\phi(\|x_t^{(i)}\|)}{\|m_t^{(i)}\|} m_t^{(i)}

    Weight decay enters *inside* the momentum. Because :math:`m_0 = 0`, this :math:`m_t` is exactly
    :math:`(1-\beta_1)` times ``torch.optim.SGD``'s heavy-ball buffer, so the trust ratio makes the two
    identical; with layer adaptation off, LARS is ``SGD(lr=eta * (1 - beta1), momentum=beta1)``.
    The 2017 LARS paper (and ``optax.lars``) scale the *gradient* before the momentum instead: that is
    :func:`lars_2017`, a different algorithm.

    ``nesterov=True`` is not in the paper: the trust ratio then normalizes the Nesterov look-ahead
    :math:`u_t = \beta_1 m_t + (1-\beta_1)(g_t + \lambda x_t)` instead of :math:`m_t` (as ``Lars(nesterov=True)``
    and ``lamb.jax.lars(nesterov=True)`` do).
    """
    _check_beta("beta1", beta1)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
    trust_clip = _check_layerwise(lr, weight_decay, norm, trust_clip)
    params, grads, (decay, adapt) = _prepare(
        params, grads,
        [("weight_decay_mask", weight_decay_mask), ("layer_adaptation_mask", layer_adaptation_mask)],
    )
    t = 0 if state is None else state["t"]
    m_prev = _zeros_like(params) if state is None else state["m"]
    d = [g + (weight_decay if lam else 0.0) * x for g, x, lam in zip(grads, params, decay)]  # g_t + lambda x_t
    m = [beta1 * m_i + (1 - beta1) * d_i for m_i, d_i in zip(m_prev, d)]  # m_t = b1 m_{t-1} + (1 - b1) d_t
    u = [beta1 * m_i + (1 - beta1) * d_i for m_i, d_i in zip(m, d)] if nesterov else m
    new_x, ratios = _layerwise_update(params, u, lr, 0.0, decay, adapt, norm, trust_clip)
    return {"t": t + 1, "m": m, "trust_ratio": ratios}, new_x


def lars_2017(state, params, grads, *, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3,
              eps=0.0, nesterov=False, weight_decay_mask=None, layer_adaptation_mask=None,
              trust_denominator="combined"):
    r"""LARS in the order of You, Gitman and Ginsburg (2017) and ``optax.lars``: the trust ratio scales the
    gradient, *before* the momentum.

    .. math::
        q_t^{(i)} &= \eta_t \rho_t^{(i)} (g_t^{(i)} + \lambda x_t^{(i)}) \\
        b_t &= \mu b_{t-1} + q_t, \qquad x_{t+1} = x_t - b_t
            \quad (\text{Nesterov: } x_t - (q_t + \mu b_t))

    with :math:`\kappa` the trust coefficient and one of two local rates :math:`\rho_t^{(i)}`:

    - ``trust_denominator="combined"`` (default), ``optax.lars``'s form:
      :math:`\rho = \kappa \|x\| / (\|g + \lambda x\| + \epsilon)`;
    - ``trust_denominator="separate"``, the 2017 paper's Algorithm 1:
      :math:`\rho = \kappa \|x\| / (\|g\| + \lambda \|x\| + \epsilon)` (the paper writes :math:`\eta` for
      :math:`\kappa` and :math:`\beta` for :math:`\lambda`).

    The two coincide when :math:`\lambda = 0`; otherwise the paper's ratio is never larger (triangle
    inequality). The zero-norm rule (ratio 1) of :func:`trust_ratio` applies to both. Contrast :func:`lars`,
    the LAMB paper's Algorithm 1, which normalizes the momentum instead: with :math:`\kappa = 1` its first
    step equals this function's in the ``"combined"`` form, and in the ``"separate"`` form only when
    :math:`\lambda = 0` (or the gradient is parallel to the weights).
    """
    _check_nonnegative("lr", lr)
    _check_beta("momentum", momentum)
    _check_nonnegative("weight_decay", weight_decay)
    _check_nonnegative("trust_coefficient", trust_coefficient)
    _check_nonnegative("eps", eps)
    if trust_denominator not in ("combined", "separate"):
        raise ValueError(f"trust_denominator must be 'combined' (optax: ||g + lambda x||) or 'separate' "
                         f"(the 2017 paper: ||g|| + lambda ||x||), got {trust_denominator!r}")
    params, grads, (decay, adapt) = _prepare(
        params, grads,
        [("weight_decay_mask", weight_decay_mask), ("layer_adaptation_mask", layer_adaptation_mask)],
    )
    t = 0 if state is None else state["t"]
    b_prev = _zeros_like(params) if state is None else state["b"]
    new_b, new_x, ratios = [], [], []
    for x, g, b, lam, a in zip(params, grads, b_prev, decay, adapt):
        lam_i = weight_decay if lam else 0.0
        d = g + lam_i * x                                            # g + lambda x
        x_norm, d_norm = layer_norm(x), layer_norm(d)
        if trust_denominator == "combined":
            denominator = d_norm                                     # ||g + lambda x||       (optax)
        else:
            denominator = layer_norm(g) + lam_i * x_norm             # ||g|| + lambda ||x||   (2017 paper)
        rho = trust_coefficient * x_norm / (denominator + eps) if (a and x_norm > 0 and d_norm > 0) else 1.0
        q = lr * rho * d                                             # q_t = eta_t rho (g + lambda x)
        b = momentum * b + q                                         # b_t = mu b_{t-1} + q_t
        new_b.append(b)
        new_x.append(x - (q + momentum * b if nesterov else b))
        ratios.append(rho)
    return {"t": t + 1, "b": new_b, "trust_ratio": ratios}, new_x


def lamb(state, params, grads, *, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
         bias_correction=True, norm="l2", trust_clip=None, weight_decay_mask=None,
         layer_adaptation_mask=None):
    r"""LAMB, the paper's Algorithm 2 (v5, with the "adam-correction").

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        m_t &\leftarrow m_t / (1-\beta_1^t), \qquad v_t \leftarrow v_t / (1-\beta_2^t)
            \quad\text{(off with bias\_correction=False: Figure 2)} \\
        r_t &= m_t / (\sqrt{v_t} + \epsilon) \\
        x_{t+1}^{(i)} &= x_t^{(i)} - \eta_t \frac{\phi(\|x_t^{(i)}\|)}{\|r_t^{(i)} + \lambda x_t^{(i)}\|}
            \big(r_t^{(i)} + \lambda x_t^{(i)}\big)

    Two-fold adaptivity: per coordinate (Adam's :math:`\sqrt{v_t}`) and per layer (the trust ratio). With
    the trust ratio forced to 1 this is AdamW (:func:`adamw`); with :math:`\lambda = 0` and the identity
    :math:`\phi`, every adapted layer's step has norm exactly :math:`\eta_t \|x_t^{(i)}\|`.
    """
    _check_adam(lr, beta1, beta2, eps, weight_decay)
    trust_clip = _check_layerwise(lr, weight_decay, norm, trust_clip)
    params, grads, (decay, adapt) = _prepare(
        params, grads,
        [("weight_decay_mask", weight_decay_mask), ("layer_adaptation_mask", layer_adaptation_mask)],
    )
    t = (0 if state is None else state["t"]) + 1
    m, v = _adam_moments(state, grads, beta1, beta2)
    r = _adam_direction(m, v, t, beta1, beta2, eps, bias_correction)
    new_x, ratios = _layerwise_update(params, r, lr, weight_decay, decay, adapt, norm, trust_clip)
    return {"t": t, "m": m, "v": v, "trust_ratio": ratios}, new_x


def _nesterov_first_moment(m, grads, t, beta1, momentum_decay, bias_correction):
    r"""m_hat = beta1_{t+1} m_t / (1 - P1(t+1)) + (1 - beta1_t) g_t / (1 - P1(t)) (Dozat 2016).

    Without bias correction the two denominators are 1.
    """
    beta1_t = momentum_schedule(beta1, t, momentum_decay)
    beta1_next = momentum_schedule(beta1, t + 1, momentum_decay)
    if bias_correction:
        p1_t = momentum_product(beta1, t, momentum_decay)
        c_m, c_g = 1 - p1_t * beta1_next, 1 - p1_t                  # 1 - P1(t+1), 1 - P1(t)
    else:
        c_m = c_g = 1.0
    return [beta1_next * m_i / c_m + (1 - beta1_t) * g / c_g for m_i, g in zip(m, grads)]


def _nesterov_lamb(state, params, grads, *, variant, lr, beta1, beta2, eps, weight_decay, bias_correction,
                   momentum_decay, norm, trust_clip, weight_decay_mask, layer_adaptation_mask):
    _check_adam(lr, beta1, beta2, eps, weight_decay)
    _check_momentum_decay(momentum_decay)
    trust_clip = _check_layerwise(lr, weight_decay, norm, trust_clip)
    params, grads, (decay, adapt) = _prepare(
        params, grads,
        [("weight_decay_mask", weight_decay_mask), ("layer_adaptation_mask", layer_adaptation_mask)],
    )
    t = (0 if state is None else state["t"]) + 1
    m, v = _adam_moments(state, grads, beta1, beta2)
    m_hat = _nesterov_first_moment(m, grads, t, beta1, momentum_decay, bias_correction)
    if variant == "n":
        c_v = (1 - beta2**t) if bias_correction else 1.0
        v_hat = [beta2 * v_i / c_v for v_i in v]                     # v_hat = beta2 v_t / (1 - beta2^t)
    else:
        # NN-LAMB: the same look-ahead on the second moment, with a constant schedule beta2_t = beta2,
        # so P2(t) = beta2^t.
        c_v, c_g = ((1 - beta2 ** (t + 1)), (1 - beta2**t)) if bias_correction else (1.0, 1.0)
        v_hat = [
            beta2 * v_i / c_v + (1 - beta2) * g * g / c_g           # beta2 v/(1-P2(t+1)) + (1-beta2) g^2/(1-P2(t))
            for v_i, g in zip(v, grads)
        ]
    r = [mh / (np.sqrt(vh) + eps) for mh, vh in zip(m_hat, v_hat)]  # r_t = m_hat / (sqrt(v_hat) + eps)
    new_x, ratios = _layerwise_update(params, r, lr, weight_decay, decay, adapt, norm, trust_clip)
    return {"t": t, "m": m, "v": v, "trust_ratio": ratios}, new_x


def nlamb(state, params, grads, *, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
          bias_correction=True, momentum_decay=4e-3, norm="l2", trust_clip=None, weight_decay_mask=None,
          layer_adaptation_mask=None):
    r"""N-LAMB (the paper's appendix): LAMB with Nesterov momentum on the first moment (Dozat's estimator).

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= \frac{\beta_{1,t+1} m_t}{1 - P_1(t+1)} + \frac{(1-\beta_{1,t}) g_t}{1 - P_1(t)},
            \qquad \hat v_t = \frac{\beta_2 v_t}{1 - \beta_2^t} \\
        r_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon), \quad\text{then the LAMB update with } r_t.

    :math:`\beta_{1,t}` is Dozat's schedule (:func:`momentum_schedule`; ``momentum_decay=None`` makes it
    constant) and :math:`P_1(t) = \prod_{i \le t} \beta_{1,i}`. The factor :math:`\beta_2` in
    :math:`\hat v_t` is Dozat's (the appendix's exact text could not be checked; the book's page "Sources and
    what was verified" says what was); ``torch.optim.NAdam`` omits it. Without bias correction the denominators are 1.
    """
    return _nesterov_lamb(state, params, grads, variant="n", lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                          weight_decay=weight_decay, bias_correction=bias_correction,
                          momentum_decay=momentum_decay, norm=norm, trust_clip=trust_clip,
                          weight_decay_mask=weight_decay_mask, layer_adaptation_mask=layer_adaptation_mask)


def nnlamb(state, params, grads, *, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
           bias_correction=True, momentum_decay=4e-3, norm="l2", trust_clip=None, weight_decay_mask=None,
           layer_adaptation_mask=None):
    r"""NN-LAMB (the paper's appendix): Nesterov's look-ahead on both moments.

    .. math::
        \hat m_t &= \frac{\beta_{1,t+1} m_t}{1 - P_1(t+1)} + \frac{(1-\beta_{1,t}) g_t}{1 - P_1(t)} \\
        \hat v_t &= \frac{\beta_{2} v_t}{1 - \beta_2^{t+1}} + \frac{(1-\beta_{2}) g_t^2}{1 - \beta_2^{t}} \\
        r_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon), \quad\text{then the LAMB update with } r_t.

    The second-moment schedule is constant, :math:`\beta_{2,t} = \beta_2`, so :math:`P_2(t) = \beta_2^t`.
    """
    return _nesterov_lamb(state, params, grads, variant="nn", lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                          weight_decay=weight_decay, bias_correction=bias_correction,
                          momentum_decay=momentum_decay, norm=norm, trust_clip=trust_clip,
                          weight_decay_mask=weight_decay_mask, layer_adaptation_mask=layer_adaptation_mask)


ALGORITHMS = {
    "sgd_momentum": sgd_momentum,
    "adagrad": adagrad,
    "adam": adam,
    "adamw": adamw,
    "nadam": nadam,
    "lars": lars,
    "lars_2017": lars_2017,
    "lamb": lamb,
    "nlamb": nlamb,
    "nnlamb": nnlamb,
}
