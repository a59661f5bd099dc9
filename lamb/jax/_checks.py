"""Validation of hyperparameters at construction time, with the same messages as :mod:`lamb.torch`.

optax factories receive Python numbers, NumPy/JAX scalars, schedules (callables) and, under
``optax.inject_hyperparams`` inside a jitted function, tracers. Concrete values are checked here, when the
transformation is built, so that a bad value fails with a message naming it instead of deep inside a traced
function; tracers cannot be inspected and are passed through (``inject_hyperparams`` only re-builds a
transformation that was already built, and checked, with concrete values).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from ..reference import check_nesterov, check_norm, check_trust_clip

__all__ = ["check_nesterov", "check_norm", "check_trust_clip", "check_nonnegative", "check_beta",
           "check_learning_rate", "check_bool", "check_momentum_decay", "check_real"]


def _concrete_real(name: str, value):
    """``value`` as a Python float, or None for a tracer; TypeError for anything that is not one real number."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r} of type bool")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        real = np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
        if value.size != 1 or not real:
            raise TypeError(f"{name} must be a real scalar, got an array of shape {value.shape} and dtype {value.dtype}")
        return float(np.asarray(value).reshape(()))
    raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")


def check_nonnegative(name: str, value) -> None:
    """A finite number >= 0 (eps, weight_decay, momentum_decay, ...), else ValueError/TypeError naming it."""
    v = _concrete_real(name, value)
    if v is not None and (not math.isfinite(v) or v < 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_nonnegative_or_schedule(name: str, value) -> None:
    """A finite number >= 0 or an optax schedule (a callable of the step count)."""
    if callable(value):
        return
    check_nonnegative(name, value)


def check_learning_rate(learning_rate) -> None:
    """``learning_rate``: a finite number >= 0 or a schedule (checked at step 0 where it gives a number)."""
    if learning_rate is None:
        raise TypeError("learning_rate must be a finite number >= 0 or an optax schedule, got None")
    check_nonnegative_or_schedule("learning_rate", learning_rate)


def check_beta(name: str, value) -> None:
    """A decay rate in [0, 1)."""
    v = _concrete_real(name, value)
    if v is not None and not (0.0 <= v < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_momentum_decay(momentum_decay) -> None:
    """psi of Dozat's schedule: None (constant beta1) or a finite number >= 0."""
    if momentum_decay is not None:
        check_nonnegative("momentum_decay", momentum_decay)


def check_mask(name: str, mask) -> None:
    """A mask as optax takes it: None, a bool, a pytree of bools, or a callable returning one."""
    if mask is None or callable(mask) or isinstance(mask, bool):
        return
    leaves = jax.tree.leaves(mask)
    for leaf in leaves:
        if not isinstance(leaf, (bool, np.bool_)) and not (
            isinstance(leaf, (np.ndarray, jax.Array)) and leaf.dtype == bool and leaf.size == 1
        ):
            raise TypeError(f"{name} must be a pytree of bools (one per parameter array) or a callable returning "
                            f"one, got a leaf {leaf!r} of type {type(leaf).__name__}")


def check_real(name: str, tree, what: str = "parameters") -> None:
    """Every array of ``tree`` real, else a TypeError naming its dtype and shape (checked at trace time: the dtype
    is static, so this costs nothing under jit).

    Complex parameters are rejected, as by :mod:`lamb.torch` and :mod:`lamb.reference`: the moments would need
    :math:`|g|^2` and the trust ratio a norm of the real view, conventions the paper does not define. A complex
    parameter can be optimized as its real view (real and imaginary parts as two real entries).
    """
    for leaf in jax.tree.leaves(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and np.issubdtype(dtype, np.complexfloating):
            raise TypeError(f"{name} does not support complex {what} (got one of dtype {dtype} and shape "
                            f"{tuple(leaf.shape)}); optimize its real view instead, e.g. "
                            f"jnp.stack([p.real, p.imag], axis=-1)")
