"""Schedules: values at chosen steps computed by hand from the formulas in the docstrings."""

import math

import numpy as np
import optax
import pytest

from lamb.experiments import schedules


def test_warmup_polynomial_decay_linear_by_hand():
    # peak 1.0, warmup 10, total 110: t/10 while warming up, then 1 - (t - 10)/100.
    s = schedules.warmup_polynomial_decay(1.0, warmup_steps=10, total_steps=110)
    for t, want in [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (35, 0.75), (60, 0.5), (109, 0.01), (110, 0.0),
                    (500, 0.0)]:
        assert float(s(t)) == pytest.approx(want, abs=1e-6), t


def test_warmup_polynomial_decay_power_and_end_value():
    s = schedules.warmup_polynomial_decay(2.0, warmup_steps=4, total_steps=20, power=0.5, end_value=0.2,
                                          init_value=0.4)
    assert float(s(0)) == pytest.approx(0.4)
    assert float(s(2)) == pytest.approx(0.4 + 1.6 * 2 / 4)
    # t = 8: (2.0 - 0.2) * (1 - 4/16)^0.5 + 0.2
    assert float(s(8)) == pytest.approx(1.8 * math.sqrt(0.75) + 0.2, rel=1e-6)
    assert float(s(20)) == pytest.approx(0.2)


def test_warmup_polynomial_decay_is_optax_schedule_inside_optimizer():
    s = schedules.warmup_polynomial_decay(0.5, warmup_steps=2, total_steps=6)
    tx = optax.sgd(s)
    params = {"w": np.zeros(3, np.float32)}
    state = tx.init(params)
    grads = {"w": np.ones(3, np.float32)}
    lrs = []
    for _ in range(4):  # sgd: update = -lr_t * g, so the update reads the rate back
        updates, state = tx.update(grads, state, params)
        lrs.append(-float(updates["w"][0]))
    np.testing.assert_allclose(lrs, [0.0, 0.25, 0.5, 0.375], atol=1e-7)


def test_goyal_step_decay_at_30_60_80_of_90_scaled():
    # a 900-step run: boundaries at steps 300, 600, 800; 50 warmup steps from 0.
    s = schedules.warmup_step_decay(0.8, total_steps=900, warmup_steps=50)
    assert s.boundary_steps == (300, 600, 800)
    for t, want in [(0, 0.0), (25, 0.4), (50, 0.8), (299, 0.8), (300, 0.08), (599, 0.08), (600, 0.008),
                    (800, 0.0008), (899, 0.0008)]:
        assert float(s(t)) == pytest.approx(want, rel=1e-6, abs=1e-9), t


def test_goyal_boundaries_round_for_odd_lengths():
    s = schedules.warmup_step_decay(1.0, total_steps=100)
    assert s.boundary_steps == (33, 67, 89)  # round(100/3), round(200/3), round(800/9)
    assert float(s(32)) == 1.0 and float(s(33)) == pytest.approx(0.1)


def test_batch_size_scaling_rules():
    assert schedules.scale_learning_rate(0.1, 1024, 256, "linear") == pytest.approx(0.4)
    assert schedules.scale_learning_rate(0.1, 1024, 256, "sqrt") == pytest.approx(0.2)
    assert schedules.scale_learning_rate(0.1, 64, 256, "sqrt") == pytest.approx(0.05)
    s = schedules.scaled(schedules.warmup_polynomial_decay(1.0, 10, 110), 4096, 1024, "sqrt")
    assert float(s(10)) == pytest.approx(2.0) and float(s(60)) == pytest.approx(1.0)
    assert float(schedules.scaled(0.01, 512, 256)(7)) == pytest.approx(0.02)


@pytest.mark.parametrize("call, match", [
    (lambda: schedules.warmup_polynomial_decay(1.0, 10, 10), "warmup_steps"),
    (lambda: schedules.warmup_polynomial_decay(-1.0, 1, 10), "peak_value"),
    (lambda: schedules.warmup_polynomial_decay(1.0, 1, 10, power=0), "power"),
    (lambda: schedules.warmup_step_decay(1.0, 90, boundaries=(0.5, 0.2)), "boundaries"),
    (lambda: schedules.warmup_step_decay(1.0, 90, warmup_steps=40), "warmup_steps"),
    (lambda: schedules.scale_learning_rate(0.1, 512, 256, "cubic"), "rule"),
    (lambda: schedules.scale_learning_rate(0.1, 0, 256), "batch_size"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_two_phase_rewarmup_by_hand():
    # Phase 1: peak 1, warmup 2, 6 steps: 0, 1/2, 1, then 1 - (t-2)/4. Phase 2 re-warmed from 0: peak 0.5,
    # warmup 1, 3 steps: 0 at the phase change, 0.5 at its step 1, then 0.5 (1 - (t'-1)/2).
    s = schedules.two_phase_warmup_polynomial_decay(1.0, 2, 6, 0.5, 1, 3)
    want = [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.5, 0.25, 0.0, 0.0]
    np.testing.assert_allclose([float(s(t)) for t in range(11)], want, atol=1e-7)
    assert s.phase_steps == (6, 3)
    # the traced form gives the same numbers from array arguments (as inject_hyperparams passes them)
    import jax.numpy as jnp
    traced = [float(schedules.two_phase_rate(t, *map(jnp.float32, (1.0, 2, 6, 0.5, 1, 3)))) for t in range(11)]
    np.testing.assert_allclose(traced, want, atol=1e-7)


def test_two_phase_equals_one_phase_before_the_change():
    one = schedules.warmup_polynomial_decay(0.3, 10, 100)
    two = schedules.two_phase_warmup_polynomial_decay(0.3, 10, 100, 0.1, 5, 20)
    np.testing.assert_allclose([float(two(t)) for t in range(100)], [float(one(t)) for t in range(100)], atol=1e-7)
    assert float(two(100)) == 0.0 and float(two(105)) == pytest.approx(0.1)


def test_two_phase_rejects_bad_phases():
    with pytest.raises(ValueError, match="warmup_2=3 must be smaller"):
        schedules.two_phase_warmup_polynomial_decay(1.0, 1, 5, 1.0, 3, 3)
    with pytest.raises(ValueError, match="steps_1"):
        schedules.two_phase_warmup_polynomial_decay(1.0, 0, 0, 1.0, 0, 3)
    with pytest.raises(ValueError, match="peak_2"):
        schedules.two_phase_warmup_polynomial_decay(1.0, 0, 5, -1.0, 0, 3)


def test_linear_epoch_warmup_keeps_warmup_steps():
    # 0.25 epochs at B0 = 64 is 0.25 * 1024/64 = 4 steps of a 1024-example epoch; at 512, 2 epochs = 4 steps.
    assert schedules.linear_epoch_warmup(0.25, 512, 64) == 2.0
    assert schedules.linear_epoch_warmup(0.25, 512, 64) * 1024 / 512 == 0.25 * 1024 / 64 == 4.0
    with pytest.raises(ValueError, match="batch_size"):
        schedules.linear_epoch_warmup(0.25, 0, 64)
