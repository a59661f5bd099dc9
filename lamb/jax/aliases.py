r"""``lamb`` and ``lars``: the paper's optimizers as ``optax.chain`` s of the building blocks in :mod:`.transforms`."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import optax

from . import _checks
from .transforms import (_adam_parts, _add_decayed_weights, _nesterov_adam_parts,
                         _scale_by_recorded_trust_ratio, scale_by_adam, scale_by_ema_momentum,
                         scale_by_nesterov_adam, scale_by_trust_ratio)

__all__ = ["lamb", "lars"]

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def _layer_adaptation(norm, trust_clip, layer_adaptation_mask) -> optax.GradientTransformation:
    """The trust ratio, applied only to the layers where ``layer_adaptation_mask`` is True (all for None)."""
    tx = scale_by_trust_ratio(norm=norm, trust_clip=trust_clip)
    return tx if layer_adaptation_mask is None else optax.masked(tx, layer_adaptation_mask)


def _two_pass_trust_ratio(moments, weight_decay, mask, norm, trust_clip, layer_adaptation_mask,
                          learning_rate) -> optax.GradientTransformationExtraArgs:
    """LAMB's update in two passes over each layer, so that the update u is never stored.

    The state and the arithmetic are those of the chain in :func:`lamb`'s docstring (its ``init`` is this
    ``init``). A trust ratio needs the norm of the whole update u before any of it is applied; computed once
    and used twice, u would be a temporary array of each layer's size (XLA does not duplicate its square
    root and division into both uses), and XLA:CPU allocates and page-faults such a temporary at every step.
    So after the moments, u is computed twice from them: once inside the norm reductions, with its scalars at
    run time (``transforms._hyperparameters``) so that XLA fuses u and the reduction into one pass that writes
    nothing; and once where it is applied, scaled by the ratios of the first.
    """
    init_moments, advance, direction = moments

    def adaptation(tx):
        return tx if layer_adaptation_mask is None else optax.masked(tx, layer_adaptation_mask)

    decay = _add_decayed_weights(weight_decay, mask, runtime_hyperparameters=False)
    decay_runtime = _add_decayed_weights(weight_decay, mask, runtime_hyperparameters=True)
    trust, apply_trust = (adaptation(scale_by_trust_ratio(norm=norm, trust_clip=trust_clip)),
                          adaptation(_scale_by_recorded_trust_ratio()))
    scale = optax.scale_by_learning_rate(learning_rate)
    chain = optax.chain(optax.GradientTransformation(init_moments, None), decay, trust, scale)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        moments_state, decay_state, trust_state, scale_state = state
        mu, nu, moments_state = advance(updates, moments_state)
        # Pass 1: the trust ratios, from u_t = r_t + lambda x_t recomputed with run-time scalars.
        u, _ = decay_runtime.update(direction(updates, mu, nu, moments_state, True), decay_state, params)
        _, trust_state = trust.update(u, trust_state, params)
        # Pass 2: the step, u_t recomputed and scaled by those ratios.
        u, decay_state = decay.update(direction(updates, mu, nu, moments_state, False), decay_state, params)
        u, trust_state = apply_trust.update(u, trust_state, params)
        u, scale_state = scale.update(u, scale_state, params)
        return u, (moments_state, decay_state, trust_state, scale_state)

    return optax.GradientTransformationExtraArgs(chain.init, update_fn)


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.01,
    norm: str = "l2",
    bias_correction: bool = True,
    trust_clip: Optional[tuple[float, float]] = None,
    nesterov: Optional[str] = None,
    momentum_decay: Optional[float] = 4e-3,
    mask: MaskOrFn = None,
    layer_adaptation_mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LAMB (You et al., ICLR 2020, Algorithm 2), with the paper's variants as options.

    For every array ("layer" :math:`i`) of the parameters, at step :math:`t`:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t)
            \qquad\text{(with bias\_correction; paper, Figure 2)} \\
        r_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon), \qquad u_t = r_t + \lambda x_t \\
        x_{t+1}^{(i)} &= x_t^{(i)} - \eta_t\, \frac{\phi(\|x_t^{(i)}\|)}{\|u_t^{(i)}\|}\, u_t^{(i)}

    with the trust ratio 1 where :math:`\|x\| = 0` or :math:`\|u\| = 0` (the authors' code's rule). It is
    built the way the paper states it, from Adam's moments, the decoupled weight decay and the trust ratio::

        optax.chain(
            scale_by_adam(b1, b2, eps, bias_correction=...),  # or scale_by_nesterov_adam(...): r_t
            optax.add_decayed_weights(weight_decay, mask),      # u_t = r_t + lambda x_t
            optax.masked(scale_by_trust_ratio(norm, trust_clip), layer_adaptation_mask),
            optax.scale_by_learning_rate(learning_rate),        # -eta_t
        )

    and has exactly that chain's state. Its ``update`` runs the chain in two passes over each layer: the
    norms first (with :math:`u_t` recomputed inside the reduction), then the step (with :math:`u_t`
    recomputed where it is applied), so that :math:`u_t` is never stored as an array; on XLA:CPU a stored
    :math:`u_t` is a fresh temporary of every layer's size at every step (``benchmarks/README.md`` has the
    step times). The result is the same.

    ``nesterov="n"|"nn"`` replaces :math:`\hat m_t, \hat v_t` by the look-ahead estimators of N-LAMB and
    NN-LAMB (:func:`lamb.jax.scale_by_nesterov_adam`). This is :func:`lamb.reference.lamb` (``nlamb``,
    ``nnlamb``) and :class:`lamb.torch.Lamb` with the same options (tested step for step).

    **Relation to optax.lamb.** ``optax.lamb`` is the same chain with the L2 norm, bias correction, the
    identity :math:`\phi` and the same zero-norm rule; ``lamb(lr, weight_decay=wd, mask=m)`` equals
    ``optax.lamb(lr, weight_decay=wd, mask=m)`` to float64 rounding (tested; in float32 ours is closer to the
    exact arithmetic, see :func:`lamb.jax.scale_by_adam`). Differences: optax's ``mask`` covers
    only the weight decay and every layer, biases and LayerNorm weights included, still gets a trust ratio;
    here ``layer_adaptation_mask`` also excludes layers from the trust ratio (ratio 1), as BERT's LAMB
    (``exclude_from_layer_adaptation``) and :class:`lamb.torch.Lamb` (``layer_adaptation=False``) do. We
    follow the paper's authors here because their recipe is what the paper's results were obtained with.
    optax's ``weight_decay`` defaults to 0; ours to 0.01, BERT's value. optax keeps :math:`v_t` in the
    parameters' dtype; we keep it in at least float32.

    Zero gradients do not make a no-op step: from a fresh state (:math:`m = v = 0`) with ``weight_decay``
    :math:`\lambda > 0`, :math:`u_t = \lambda x_t` and the trust ratio scales it to :math:`\eta \|x_t\|` (the
    weights shrink by :math:`1 - \eta`); only ``weight_decay=0`` leaves them unchanged.

    **Dtypes.** For bf16/fp16 parameters the moments, the arithmetic and the *updates* are float32 by design
    (``optax.apply_updates`` then rounds once into the parameter's dtype): a bf16 update of a bf16 weight would
    round twice, and bf16 cannot hold :math:`v_t`'s small increments. optax's own optimizers return updates in
    the gradient's dtype; to get that, cast the output:
    ``updates = jax.tree.map(lambda u, g: u.astype(g.dtype), updates, grads)``. Complex parameters are rejected at ``init`` (as :class:`lamb.torch.Lamb` does): optimize their real
    view.

    With every layer outside ``layer_adaptation_mask`` this is AdamW (``optax.adamw`` with the same
    ``eps``, ``weight_decay`` and ``mask``; tested).

    Args:
      learning_rate: :math:`\eta_t`, a number >= 0 or an optax schedule (a function of the step count).
      b1: :math:`\beta_1` in [0, 1). Default 0.9.
      b2: :math:`\beta_2` in [0, 1). Default 0.999.
      eps: :math:`\epsilon \ge 0`, outside the square root. Default 1e-6 (the authors' code).
      weight_decay: :math:`\lambda \ge 0` (or a schedule), decoupled, inside :math:`u_t`. Default 0.01.
      norm: ``"l2"`` (default), ``"l1"`` or ``"linf"``: the norm of the trust ratio (paper, Figure 3).
      bias_correction: divide the moments by :math:`1 - \beta^t`. Default True.
      trust_clip: ``None`` (default) for :math:`\phi(z) = z`, or :math:`(\gamma_l, \gamma_u)` for
        :math:`\phi(z) = \min(\max(z, \gamma_l), \gamma_u)`.
      nesterov: ``None`` (LAMB), ``"n"`` (N-LAMB) or ``"nn"`` (NN-LAMB).
      momentum_decay: :math:`\psi` of Dozat's schedule :math:`\beta_{1,t} = \beta_1(1 - \frac12 0.96^{t\psi})`
        (default 4e-3, as ``torch.optim.NAdam``); ``None`` for a constant :math:`\beta_1`. Only used with
        ``nesterov``.
      mask: which arrays get weight decay: a pytree of bools like the parameters (or a prefix of it), or a
        callable returning one, as in ``optax.add_decayed_weights``. ``None``: all.
      layer_adaptation_mask: which arrays get a trust ratio (the others get 1), in the same form. ``None``:
        all. BERT excludes biases and LayerNorm parameters from both masks.
      mu_dtype: dtype of the first moment; ``None``: the parameters' dtype promoted to at least float32
        (bf16 parameters get fp32 moments). The second moment is always at least float32.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`. The trust ratios of the last step:
      ``optax.tree_utils.tree_get(state, "trust_ratio")``.

    References:
      You et al., `Large Batch Optimization for Deep Learning: Training BERT in 76 minutes
      <https://arxiv.org/abs/1904.00962>`_, ICLR 2020 (Algorithm 2, appendix, Figures 2 and 3).
    """
    _checks.check_learning_rate(learning_rate)
    _checks.check_nonnegative_or_schedule("weight_decay", weight_decay)
    _checks.check_nesterov(nesterov)
    _checks.check_momentum_decay(momentum_decay)
    _checks.check_mask("mask", mask)
    _checks.check_mask("layer_adaptation_mask", layer_adaptation_mask)
    if nesterov is None:
        scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype, bias_correction=bias_correction)  # validates
    else:
        scale_by_nesterov_adam(b1=b1, b2=b2, eps=eps, nesterov=nesterov, momentum_decay=momentum_decay,
                               bias_correction=bias_correction, mu_dtype=mu_dtype)
    scale_by_trust_ratio(norm=norm, trust_clip=trust_clip)                                        # validates
    if nesterov is None:
        moments = _adam_parts(b1, b2, eps, 0.0, mu_dtype, bias_correction)
    else:
        moments = _nesterov_adam_parts(b1, b2, eps, nesterov, momentum_decay, bias_correction, mu_dtype)
    # The chain above, run as two passes over each layer (the norms, then the step) so that u_t is never
    # stored: see _two_pass_trust_ratio.
    return _two_pass_trust_ratio(moments, weight_decay, mask, norm, trust_clip, layer_adaptation_mask,
                                 learning_rate)


