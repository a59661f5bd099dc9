"""lamb.jax against optax: equal where the options make them the same algorithm, and where they differ, how.

All runs are float64 (``jax.enable_x64`` inside a fixture); "equal" means relative error under 1e-12.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamb import jax as lj
from lamb import reference

from test_jax_reference import (gradient_trees, make_params, max_relative_error, not_a_vector, run_lj,
                                run_reference)

STEPS = 12
LR = 0.02


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def trajectories(tx_a, tx_b, params=None, steps=STEPS):
    params = make_params() if params is None else params
    grads = gradient_trees(params, steps)
    return run_lj(tx_a, params, grads, jnp.float64)[0], run_lj(tx_b, params, grads, jnp.float64)[0]


# --------------------------------------------------------------------------------------------------
# Same algorithm: equal.


@pytest.mark.parametrize("weight_decay,mask", [(0.0, None), (0.01, None), (0.01, "tree"), (0.01, "callable")])
def test_lamb_equals_optax_lamb_with_layer_adaptation_everywhere(weight_decay, mask):
    mask = {"tree": not_a_vector(make_params()), "callable": not_a_vector, None: None}[mask]
    ours, theirs = trajectories(lj.lamb(LR, weight_decay=weight_decay, mask=mask),
                                optax.lamb(LR, weight_decay=weight_decay, mask=mask))
    assert max_relative_error(ours, theirs) < 1e-12


def test_lamb_without_layer_adaptation_is_optax_adamw():
    mask = not_a_vector(make_params())
    nowhere = jax.tree.map(lambda _: False, make_params())
    ours, theirs = trajectories(
        lj.lamb(LR, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1, mask=mask, layer_adaptation_mask=nowhere),
        optax.adamw(LR, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.1, mask=mask))
    assert max_relative_error(ours, theirs) < 1e-12


def test_scale_by_adam_with_bias_correction_is_optax_scale_by_adam():
    ours, theirs = trajectories(optax.chain(lj.scale_by_adam(0.8, 0.99, 1e-7), optax.scale(-LR)),
                                optax.chain(optax.scale_by_adam(0.8, 0.99, 1e-7), optax.scale(-LR)))
    assert max_relative_error(ours, theirs) < 1e-12


def test_scale_by_trust_ratio_l2_is_optax_scale_by_trust_ratio_zero_rule_included():
    """Same ratio and the same zero-norm rule (the params include a zero layer; the grads a zero layer)."""
    params = make_params()
    grads = gradient_trees(params, STEPS)
    for g in grads:
        g["dense"]["bias"] = np.zeros(4)                 # ||u|| = 0 every step for this layer
    ours = run_lj(optax.chain(lj.scale_by_trust_ratio(), optax.scale(-LR)), params, grads, jnp.float64)[0]
    theirs = run_lj(optax.chain(optax.scale_by_trust_ratio(), optax.scale(-LR)), params, grads, jnp.float64)[0]
    assert max_relative_error(ours, theirs) < 1e-12


def test_scale_by_ema_momentum_is_optax_ema_without_debiasing():
    ours, theirs = trajectories(optax.chain(lj.scale_by_ema_momentum(0.8), optax.scale(-LR)),
                                optax.chain(optax.ema(0.8, debias=False), optax.scale(-LR)))
    assert max_relative_error(ours, theirs) < 1e-12


@pytest.mark.parametrize("nesterov", (False, True))
def test_lars_without_layer_adaptation_is_momentum_sgd(nesterov):
    """Algorithm 1's m_t is (1 - beta1) times SGD's heavy-ball buffer, Nesterov look-ahead included."""
    beta1, lam = 0.9, 0.01
    nowhere = jax.tree.map(lambda _: False, make_params())
    ours, theirs = trajectories(
        lj.lars(LR, momentum=beta1, weight_decay=lam, nesterov=nesterov, layer_adaptation_mask=nowhere),
        optax.chain(optax.add_decayed_weights(lam), optax.sgd(LR * (1 - beta1), momentum=beta1, nesterov=nesterov)))
    assert max_relative_error(ours, theirs) < 1e-12


@pytest.mark.parametrize("nesterov", (False, True))
def test_lars_is_scale_free_in_the_momentum_factor(nesterov):
    """With the trust ratio on, (1 - beta1) cancels: LARS == the trust ratio applied to SGD's momentum.

    Except in a zero layer, whose ratio is 1 (zero-norm rule): the test's parameters have none."""
    beta1, lam = 0.9, 0.01
    params = make_params()
    params["zero"] = np.full(6, 0.5)
    ours, theirs = trajectories(
        lj.lars(LR, momentum=beta1, weight_decay=lam, nesterov=nesterov),
        optax.chain(optax.add_decayed_weights(lam), optax.trace(beta1, nesterov=nesterov),
                    optax.scale_by_trust_ratio(), optax.scale(-LR)), params)
    assert max_relative_error(ours, theirs) < 1e-12


