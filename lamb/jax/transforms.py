r"""The building blocks of LAMB and LARS as optax ``GradientTransformation`` s.

Each block does one thing of the paper, so that :func:`lamb.jax.lamb` and :func:`lamb.jax.lars` read as
``optax.chain`` s of them (You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76
minutes*, ICLR 2020):

- :func:`scale_by_adam`: Adam's direction :math:`r_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon)`, with the
  bias correction as a switch (``optax.scale_by_adam`` always corrects; the paper's Figure 2 turns it off).
- :func:`scale_by_nesterov_adam`: the look-ahead directions of N-LAMB and NN-LAMB (the paper's appendix, after
  Dozat 2016), with Dozat's warming momentum schedule.
- :func:`scale_by_ema_momentum`: the momentum of the paper's LARS (Algorithm 1), an exponential moving
  average :math:`m_t = \beta_1 m_{t-1} + (1 - \beta_1) d_t` (optax's ``trace`` has no :math:`1 - \beta_1`).
- :func:`scale_by_trust_ratio`: the layer-wise trust ratio :math:`\phi(\|x^{(i)}\|) / \|u^{(i)}\|` in the L2,
  L1 or L-infinity norm, with the zero-norm rule, recording the ratios of the last step in its state.

Conventions follow ``optax._src.transform``: NamedTuple states, ``optax.tree_utils`` for tree arithmetic,
``mu_dtype`` for the first moment, ``optax.safe_increment`` for the step count. Every array of a pytree is one
"layer" :math:`i`. Arrays may be sharded (``jax.sharding.NamedSharding``): JAX's arrays are global, so every
norm here is the norm of the whole layer and XLA inserts the cross-device reductions.

Precision: moments default to at least float32 (fp32 for bf16/fp16 parameters, as :mod:`lamb.torch` keeps
them), norms and trust ratios are computed in at least float32; the updates come out in that dtype and
``optax.apply_updates`` rounds once into the parameter's dtype.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from . import _checks

__all__ = [
    "NORMS", "NESTEROV_VARIANTS",
    "ScaleByTrustRatioState", "ScaleByNesterovAdamState", "ScaleByEmaMomentumState",
    "scale_by_adam", "scale_by_nesterov_adam", "scale_by_ema_momentum", "scale_by_trust_ratio",
    "layer_norm", "trust_ratio", "momentum_schedule", "one_minus_power",
]

NORMS = ("l1", "l2", "linf")
NESTEROV_VARIANTS = (None, "n", "nn")


def _at_least_float32(dtype) -> jnp.dtype:
    """bf16/fp16 -> float32; float32/float64 unchanged (the dtype of state and arithmetic)."""
    return jnp.promote_types(dtype, jnp.float32)


def _state_dtype(x, dtype: Optional[Any]) -> jnp.dtype:
    return jnp.dtype(dtype) if dtype is not None else _at_least_float32(x.dtype)


def _scalar_float_dtype() -> jnp.dtype:
    """float64 when ``jax_enable_x64`` is on, else float32: the dtype of host-like scalars in the state."""
    return jnp.result_type(float)


def _hyperparameters(runtime: bool, *values):
    """Python hyperparameters as they enter the per-element arithmetic: unchanged, or (``runtime=True``) as
    0-d arrays behind an optimization barrier, which XLA cannot fold back into constants.

    :func:`lamb.jax.lamb` recomputes the update inside its norm reductions (see ``_two_pass_trust_ratio``);
    XLA:CPU runs such a reduction as one YNNPACK fusion only when its scalars are operands: a literal constant
    there is first broadcast into a temporary array of the layer's size (94 MB for BERT's word embeddings,
    written and page-faulted at every step). Values are rounded exactly as the constants would be.
    """
    if not runtime:
        return values
    return jax.lax.optimization_barrier(tuple(jnp.asarray(v) for v in values))


def one_minus_power(b, t):
    r""":math:`1 - b^t` (a bias correction), as :math:`-\mathrm{expm1}(t \ln b)`, accurate in float32.

    ``1 - b**t`` in float32 inherits the rounding of :math:`b` itself: float32(0.999) is off by 1.3e-8, so
    :math:`1 - \beta_2` is off by 1.3e-5 relative and the first Adam step by 6.4e-6 (``optax.scale_by_adam``
    has this error). Taking :math:`\ln b` in double precision on the host (for a Python ``b``) keeps the
    correction exact to float32 rounding. ``t >= 1`` may be traced; ``b`` may be a traced array too.
    """
    if isinstance(b, (int, float)):
        if b == 0:
            return jnp.ones_like(t)
        return -jnp.expm1(t * math.log(b))
    return -jnp.expm1(t * jnp.log(b))


# --------------------------------------------------------------------------------------------------
# Adam's moments, with the bias correction as a switch.


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    mu_dtype: Optional[Any] = None,
    *,
    bias_correction: bool = True,
) -> optax.GradientTransformation:
    r"""Rescale updates by Adam's moments, with the bias correction optional (the paper's Figure 2).

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t)
            \qquad\text{(only with bias\_correction)} \\
        r_t &= \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)

    With ``bias_correction=True`` this is ``optax.scale_by_adam`` (same state, ``optax.ScaleByAdamState``),
    except that the second moment is kept in at least float32 (optax keeps it in the parameters' dtype, where
    bf16 cannot resolve the increments :math:`(1-\beta_2) g^2 \approx 10^{-3} v`). LAMB uses
    :math:`r_t` as the direction of Algorithm 2 (You et al. 2020); without the bias correction the first
    steps are small, which the paper shows acts like a warm-up. The corrections :math:`1 - \beta^t` are
    computed as :math:`-\mathrm{expm1}(t \ln \beta)` (:func:`one_minus_power`), which in float32 removes the
    6e-6 relative error that ``float32(0.999)`` puts into optax's ``1 - b2**t`` (tested).

    Args:
      b1: :math:`\beta_1` in [0, 1), decay of the first moment.
      b2: :math:`\beta_2` in [0, 1), decay of the second moment.
      eps: :math:`\epsilon \ge 0`, added outside the square root (1e-6 is the LAMB code's value).
      eps_root: :math:`\epsilon_{root} \ge 0`, added inside the square root (as optax; 0 in the paper).
      mu_dtype: dtype of :math:`m_t`; ``None``: the parameters' dtype promoted to at least float32.
      bias_correction: divide the moments by :math:`1 - \beta^t` (the "adam-correction"). Default True.

    Returns:
      An :class:`optax.GradientTransformation` with state ``optax.ScaleByAdamState(count, mu, nu)``.

    References:
      Kingma and Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
      You et al., *Large Batch Optimization for Deep Learning*, ICLR 2020, Algorithm 2 and Figure 2.
    """
    _checks.check_beta("b1", b1)
    _checks.check_beta("b2", b2)
    _checks.check_nonnegative("eps", eps)
    _checks.check_nonnegative("eps_root", eps_root)
    _checks.check_bool("bias_correction", bias_correction)
    return _from_parts(*_adam_parts(b1, b2, eps, eps_root, mu_dtype, bias_correction))


def _adam_parts(b1, b2, eps, eps_root, mu_dtype, bias_correction):
    """:func:`scale_by_adam` after validation, in three parts: ``init``; ``advance(g, state) -> (mu, nu,
    new_state)``, the new moments (``mu`` before its cast to ``mu_dtype``); and ``direction(g, mu, nu,
    new_state, runtime) -> r``, with ``runtime`` as in :func:`_hyperparameters`. :func:`lamb.jax.lamb` calls
    ``direction`` twice (see ``lamb.jax.aliases._two_pass_trust_ratio``)."""
    mu_dtype = optax._src.utils.canonicalize_dtype(mu_dtype)

    def init_fn(params):
        _checks.check_real("lamb.jax.scale_by_adam", params)
        mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_state_dtype(p, mu_dtype)), params)
        nu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_at_least_float32(p.dtype)), params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def advance(updates, state):
        _checks.check_real("lamb.jax.scale_by_adam", updates, "updates")
        # The gradient is raised to the moments' precision before it is squared.
        mu = jax.tree.map(lambda g, m: (1 - b1) * g.astype(m.dtype) + b1 * m, updates, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - b2) * jnp.square(g.astype(v.dtype)) + b2 * v, updates, state.nu)
        count_inc = optax.safe_increment(state.count)
        return mu, nu, optax.ScaleByAdamState(count=count_inc, mu=otu.tree_cast_like(mu, state.mu), nu=nu)

    def direction(updates, mu, nu, new_state, runtime):
        del updates
        k_eps, k_eps_root = _hyperparameters(runtime, eps, eps_root)
        if bias_correction:
            t = new_state.count.astype(_scalar_float_dtype())
            c1, c2 = _hyperparameters(runtime, one_minus_power(b1, t), one_minus_power(b2, t))
            mu_hat = jax.tree.map(lambda m: m / c1.astype(m.dtype), mu)    # m_t / (1 - beta1^t)
            nu_hat = jax.tree.map(lambda v: v / c2.astype(v.dtype), nu)    # v_t / (1 - beta2^t)
        elif runtime:       # v / 1 (exact): a sqrt(v_t) shared by both computations of u would be stored
            (one,) = _hyperparameters(True, 1.0)
            mu_hat, nu_hat = mu, jax.tree.map(lambda v: v / one.astype(v.dtype), nu)
        else:
            mu_hat, nu_hat = mu, nu
        if eps_root == 0:   # as a literal 0 the addition folds away; as a run-time scalar it would not
            return jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + k_eps), mu_hat, nu_hat)
        return jax.tree.map(lambda m, v: m / (jnp.sqrt(v + k_eps_root) + k_eps), mu_hat, nu_hat)

    return init_fn, advance, direction


def _from_parts(init_fn, advance, direction) -> optax.GradientTransformation:
    def update_fn(updates, state, params=None):
        del params
        mu, nu, new_state = advance(updates, state)
        return direction(updates, mu, nu, new_state, False), new_state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------------
# N-LAMB's and NN-LAMB's look-ahead moments.


def momentum_schedule(b1, t, momentum_decay: Optional[float] = 4e-3):
    r"""Dozat's warming schedule :math:`\beta_{1,t} = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})`.

    ``momentum_decay`` is :math:`\psi` (0.004, as ``torch.optim.NAdam``); ``None`` gives the constant
    :math:`\beta_{1,t} = \beta_1`. ``t`` may be a traced array.
    """
    if momentum_decay is None:
        return b1 * jnp.ones_like(t)
    return b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


class ScaleByNesterovAdamState(NamedTuple):
    """State of :func:`scale_by_nesterov_adam`.

    ``mu_product`` is :math:`P_1(t) = \\prod_{i \\le t} \\beta_{1,i}`, a scalar in float32 (float64 with
    ``jax_enable_x64``); ``mu`` and ``nu`` are :math:`m_t` and :math:`v_t`.
    """

    count: jax.Array  # shape=(), dtype=jnp.int32.
    mu_product: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_nesterov_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    nesterov: str = "n",
    momentum_decay: Optional[float] = 4e-3,
    bias_correction: bool = True,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
    r"""Rescale updates by the Nesterov look-ahead moments of N-LAMB (``"n"``) or NN-LAMB (``"nn"``).

    With the schedule :math:`\beta_{1,t}` (:func:`momentum_schedule`) and
    :math:`P_1(t) = \prod_{i \le t} \beta_{1,i}`:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= \frac{\beta_{1,t+1}\, m_t}{1 - P_1(t+1)} + \frac{(1-\beta_{1,t})\, g_t}{1 - P_1(t)} \\
        \text{N-LAMB:}\quad \hat v_t &= \frac{\beta_2 v_t}{1 - \beta_2^t}, \qquad
        \text{NN-LAMB:}\quad \hat v_t = \frac{\beta_2 v_t}{1 - \beta_2^{t+1}}
            + \frac{(1-\beta_2) g_t^2}{1 - \beta_2^t} \\
        r_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon)

    Without bias correction every denominator :math:`1 - P` is 1. These are
    :func:`lamb.reference.nlamb` and :func:`lamb.reference.nnlamb` before the layer-wise step, and
    :class:`lamb.torch.Lamb` with ``nesterov="n"|"nn"``. The moving average itself uses the constant
    :math:`\beta_1` (as ``torch.optim.NAdam``); the schedule enters only the look-ahead.

    N-LAMB's :math:`\hat v_t` carries Dozat's factor :math:`\beta_2`, which ``optax.scale_by_adam(nesterov=True)``
    and ``torch.optim.NAdam`` omit (Dozat's form; the book's "Sources and what was verified" page says
    how far the paper's appendix could be checked). With ``momentum_decay=None`` and
    ``eps=0`` the two differ exactly by the factor :math:`\sqrt{\beta_2}`, which a trust ratio cancels
    (tested).

    Args:
      b1: :math:`\beta_1` in [0, 1).
      b2: :math:`\beta_2` in [0, 1).
      eps: :math:`\epsilon \ge 0`, outside the square root.
      nesterov: ``"n"`` (look-ahead on the first moment) or ``"nn"`` (on both moments, with the constant
        schedule :math:`\beta_{2,t} = \beta_2`, so :math:`P_2(t) = \beta_2^t`).
      momentum_decay: :math:`\psi \ge 0` of Dozat's schedule (default 4e-3); ``None`` for a constant
        :math:`\beta_{1,t} = \beta_1`, where :math:`P_1(t) = \beta_1^t`.
      bias_correction: divide by :math:`1 - P` as above. Default True.
      mu_dtype: dtype of :math:`m_t`; ``None``: the parameters' dtype promoted to at least float32.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleByNesterovAdamState`.

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
      You et al., *Large Batch Optimization for Deep Learning*, ICLR 2020, appendix (N-LAMB, NN-LAMB).
    """
    _checks.check_beta("b1", b1)
    _checks.check_beta("b2", b2)
    _checks.check_nonnegative("eps", eps)
    if _checks.check_nesterov(nesterov) is None:
        raise ValueError("nesterov must be 'n' or 'nn' for scale_by_nesterov_adam (use scale_by_adam for "
                         "plain Adam moments), got None")
    _checks.check_momentum_decay(momentum_decay)
    _checks.check_bool("bias_correction", bias_correction)
    return _from_parts(*_nesterov_adam_parts(b1, b2, eps, nesterov, momentum_decay, bias_correction, mu_dtype))


def _nesterov_adam_parts(b1, b2, eps, nesterov, momentum_decay, bias_correction, mu_dtype):
    """:func:`scale_by_nesterov_adam` after validation, in the three parts of :func:`_adam_parts`."""
    mu_dtype = optax._src.utils.canonicalize_dtype(mu_dtype)

    def init_fn(params):
        _checks.check_real("lamb.jax.scale_by_nesterov_adam", params)
        mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_state_dtype(p, mu_dtype)), params)
        nu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_at_least_float32(p.dtype)), params)
        return ScaleByNesterovAdamState(count=jnp.zeros([], jnp.int32),
                                        mu_product=jnp.ones([], _scalar_float_dtype()), mu=mu, nu=nu)

    def advance(updates, state):
        _checks.check_real("lamb.jax.scale_by_nesterov_adam", updates, "updates")
        count_inc = optax.safe_increment(state.count)
        t = count_inc.astype(state.mu_product.dtype)
        p1_t = state.mu_product * momentum_schedule(b1, t, momentum_decay)  # P1(t) = P1(t-1) beta1_t
        mu = jax.tree.map(lambda g, m: (1 - b1) * g.astype(m.dtype) + b1 * m, updates, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - b2) * jnp.square(g.astype(v.dtype)) + b2 * v, updates, state.nu)
        new_state = ScaleByNesterovAdamState(count=count_inc, mu_product=p1_t,
                                             mu=otu.tree_cast_like(mu, state.mu), nu=nu)
        return mu, nu, new_state

    def direction(updates, mu, nu, new_state, runtime):
        t = new_state.count.astype(new_state.mu_product.dtype)
        p1_t = new_state.mu_product
        beta1_t = momentum_schedule(b1, t, momentum_decay)
        beta1_next = momentum_schedule(b1, t + 1, momentum_decay)
        # The scalar coefficients of m_hat = a_m m + a_g g and v_hat = b_v v + b_g g^2, in the state's
        # scalar precision, cast once to each layer's dtype.
        if bias_correction:
            a_m, a_g = beta1_next / (1 - p1_t * beta1_next), (1 - beta1_t) / (1 - p1_t)
        else:
            a_m, a_g = beta1_next, 1 - beta1_t
        if nesterov == "n":
            b_v = b2 / one_minus_power(b2, t) if bias_correction else b2 * jnp.ones_like(t)
            b_g = jnp.zeros_like(t)                                          # unused
        else:
            if bias_correction:
                b_v, b_g = b2 / one_minus_power(b2, t + 1), (1 - b2) / one_minus_power(b2, t)
            else:
                b_v, b_g = b2 * jnp.ones_like(t), (1 - b2) * jnp.ones_like(t)
        a_m, a_g, b_v, b_g, k_eps = _hyperparameters(runtime, a_m, a_g, b_v, b_g, eps)

        def one(g, m, v):
            g = g.astype(m.dtype)
            m_hat = a_m.astype(m.dtype) * m + a_g.astype(m.dtype) * g      # Dozat's look-ahead m_hat
            v_hat = b_v.astype(v.dtype) * v
            if nesterov == "nn":                                            # NN-LAMB: look-ahead v_hat
                g_v = g.astype(v.dtype)
                if runtime:   # (b g) g, not b g^2: a g^2 shared with v_t's update would be stored
                    v_hat = v_hat + (b_g.astype(v.dtype) * g_v) * g_v
                else:
                    v_hat = v_hat + b_g.astype(v.dtype) * jnp.square(g_v)
            return m_hat / (jnp.sqrt(v_hat) + k_eps)                        # r_t

        return jax.tree.map(one, updates, mu, nu)

    return init_fn, advance, direction


# --------------------------------------------------------------------------------------------------
# LARS's momentum (Algorithm 1): an exponential moving average, not optax's trace.


class ScaleByEmaMomentumState(NamedTuple):
    """State of :func:`scale_by_ema_momentum`: ``mu`` is :math:`m_t`."""

    mu: optax.Updates


def scale_by_ema_momentum(
    decay: float = 0.9,
    nesterov: bool = False,
    accumulator_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
    r"""The momentum of the paper's LARS (Algorithm 1): an exponential moving average of the updates.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) d_t, \qquad m_0 = 0 \\
        \text{output} &= m_t \qquad\text{or, with nesterov,}\qquad \beta_1 m_t + (1 - \beta_1) d_t

    where :math:`d_t` is the incoming update (in :func:`lamb.jax.lars`, :math:`g_t + \lambda x_t`). Without
    Nesterov this is ``optax.ema(decay, debias=False)``. Because :math:`m_0 = 0`, :math:`m_t = (1-\beta_1) b_t`
    with :math:`b_t = \beta_1 b_{t-1} + d_t` the heavy-ball buffer of ``optax.trace`` and
    ``torch.optim.SGD``, and the Nesterov output is :math:`(1-\beta_1)` times SGD's Nesterov direction
    :math:`d_t + \beta_1 b_t`: the same definition as :class:`lamb.torch.Lars` (``nesterov=True``).

    Args:
      decay: :math:`\beta_1` in [0, 1).
      nesterov: output the look-ahead :math:`\beta_1 m_t + (1 - \beta_1) d_t`. Default False.
      accumulator_dtype: dtype of :math:`m_t`; ``None``: the parameters' dtype promoted to at least float32.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleByEmaMomentumState`.

    References:
      You et al., *Large Batch Optimization for Deep Learning*, ICLR 2020, Algorithm 1.
    """
    _checks.check_beta("decay (momentum)", decay)
    _checks.check_bool("nesterov", nesterov)
    accumulator_dtype = optax._src.utils.canonicalize_dtype(accumulator_dtype)

    def init_fn(params):
        _checks.check_real("lamb.jax.scale_by_ema_momentum", params)
        return ScaleByEmaMomentumState(
            mu=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_state_dtype(p, accumulator_dtype)), params))

    def update_fn(updates, state, params=None):
        del params
        _checks.check_real("lamb.jax.scale_by_ema_momentum", updates, "updates")
        mu = jax.tree.map(lambda d, m: (1 - decay) * d.astype(m.dtype) + decay * m, updates, state.mu)
        if nesterov:
            updates = jax.tree.map(lambda d, m: decay * m + (1 - decay) * d.astype(m.dtype), updates, mu)
        else:
            updates = mu
        return updates, ScaleByEmaMomentumState(mu=otu.tree_cast_like(mu, state.mu))

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------------
# The trust ratio.


def layer_norm(x: jax.Array, norm: str = "l2") -> jax.Array:
    r"""The norm of a whole array, flattened: :math:`\|x\|_1`, :math:`\|x\|_2` or :math:`\|x\|_\infty`.

    Computed in at least float32 (a bf16 sum of squares would lose the small entries). An empty array has
    norm 0. On a sharded array this is the norm of the global array (XLA adds the reductions).
    """
    _checks.check_norm(norm)
    x = x.astype(_at_least_float32(x.dtype))
    if x.size == 0:
        return jnp.zeros([], x.dtype)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(jnp.square(x)))
    if norm == "l1":
        return jnp.sum(jnp.abs(x))
    return jnp.max(jnp.abs(x))


def trust_ratio(weight_norm: jax.Array, update_norm: jax.Array, trust_clip=None) -> jax.Array:
    r"""The trust ratio :math:`\phi(\|x\|) / \|u\|`, and 1 where :math:`\|x\| = 0` or :math:`\|u\| = 0`.

    :math:`\phi(z) = z` for ``trust_clip=None``, else :math:`\min(\max(z, \gamma_l), \gamma_u)`.
    """
    if trust_clip is None:
        phi = weight_norm                                                   # phi(z) = z
    else:
        phi = jnp.clip(weight_norm, trust_clip[0], trust_clip[1])           # min(max(z, gamma_l), gamma_u)
    usable = jnp.logical_and(weight_norm > 0, update_norm > 0)
    # The inner where keeps 0/0 out of even the discarded branch (and out of gradients through it).
    return jnp.where(usable, phi / jnp.where(usable, update_norm, 1), jnp.ones_like(phi))


class ScaleByTrustRatioState(NamedTuple):
    """State of :func:`scale_by_trust_ratio`: ``trust_ratio``, one 0-d array per layer, of the last step.

    Before the first step every entry is 1. Read it from a whole optimizer state with
    ``optax.tree_utils.tree_get(state, "trust_ratio")``.
    """

    trust_ratio: optax.Updates


def scale_by_trust_ratio(norm: str = "l2", trust_clip=None) -> optax.GradientTransformation:
    r"""Scale each layer's update by its trust ratio, in a chosen norm, and record the ratios.

    For every array ("layer" :math:`i`) of the parameters :math:`x` and of the incoming update :math:`u`:

    .. math::
        u^{(i)} \leftarrow \rho^{(i)} u^{(i)}, \qquad
        \rho^{(i)} = \frac{\phi(\|x^{(i)}\|)}{\|u^{(i)}\|}, \qquad
        \phi(z) = z \ \text{or}\ \min(\max(z, \gamma_l), \gamma_u)

    and :math:`\rho^{(i)} = 1` where :math:`\|x^{(i)}\| = 0` or :math:`\|u^{(i)}\| = 0` (the zero-norm rule of
    the authors' TensorFlow code, which ``optax.scale_by_trust_ratio`` also follows: a zero-initialised layer
    still moves, by :math:`\eta u`, and nothing divides by zero). The norms are of the whole layer: on
    sharded arrays, of the global array, not of a shard.

    Differences from ``optax.scale_by_trust_ratio``: the norm can be L1 or L-infinity (the paper's Figure 3),
    :math:`\phi` can be clipped (Algorithm 2), there is no ``trust_coefficient`` (LAMB has none; LARS's
    :math:`\eta` absorbs it), and the ratios are kept in the state for plots (the paper's Figures 9-14)::

        ratios = optax.tree_utils.tree_get(opt_state, "trust_ratio")  # a pytree like params, 0-d arrays

    Under ``optax.masked`` (e.g. ``layer_adaptation_mask``), the layers outside the mask hold
    ``optax.MaskedNode()`` there: their ratio is 1 and not recorded.

    Args:
      norm: ``"l2"`` (default), ``"l1"`` or ``"linf"``.
      trust_clip: ``None`` for :math:`\phi(z) = z` (the authors' code), or :math:`(\gamma_l, \gamma_u)` with
        :math:`0 \le \gamma_l \le \gamma_u \le \infty`.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`ScaleByTrustRatioState`; its ``update``
      needs ``params``.

    References:
      You et al., *Large Batch Optimization for Deep Learning*, ICLR 2020, Algorithms 1 and 2, Figure 3.
    """
    _checks.check_norm(norm)
    trust_clip = _checks.check_trust_clip(trust_clip)

    def init_fn(params):
        _checks.check_real("lamb.jax.scale_by_trust_ratio", params)
        return ScaleByTrustRatioState(
            trust_ratio=jax.tree.map(lambda p: jnp.ones([], _at_least_float32(p.dtype)), params))

    def update_fn(updates, state, params):
        if params is None:
            raise ValueError(optax._src.base.NO_PARAMS_MSG)
        _checks.check_real("lamb.jax.scale_by_trust_ratio", updates, "updates")

        def ratio(u, x, old_ratio):
            dtype = jnp.promote_types(_at_least_float32(u.dtype), x.dtype)
            rho = trust_ratio(layer_norm(x.astype(dtype), norm), layer_norm(u.astype(dtype), norm), trust_clip)
            return rho.astype(old_ratio.dtype)

        ratios = jax.tree.map(ratio, updates, params, state.trust_ratio)
        updates = jax.tree.map(lambda u, rho: u * rho.astype(u.dtype), updates, ratios)
        return updates, ScaleByTrustRatioState(trust_ratio=ratios)

    return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_recorded_trust_ratio() -> optax.GradientTransformation:
    """The second pass of :func:`lamb.jax.lamb`'s update: scale each layer by the ratio already in the state.

    Same state as :func:`scale_by_trust_ratio` (whose ``init`` it shares); its ``update`` multiplies by
    ``state.trust_ratio``, which the first pass has just computed, and returns the state unchanged.
    """

    def init_fn(params):
        _checks.check_real("lamb.jax.scale_by_trust_ratio", params)
        return ScaleByTrustRatioState(
            trust_ratio=jax.tree.map(lambda p: jnp.ones([], _at_least_float32(p.dtype)), params))

    def update_fn(updates, state, params=None):
        del params
        updates = jax.tree.map(lambda u, rho: u * rho.astype(u.dtype), updates, state.trust_ratio)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def _add_decayed_weights(weight_decay, mask, *, runtime_hyperparameters: bool) -> optax.GradientTransformation:
    """``optax.add_decayed_weights(weight_decay, mask)``, with the same state; with ``runtime_hyperparameters``
    a constant ``weight_decay`` enters as a run-time scalar (see :func:`_hyperparameters`)."""
    if not runtime_hyperparameters or callable(weight_decay) or (
            isinstance(weight_decay, (int, float)) and weight_decay == 0):
        return optax.add_decayed_weights(weight_decay, mask)
    inner = optax.add_decayed_weights(weight_decay)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(optax._src.base.NO_PARAMS_MSG)
        (s,) = _hyperparameters(True, weight_decay)
        return jax.tree.map(lambda g, p: None if g is None else g + s * p, updates, params,
                            is_leaf=lambda x: x is None), state

    tx = optax.GradientTransformation(inner.init, update_fn)
    return tx if mask is None else optax.masked(tx, mask)