def lars(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    norm: str = "l2",
    trust_clip: Optional[tuple[float, float]] = None,
    nesterov: bool = False,
    mask: MaskOrFn = None,
    layer_adaptation_mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformationExtraArgs:
    r"""LARS as the LAMB paper's Algorithm 1 states it: the trust ratio normalizes the momentum.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)(g_t + \lambda x_t), \qquad m_0 = 0 \\
        u_t &= m_t \qquad\text{or, with nesterov=True,}\qquad u_t = \beta_1 m_t + (1-\beta_1)(g_t + \lambda x_t) \\
        x_{t+1}^{(i)} &= x_t^{(i)} - \eta_t \frac{\phi(\|x_t^{(i)}\|)}{\|u_t^{(i)}\|} u_t^{(i)}

    with the trust ratio 1 where :math:`\|x\| = 0` or :math:`\|u\| = 0`. The weight decay enters *inside*
    the momentum, as the paper writes it::

        optax.chain(
            optax.add_decayed_weights(weight_decay, mask),      # g_t + lambda x_t
            scale_by_ema_momentum(momentum, nesterov),           # m_t (or the look-ahead u_t)
            optax.masked(scale_by_trust_ratio(norm, trust_clip), layer_adaptation_mask),
            optax.scale_by_learning_rate(learning_rate),         # -eta_t
        )

    This is :func:`lamb.reference.lars` and :class:`lamb.torch.Lars` (``nesterov=True`` is defined as there:
    with the trust ratio off, ``lars(eta, beta1, lambda, nesterov=...)`` is momentum SGD with learning rate
    :math:`\eta (1 - \beta_1)`, Nesterov or not; tested against ``optax.sgd``).

    **This is not optax.lars.** ``optax.lars`` implements the 2017 LARS (You, Gitman and Ginsburg;
    :func:`lamb.reference.lars_2017`): it scales the *gradient* by :math:`\kappa \|x\| / \|g + \lambda x\|`
    (trust coefficient :math:`\kappa = 10^{-3}`) and the learning rate *before* the momentum, so the
    momentum accumulates already-normalized steps, and its weight decay enters the gradient before that
    normalization. A test shows ``optax.lars`` equals ``reference.lars_2017`` and differs from this one. Both
    use the same zero-norm rule. We follow Algorithm 1 because this project implements the LAMB paper.

    Args:
      learning_rate: :math:`\eta_t`, a number >= 0 or an optax schedule. LARS's rate depends on the batch
        (and absorbs the 2017 paper's trust coefficient).
      momentum: :math:`\beta_1` in [0, 1). Default 0.9.
      weight_decay: :math:`\lambda \ge 0` (or a schedule), added to the gradient inside the momentum.
        Default 0.
      norm: ``"l2"`` (default), ``"l1"`` or ``"linf"``.
      trust_clip: ``None`` for :math:`\phi(z) = z`, or :math:`(\gamma_l, \gamma_u)`.
      nesterov: use the look-ahead :math:`u_t` above. Default False.
      mask: which arrays get weight decay (pytree of bools or callable, as optax). ``None``: all.
      layer_adaptation_mask: which arrays get a trust ratio (the others get 1). ``None``: all.
      mu_dtype: dtype of :math:`m_t`; ``None``: the parameters' dtype promoted to at least float32.

    Returns:
      The corresponding :class:`optax.GradientTransformationExtraArgs`. The trust ratios of the last step:
      ``optax.tree_utils.tree_get(state, "trust_ratio")``.

    References:
      You et al., `Large Batch Optimization for Deep Learning: Training BERT in 76 minutes
      <https://arxiv.org/abs/1904.00962>`_, ICLR 2020, Algorithm 1.
      You, Gitman and Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017 (the other LARS).
    """
    _checks.check_learning_rate(learning_rate)
    _checks.check_nonnegative_or_schedule("weight_decay", weight_decay)
    _checks.check_mask("mask", mask)
    _checks.check_mask("layer_adaptation_mask", layer_adaptation_mask)
    _checks.check_bool("nesterov", nesterov)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask),                      # g_t + lambda x_t
        scale_by_ema_momentum(momentum, nesterov=nesterov, accumulator_dtype=mu_dtype),  # m_t
        _layer_adaptation(norm, trust_clip, layer_adaptation_mask),         # phi(||x||) / ||m|| * m
        optax.scale_by_learning_rate(learning_rate),                        # -eta_t
    )