def test_nlamb_constant_schedule_is_optax_nadam_up_to_sqrt_beta2_which_the_trust_ratio_cancels():
    """N-LAMB's v_hat has Dozat's extra beta2 (optax's nadam omits it): with eps = 0 the directions differ by
    exactly sqrt(beta2), and with lambda = 0 the trust ratio makes the steps identical (in nonzero layers: a
    zero layer's ratio is 1, so the test's parameters have none)."""
    b2 = 0.99
    params = make_params()
    params["zero"] = np.full(6, 0.5)
    grads = gradient_trees(params, STEPS)
    ours_dir = run_lj(optax.chain(lj.scale_by_nesterov_adam(0.9, b2, eps=0.0, nesterov="n", momentum_decay=None),
                                  optax.scale(-LR)), params, grads, jnp.float64)[0]
    nadam_dir = run_lj(optax.chain(optax.scale_by_adam(0.9, b2, eps=0.0, nesterov=True),
                                   optax.scale(-LR / math.sqrt(b2))), params, grads, jnp.float64)[0]
    assert max_relative_error(ours_dir, nadam_dir) < 1e-12
    ours = run_lj(lj.lamb(LR, b2=b2, eps=0.0, weight_decay=0.0, nesterov="n", momentum_decay=None),
                  params, grads, jnp.float64)[0]
    theirs = run_lj(optax.chain(optax.scale_by_adam(0.9, b2, eps=0.0, nesterov=True), optax.scale_by_trust_ratio(),
                                optax.scale(-LR)), params, grads, jnp.float64)[0]
    assert max_relative_error(ours, theirs) < 1e-12


# --------------------------------------------------------------------------------------------------
# Where optax differs from the paper: shown, and which one we follow.


def test_optax_lamb_mask_covers_decay_only_biases_still_get_a_trust_ratio():
    """optax.lamb(mask=m) is the reference with m as the decay mask only; BERT's recipe (and lj.lamb with
    layer_adaptation_mask=m) also gives the excluded layers trust ratio 1 -- a different trajectory."""
    params = make_params()
    mask = not_a_vector(params)
    flat = jax.tree.leaves(mask)
    grads = gradient_trees(params, STEPS)
    optax_run = run_lj(optax.lamb(LR, weight_decay=0.01, mask=mask), params, grads, jnp.float64)[0]
    ours = run_lj(lj.lamb(LR, weight_decay=0.01, mask=mask, layer_adaptation_mask=mask), params, grads,
                  jnp.float64)[0]
    decay_only = run_reference(reference.lamb, params, grads, lr=LR, weight_decay=0.01, weight_decay_mask=flat)[0]
    bert = run_reference(reference.lamb, params, grads, lr=LR, weight_decay=0.01, weight_decay_mask=flat,
                         layer_adaptation_mask=flat)[0]
    assert max_relative_error(optax_run, decay_only) < 1e-12
    assert max_relative_error(ours, bert) < 1e-12
    assert max_relative_error(optax_run, ours) > 1e-3


def test_zero_norm_rule_zero_initialised_layer_moves_in_optax_and_ours():
    """Algorithm 2 read literally gives a zero layer the ratio phi(0)/||u|| = 0, so it would stay 0 forever.
    The authors' code (and optax, and we) use ratio 1: the first step is exactly -eta r_1."""
    params = make_params()
    grads = gradient_trees(params, 1)
    zero_index = [k for k, x in enumerate(jax.tree.leaves(params)) if not np.any(x)][0]
    g = jax.tree.leaves(grads[0])[zero_index]
    first_step = -LR * g / (np.abs(g) + 1e-6)       # r_1 = g / (|g| + eps), the decay of a zero layer is 0
    for tx in (lj.lamb(LR), optax.lamb(LR, weight_decay=0.01)):
        moved = run_lj(tx, params, grads, jnp.float64)[0][0][zero_index]
        np.testing.assert_allclose(moved, first_step, rtol=1e-12)
    literal = reference.trust_ratio(np.zeros(3), np.ones(3))  # the rule, not phi(0)/||u||
    assert literal == 1.0


@pytest.mark.parametrize("nesterov", (False, True))
@pytest.mark.parametrize("weight_decay", (0.0, 0.01))
def test_optax_lars_is_the_2017_lars_not_algorithm_1(nesterov, weight_decay):
    """optax.lars scales the gradient (decay included) by kappa ||x|| / ||g + lambda x|| before the momentum:
    reference.lars_2017. lj.lars normalizes the momentum: reference.lars (Algorithm 1). They differ."""
    params = make_params()
    grads = gradient_trees(params, STEPS)
    optax_run = run_lj(optax.lars(LR, weight_decay=weight_decay, momentum=0.9, nesterov=nesterov), params, grads,
                       jnp.float64)[0]
    lars_2017 = run_reference(reference.lars_2017, params, grads, lr=LR, momentum=0.9, weight_decay=weight_decay,
                              trust_coefficient=1e-3, nesterov=nesterov)[0]
    assert max_relative_error(optax_run, lars_2017) < 1e-12
    ours = run_lj(lj.lars(LR, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov), params, grads,
                  jnp.float64)[0]
    if not nesterov:
        algorithm_1 = run_reference(reference.lars, params, grads, lr=LR, beta1=0.9, weight_decay=weight_decay)[0]
        assert max_relative_error(ours, algorithm_1) < 1e-12
        assert max_relative_error(optax_run, algorithm_1) > 1e-2
    # Not a matter of the trust coefficient: rescaling optax's learning rate by 1/kappa does not make them equal.
    rescaled = run_lj(optax.lars(LR / 1e-3, weight_decay=weight_decay, momentum=0.9, nesterov=nesterov), params,
                      grads, jnp.float64)[0]
    assert max_relative_error(rescaled, ours) > 1e-2
