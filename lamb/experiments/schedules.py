r"""Learning-rate schedules of the paper's recipes, as optax schedules (callables ``count -> learning rate``).

A schedule maps the optimizer's step count ``t = 0, 1, 2, ...`` (the number of updates already made; the
first update uses ``t = 0``) to the learning rate of that update, and is accepted wherever optax accepts a
learning rate (``lj.lamb(schedule)``, ``optax.adamw(schedule)``). All are jittable.

- :func:`warmup_polynomial_decay` -- BERT's and the LAMB paper's recipe: linear warmup from 0 to the peak
  over ``warmup_steps``, then polynomial decay to ``end_value`` at ``total_steps``:

  .. math::
     \eta_t = \eta \frac{t}{w} \ (t < w), \qquad
     \eta_t = (\eta - \eta_{end}) \Big(1 - \frac{t - w}{T - w}\Big)^{p} + \eta_{end} \ (w \le t \le T).

- :func:`warmup_step_decay` -- Goyal et al. (2017)'s ImageNet recipe: linear ("gradual") warmup, then the
  peak rate multiplied by 0.1 at epochs 30, 60 and 80 of 90, the boundaries scaled to the run's length
  (at steps ``round(30/90 T)``, ``round(60/90 T)``, ``round(80/90 T)``).
- :func:`two_phase_warmup_polynomial_decay` -- the paper's mixed-batch BERT recipe (section 4.1): phase 1
  is a warmup and polynomial decay over its own steps, and at the phase change the rate is *re-warmed from
  zero* ("we ramp up the learning rate from zero again in the second stage") and decays again over phase 2.
  :func:`two_phase_rate` is the same function of plain (possibly traced) numbers, for
  ``optax.inject_hyperparams``.
- :func:`linear_epoch_warmup` -- the linear-epoch warmup rule the paper pairs with the square-root rule
  (You et al. 2019): warmup *epochs* grow in proportion to the batch, so warmup *steps* stay constant.
- :func:`scale_learning_rate` and :func:`scaled` -- the batch-size scaling rules: linear
  (``eta * B / B_0``, Goyal et al. 2017) and square root (``eta * sqrt(B / B_0)``, Krizhevsky 2014, the rule
  the LAMB paper uses for its BERT runs, section 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp

__all__ = ["GOYAL_BOUNDARIES", "SCALING_RULES", "warmup_polynomial_decay", "warmup_step_decay",
           "scale_learning_rate", "scaled", "constant", "two_phase_warmup_polynomial_decay", "two_phase_rate",
           "linear_epoch_warmup"]

#: Goyal et al. (2017): the learning rate is divided by 10 at epochs 30, 60 and 80 of a 90-epoch run.
GOYAL_BOUNDARIES = (30 / 90, 60 / 90, 80 / 90)

#: Batch-size scaling rules: the factor by which the learning rate tuned at ``B_0`` is multiplied at ``B``.
SCALING_RULES = {"linear": lambda ratio: ratio, "sqrt": math.sqrt}


def _check_number(name, value, minimum=0.0, strict=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _check_steps(name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def constant(value: float) -> Callable:
    """The schedule ``t -> value``."""
    value = _check_number("value", value)
    return lambda count: jnp.full([], value, jnp.float32)


def warmup_polynomial_decay(peak_value: float, warmup_steps: int, total_steps: int, power: float = 1.0,
                            end_value: float = 0.0, init_value: float = 0.0) -> Callable:
    r"""Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then polynomial decay
    ``(peak - end) (1 - (t - w)/(T - w))^power + end`` until ``total_steps`` (constant ``end_value`` after).

    ``power=1`` is BERT's linear decay (Devlin et al. 2019); the LAMB paper's BERT runs use this shape with
    the warmup ratios of its Table 4. ``warmup_steps=0`` starts at the peak.
    """
    peak_value = _check_number("peak_value", peak_value)
    end_value = _check_number("end_value", end_value)
    init_value = _check_number("init_value", init_value)
    power = _check_number("power", power, strict=True)
    warmup_steps = _check_steps("warmup_steps", warmup_steps)
    total_steps = _check_steps("total_steps", total_steps, 1)
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be smaller than total_steps={total_steps}")
    decay_steps = total_steps - warmup_steps

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
        frac = jnp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
        decay = (peak_value - end_value) * (1.0 - frac) ** power + end_value
        return jnp.where(t < warmup_steps, warm, decay).astype(jnp.float32)

    return schedule


def warmup_step_decay(peak_value: float, total_steps: int, warmup_steps: int = 0, factor: float = 0.1,
                      boundaries: Sequence[float] = GOYAL_BOUNDARIES, init_value: float = 0.0) -> Callable:
    r"""Goyal et al. (2017): linear warmup to ``peak_value`` over ``warmup_steps``, then ``peak_value * factor^k``
    where ``k`` is the number of boundaries passed; ``boundaries`` are fractions of ``total_steps`` (default
    epochs 30, 60, 80 of 90), each at step ``round(fraction * total_steps)``.

    Goyal et al.'s warmup runs over 5 of 90 epochs from the small-batch rate; pass ``warmup_steps =
    round(5 / 90 * total_steps)`` and ``init_value`` to reproduce it exactly.
    """
    peak_value = _check_number("peak_value", peak_value)
    init_value = _check_number("init_value", init_value)
    factor = _check_number("factor", factor, strict=True)
    total_steps = _check_steps("total_steps", total_steps, 1)
    warmup_steps = _check_steps("warmup_steps", warmup_steps)
    fractions = [_check_number(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
    if any(b >= 1.0 for b in fractions) or sorted(fractions) != fractions:
        raise ValueError(f"boundaries must be increasing fractions of the run in [0, 1), got {tuple(boundaries)!r}")
    steps = [round(b * total_steps) for b in fractions]
    if steps and warmup_steps > steps[0]:
        raise ValueError(f"warmup_steps={warmup_steps} ends after the first decay boundary at step {steps[0]}")
    boundary_steps = jnp.asarray(steps, jnp.float32)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = init_value + (peak_value - init_value) * t / max(warmup_steps, 1)
        passed = jnp.sum(t >= boundary_steps) if steps else 0
        decayed = peak_value * jnp.power(jnp.float32(factor), passed)
        return jnp.where(t < warmup_steps, warm, decayed).astype(jnp.float32)

    schedule.boundary_steps = tuple(steps)
    return schedule


def scale_learning_rate(learning_rate: float, batch_size: int, base_batch_size: int, rule: str = "linear") -> float:
    r"""The learning rate for ``batch_size`` from one tuned at ``base_batch_size``:
    ``eta * (B / B_0)`` (``rule="linear"``) or ``eta * sqrt(B / B_0)`` (``rule="sqrt"``)."""
    learning_rate = _check_number("learning_rate", learning_rate)
    return learning_rate * _factor(batch_size, base_batch_size, rule)


def _factor(batch_size, base_batch_size, rule):
    _check_steps("batch_size", batch_size, 1)
    _check_steps("base_batch_size", base_batch_size, 1)
    if rule not in SCALING_RULES:
        raise ValueError(f"rule must be one of {sorted(SCALING_RULES)}, got {rule!r}")
    return SCALING_RULES[rule](batch_size / base_batch_size)


def scaled(schedule, batch_size: int, base_batch_size: int, rule: str = "linear") -> Callable:
    """The schedule (or constant rate) ``schedule`` multiplied by the ``rule``'s factor for ``batch_size``."""
    factor = _factor(batch_size, base_batch_size, rule)
    if callable(schedule):
        return lambda count: schedule(count) * factor
    return constant(scale_learning_rate(schedule, batch_size, base_batch_size, rule))


