"""Tests of lamb.experiments.agreement: the three runners give the independent implementations' steps."""

import numpy as np
import pytest

from lamb import reference
from lamb.experiments import agreement

SHAPES = [(5, 3), (3,)]


def _setup():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s) for s in SHAPES], agreement.gradient_sequence(SHAPES, steps=6, seed=1)


def test_reference_torch_and_optax_adamw_agree():
    import optax
    import torch

    x0, grads = _setup()
    hp = dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    ref = agreement.run_reference(reference.adamw, x0, grads, **hp)
    tor = agreement.run_torch(lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.99), eps=1e-8,
                                                          weight_decay=0.1), x0, grads)
    jx = agreement.run_jax(optax.adamw(0.01, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1), x0, grads)
    assert len(ref.params) == 6 and ref.trust_ratio[0] == []
    assert agreement.max_relative_error(tor, ref) < 1e-12
    assert agreement.max_relative_error(jx, ref) < 1e-12
    # A different algorithm is detected.
    other = agreement.run_reference(reference.adam, x0, grads, **hp)
    assert agreement.max_relative_error(other, ref) > 1e-4


def test_torch_nadam_agrees_in_float64():
    import torch

    x0, grads = _setup()
    ref = agreement.run_reference(reference.nadam, x0, grads, lr=0.01)
    tor = agreement.run_torch(lambda p: torch.optim.NAdam(p, lr=0.01, momentum_decay=4e-3), x0, grads)
    assert agreement.max_relative_error(tor, ref) < 1e-12
    assert torch.get_default_dtype() == torch.float32  # restored after the run


def test_reference_trust_ratios_are_recorded():
    x0, grads = _setup()
    ref = agreement.run_reference(reference.lamb, x0, grads, lr=0.1, weight_decay=0.0)
    assert len(ref.trust_ratio) == 6 and len(ref.trust_ratio[0]) == 2
    # Step-norm identity of LAMB: ||x_1 - x_0|| = lr ||x_0||.
    np.testing.assert_allclose(np.linalg.norm(ref.params[0][0] - x0[0]), 0.1 * np.linalg.norm(x0[0]))


def test_gradient_sequence_scales_and_determinism():
    a = agreement.gradient_sequence(SHAPES, steps=3, seed=5, scales=[1.0, 1e-3])
    b = agreement.gradient_sequence(SHAPES, steps=3, seed=5)
    np.testing.assert_allclose(a[2][1], 1e-3 * b[2][1])
    np.testing.assert_array_equal(a[0][0], b[0][0])


def test_bad_input_is_named():
    x0, grads = _setup()
    with pytest.raises(ValueError, match="steps"):
        agreement.gradient_sequence(SHAPES, steps=0)
    with pytest.raises(ValueError, match="scales"):
        agreement.gradient_sequence(SHAPES, steps=1, scales=[1.0])
    with pytest.raises(ValueError, match=r"grads\[0\]\[1\] has shape"):
        agreement.run_reference(reference.lamb, x0, [[grads[0][0], np.zeros(4)]], lr=0.1)
    with pytest.raises(ValueError, match="at least one step"):
        agreement.run_reference(reference.lamb, x0, [], lr=0.1)
