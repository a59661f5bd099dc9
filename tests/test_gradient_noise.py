"""lamb.experiments.gradient_noise: expectations checked by exhaustive enumeration or by algebra."""

import itertools

import numpy as np
import pytest

from lamb.experiments import gradient_noise as gn


def _per_example(n=7, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)) + np.array([1.0, -2.0, 0.5])


def test_trace_covariance_and_noise_scale_by_hand():
    a = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0], [2.0, -3.0]])   # G = (2, 0)
    np.testing.assert_allclose(gn.full_gradient(a), [2.0, 0.0])
    # ||g_n - G||^2 = 1, 1, 9, 9 -> mean 5
    assert gn.trace_covariance(a) == pytest.approx(5.0)
    assert gn.simple_noise_scale(a) == pytest.approx(5.0 / 4.0)


@pytest.mark.parametrize("b", [1, 2, 3, 6, 7])
def test_expected_variance_without_replacement_equals_the_average_over_every_subset(b):
    a = _per_example()
    full = a.mean(axis=0)
    exact = np.mean([np.sum((a[list(s)].mean(axis=0) - full) ** 2)
                     for s in itertools.combinations(range(len(a)), b)])
    assert gn.expected_minibatch_variance(a, b) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("b", [1, 2, 3])
def test_expected_variance_with_replacement_equals_the_average_over_every_sequence(b):
    a = _per_example(n=5)
    full = a.mean(axis=0)
    exact = np.mean([np.sum((a[list(s)].mean(axis=0) - full) ** 2)
                     for s in itertools.product(range(len(a)), repeat=b)])
    assert gn.expected_minibatch_variance(a, b, replace=True) == pytest.approx(exact, rel=1e-12)


def test_measured_variance_falls_as_one_over_b():
    a = np.random.default_rng(1).standard_normal((4000, 5))
    measured = gn.minibatch_gradient_variance(a, [4, 64], draws=3000, seed=0, replace=True)
    for b, values in measured.items():
        expected = gn.expected_minibatch_variance(a, b, replace=True)
        # the mean of 3000 draws of a (scaled) chi-square with 5 degrees of freedom: within 10% with margin
        assert np.mean(values) == pytest.approx(expected, rel=0.1)
    ratio = np.mean(measured[4]) / np.mean(measured[64])
    assert ratio == pytest.approx(16.0, rel=0.15)


def test_full_batch_without_replacement_has_no_noise():
    a = _per_example()
    assert gn.expected_minibatch_variance(a, len(a)) == 0.0
    assert np.all(gn.minibatch_gradient_variance(a, [len(a)], draws=3)[len(a)] < 1e-28)


def test_two_batch_estimator_is_exact_on_expected_norms():
    a = _per_example(n=50)
    signal = float(np.sum(a.mean(axis=0) ** 2))
    trace = gn.trace_covariance(a)
    small, big = 4, 32
    est = gn.noise_scale_from_two_batches(signal + trace / small, signal + trace / big, small, big)
    assert est.gradient_sq_norm == pytest.approx(signal, rel=1e-12)
    assert est.trace_covariance == pytest.approx(trace, rel=1e-12)
    assert est.noise_scale == pytest.approx(gn.simple_noise_scale(a), rel=1e-12)


def test_tradeoff_curve_is_a_hyperbola():
    b = np.array([1.0, 10.0, 100.0, 1000.0])
    steps, examples = gn.steps_examples_tradeoff(b, noise_scale=50.0, min_steps=3.0)
    np.testing.assert_allclose((steps / 3.0 - 1) * (examples / (3.0 * 50.0) - 1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(examples, steps * b, rtol=1e-12)


def test_per_example_gradients_average_to_the_batch_gradient():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = rng.standard_normal(6).astype(np.float32)
    params = {"w": jnp.asarray(rng.standard_normal(3), jnp.float32), "b": jnp.float32(0.3)}

    def loss(p, xb, yb):
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    per = gn.per_example_gradients(loss, params, x, y)
    assert per.shape == (6, 4)
    batch = np.asarray(ravel_pytree(jax.grad(loss)(params, x, y))[0])
    np.testing.assert_allclose(per.mean(axis=0), batch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((1, 3)), np.array([[np.nan, 1.0], [0.0, 1.0]])])
def test_bad_per_example_arrays(bad):
    with pytest.raises(ValueError, match="per_example"):
        gn.trace_covariance(bad)


def test_bad_batch_sizes():
    a = _per_example()
    with pytest.raises(ValueError, match="batch_size"):
        gn.expected_minibatch_variance(a, 0)
    with pytest.raises(ValueError, match="batch_size"):
        gn.expected_minibatch_variance(a, 8)
    with pytest.raises(ValueError, match="batch_small"):
        gn.noise_scale_from_two_batches(1.0, 0.5, 8, 8)
    with pytest.raises(ValueError, match="zero"):
        gn.simple_noise_scale(np.array([[1.0], [-1.0]]))