def _warmup_decay_rate(t, peak, warmup, total, power, end_value):
    """``warmup_polynomial_decay``'s value at ``t`` from 0, as a pure function of arrays (no validation)."""
    warm = peak * t / jnp.maximum(warmup, 1.0)
    frac = jnp.clip((t - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    decay = (peak - end_value) * (1.0 - frac) ** power + end_value
    return jnp.where(t < warmup, warm, decay)


def two_phase_rate(count, peak_1, warmup_1, steps_1, peak_2, warmup_2, steps_2, power=1.0, end_value=0.0):
    r"""The rate of :func:`two_phase_warmup_polynomial_decay` at step count ``count``, computed from plain
    numbers or arrays without validation: every argument may be traced, so that ``optax.inject_hyperparams``
    can keep the schedule's numbers in the optimizer state (one compiled step serves every rate and length)."""
    t = jnp.asarray(count, jnp.float32)
    first = _warmup_decay_rate(t, peak_1, warmup_1, steps_1, power, end_value)
    second = _warmup_decay_rate(t - steps_1, peak_2, warmup_2, steps_2, power, end_value)
    return jnp.where(t < steps_1, first, second).astype(jnp.float32)


def two_phase_warmup_polynomial_decay(peak_1: float, warmup_1: int, steps_1: int, peak_2: float, warmup_2: int,
                                      steps_2: int, power: float = 1.0, end_value: float = 0.0) -> Callable:
    r"""The mixed-batch recipe's schedule: two warmup-then-polynomial-decay phases, the second re-warmed from 0.

    .. math::
       \eta_t = \begin{cases} s_1(t) & t < T_1 \\ s_2(t - T_1) & t \ge T_1 \end{cases}, \qquad
       s_k = \texttt{warmup\_polynomial\_decay}(\eta_k, w_k, T_k)

    so :math:`\eta_{T_1} = 0`: the first update of phase 2 starts the ramp again, up to ``peak_2`` at step
    :math:`T_1 + w_2`, then decays to ``end_value`` at :math:`T_1 + T_2`. You et al. (2020, section 4.1) train
    phase 1 (sequence length 128) at batch 65536 and phase 2 (length 512) at 32768 this way; NVIDIA's
    recipe uses peaks 6e-3 and 4e-3 (about the square-root rule's ratio :math:`\sqrt 2`).
    """
    peak_1, peak_2 = _check_number("peak_1", peak_1), _check_number("peak_2", peak_2)
    end_value = _check_number("end_value", end_value)
    power = _check_number("power", power, strict=True)
    steps_1, steps_2 = _check_steps("steps_1", steps_1, 1), _check_steps("steps_2", steps_2, 1)
    warmup_1, warmup_2 = _check_steps("warmup_1", warmup_1), _check_steps("warmup_2", warmup_2)
    for name, w, s in (("warmup_1", warmup_1, steps_1), ("warmup_2", warmup_2, steps_2)):
        if w >= s:
            raise ValueError(f"{name}={w} must be smaller than its phase's steps ({s})")

    def schedule(count):
        return two_phase_rate(count, peak_1, warmup_1, steps_1, peak_2, warmup_2, steps_2, power, end_value)

    schedule.phase_steps = (steps_1, steps_2)
    return schedule


def linear_epoch_warmup(warmup_epochs: float, batch_size: int, base_batch_size: int) -> float:
    r"""Warmup epochs at ``batch_size`` by the linear-epoch rule (You et al. 2019, "LEGW"), which the LAMB
    paper uses with the square-root rate rule for BERT: ``warmup_epochs * B / B_0``.

    An epoch has :math:`N/B` steps, so the warmup *steps* :math:`w_0 \frac{B}{B_0} \frac{N}{B} = w_0
    \frac{N}{B_0}` do not change with the batch, while the *fraction* of a fixed-epoch run spent warming up
    grows in proportion to :math:`B`."""
    warmup_epochs = _check_number("warmup_epochs", warmup_epochs)
    return warmup_epochs * _factor(batch_size, base_batch_size, "linear")
