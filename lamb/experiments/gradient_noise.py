"""Gradient noise against batch size: the variance of the mini-batch gradient and the gradient noise scale.

At a fixed point :math:`x`, let :math:`g_1, \\dots, g_N` be the per-example gradients over a data set of
:math:`N` examples, :math:`G = \\frac1N \\sum_n g_n` the full-batch gradient and
:math:`\\Sigma = \\frac1N \\sum_n (g_n - G)(g_n - G)^\\top` their covariance. A mini-batch of :math:`B`
examples drawn uniformly *without* replacement has gradient :math:`g_B` with :math:`E[g_B] = G` and

.. math::
    E\\,\\|g_B - G\\|^2 = \\frac{\\operatorname{tr}\\Sigma}{B}\\cdot\\frac{N - B}{N - 1}

(with replacement, or for :math:`N \\to \\infty`, the last factor is 1): the noise falls as :math:`1/B`.
McCandlish et al. (2018, "An Empirical Model of Large-Batch Training") compare it with the signal
:math:`\\|G\\|^2`: the *simple noise scale*

.. math::
    B_\\text{simple} = \\frac{\\operatorname{tr}\\Sigma}{\\|G\\|^2}

is the batch size at which the mini-batch noise :math:`E\\|g_B - G\\|^2` equals the signal :math:`\\|G\\|^2`.
Below it, doubling the batch nearly halves the noise and (with the learning rate scaled up) the number of
steps; far above it, the gradient is already accurate and a larger batch buys little. It estimates their
critical batch size. In data-parallel training the per-example gradients are not available, but the squared
norms of the gradients of two batch sizes are (a worker's and the all-reduced one), and
:func:`noise_scale_from_two_batches` gives unbiased estimates of :math:`\\|G\\|^2` and
:math:`\\operatorname{tr}\\Sigma` from them (McCandlish et al. 2018, Appendix A.1).

Per-example gradients are flattened to one row per example (:func:`per_example_gradients` builds them for a
JAX loss with ``jax.vmap``); every function here then works on that ``(N, d)`` NumPy array in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def _check_per_example(per_example) -> np.ndarray:
    a = np.asarray(per_example, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"per_example must be a 2-D array (examples, parameters) with at least two rows, "
                         f"got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("per_example holds non-finite values")
    return a


def _check_batch_size(batch_size, n: int, name: str = "batch_size") -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or not 1 <= batch_size <= n:
        raise ValueError(f"{name} must be an int in [1, {n}] (the number of examples), got {batch_size!r}")
    return int(batch_size)


def per_example_gradients(loss: Callable, params, x, y) -> np.ndarray:
    """The gradient of ``loss(params, x[n:n+1], y[n:n+1])`` for every example ``n``, flattened, as a float64
    ``(N, d)`` array (``jax.vmap`` over examples; the parameter order is ``jax.flatten_util``'s)."""
    import jax
    from jax.flatten_util import ravel_pytree

    def one(xn, yn):
        g = jax.grad(loss)(params, xn[None], yn[None])
        return ravel_pytree(g)[0]

    return np.asarray(jax.jit(jax.vmap(one))(x, y), dtype=np.float64)


def full_gradient(per_example) -> np.ndarray:
    """:math:`G = \\frac1N \\sum_n g_n`."""
    return _check_per_example(per_example).mean(axis=0)


def trace_covariance(per_example) -> float:
    """:math:`\\operatorname{tr}\\Sigma = \\frac1N \\sum_n \\|g_n - G\\|^2` (the population covariance)."""
    a = _check_per_example(per_example)
    return float(np.mean(np.sum((a - a.mean(axis=0)) ** 2, axis=1)))


def expected_minibatch_variance(per_example, batch_size: int, replace: bool = False) -> float:
    """:math:`E\\|g_B - G\\|^2` for a batch of ``batch_size`` examples drawn uniformly from the ``N`` rows:
    :math:`\\operatorname{tr}\\Sigma / B \\cdot (N - B)/(N - 1)` without replacement, :math:`\\operatorname{tr}
    \\Sigma / B` with replacement."""
    a = _check_per_example(per_example)
    n = a.shape[0]
    b = _check_batch_size(batch_size, n) if not replace else _check_batch_size(batch_size, 2**62)
    finite_population = 1.0 if replace else (n - b) / (n - 1)
    return trace_covariance(a) / b * finite_population


def minibatch_gradient_variance(per_example, batch_sizes: Sequence[int], draws: int = 200, seed: int = 0,
                                replace: bool = False) -> dict[int, np.ndarray]:
    """Measure :math:`\\|g_B - G\\|^2` for ``draws`` random batches of each size in ``batch_sizes``.

    Returns ``{B: array of draws}``; its mean estimates :func:`expected_minibatch_variance`.
    """
    a = _check_per_example(per_example)
    n = a.shape[0]
    if not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    full = a.mean(axis=0)
    rng = np.random.default_rng(seed)
    out = {}
    for b in batch_sizes:
        b = _check_batch_size(b, n) if not replace else _check_batch_size(b, 2**62)
        values = np.empty(draws)
        for k in range(draws):
            idx = rng.choice(n, size=b, replace=replace)
            values[k] = np.sum((a[idx].mean(axis=0) - full) ** 2)
        out[b] = values
    return out


def simple_noise_scale(per_example) -> float:
    """McCandlish et al.'s :math:`B_\\text{simple} = \\operatorname{tr}\\Sigma / \\|G\\|^2`."""
    a = _check_per_example(per_example)
    signal = float(np.sum(a.mean(axis=0) ** 2))
    if signal == 0.0:
        raise ValueError("the full-batch gradient is zero: the noise scale is infinite")
    return trace_covariance(a) / signal


@dataclass(frozen=True)
class NoiseEstimate:
    """Estimates of the signal :math:`\\|G\\|^2`, the noise :math:`\\operatorname{tr}\\Sigma` and their ratio."""

    gradient_sq_norm: float
    trace_covariance: float

    @property
    def noise_scale(self) -> float:
        return self.trace_covariance / self.gradient_sq_norm


def noise_scale_from_two_batches(sq_norm_small, sq_norm_big, batch_small: int, batch_big: int) -> NoiseEstimate:
    """Unbiased estimates of :math:`\\|G\\|^2` and :math:`\\operatorname{tr}\\Sigma` from the squared norms of
    gradients at two batch sizes (McCandlish et al. 2018, Appendix A.1), for batches drawn with replacement:

    .. math::
        E\\|g_B\\|^2 = \\|G\\|^2 + \\operatorname{tr}\\Sigma / B
        \\;\\Rightarrow\\;
        \\widehat{\\|G\\|^2} = \\frac{B_\\text{big}\\|g_\\text{big}\\|^2 - B_\\text{small}\\|g_\\text{small}\\|^2}
                                  {B_\\text{big} - B_\\text{small}}, \\quad
        \\widehat{\\operatorname{tr}\\Sigma} = \\frac{\\|g_\\text{small}\\|^2 - \\|g_\\text{big}\\|^2}
                                  {1/B_\\text{small} - 1/B_\\text{big}} .

    The ratio of the two estimates is biased (a ratio of unbiased estimates); average each over many steps
    before dividing, as the paper does. ``sq_norm_*`` may be arrays of measurements, which are averaged.
    """
    for name, b in (("batch_small", batch_small), ("batch_big", batch_big)):
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or b < 1:
            raise ValueError(f"{name} must be a positive int, got {b!r}")
    if not batch_small < batch_big:
        raise ValueError(f"batch_small ({batch_small}) must be smaller than batch_big ({batch_big})")
    small = float(np.mean(np.asarray(sq_norm_small, dtype=np.float64)))
    big = float(np.mean(np.asarray(sq_norm_big, dtype=np.float64)))
    gradient_sq_norm = (batch_big * big - batch_small * small) / (batch_big - batch_small)
    trace = (small - big) / (1.0 / batch_small - 1.0 / batch_big)
    return NoiseEstimate(gradient_sq_norm=gradient_sq_norm, trace_covariance=trace)


def steps_examples_tradeoff(batch_size, noise_scale: float, min_steps: float = 1.0):
    """McCandlish et al.'s model of training speed: with the optimal learning rate at each batch size, the
    steps and examples needed to reach a given loss are

    .. math::
        S = S_\\text{min} (1 + B_\\text{noise}/B), \\qquad E = E_\\text{min} (1 + B/B_\\text{noise}),

    with :math:`E_\\text{min} = S_\\text{min} B_\\text{noise}`, so that :math:`(S/S_\\text{min} - 1)
    (E/E_\\text{min} - 1) = 1`. Returns ``(S, E)`` for the given batch sizes.
    """
    b = np.asarray(batch_size, dtype=np.float64)
    if np.any(b <= 0) or not noise_scale > 0 or not min_steps > 0:
        raise ValueError(f"batch sizes, noise_scale and min_steps must be positive, got {batch_size!r}, "
                         f"{noise_scale!r}, {min_steps!r}")
    steps = min_steps * (1.0 + noise_scale / b)
    examples = min_steps * noise_scale * (1.0 + b / noise_scale)
    return steps, examples

