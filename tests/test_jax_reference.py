"""lamb.jax against lamb.reference: every option combination, many steps, random pytrees.

Float64 runs switch ``jax_enable_x64`` on only inside a ``jax.enable_x64(True)`` context (a fixture), so the
rest of the test process keeps JAX's float32 default. Errors are relative to each layer's largest entry.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamb import jax as lj
from lamb import reference

STEPS = 20
LR = 0.02


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def make_params(seed: int = 0) -> dict:
    """A nested pytree with a matrix, a bias, a 4-d kernel, a scalar, a zero-initialised and a tiny layer."""
    rng = np.random.default_rng(seed)
    return {
        "dense": {"kernel": rng.standard_normal((5, 4)), "bias": 0.1 * rng.standard_normal(4)},
        "conv": rng.standard_normal((3, 2, 2, 2)),
        "scale": np.array(1.3),
        "zero": np.zeros(6),                      # zero-norm rule: trust ratio 1
        "embed": 1e-3 * rng.standard_normal((7, 3)),
    }


def not_a_vector(params):
    """optax-style mask: True for arrays with 2 or more dimensions (False for biases, scales, scalars)."""
    return jax.tree.map(lambda p: np.ndim(p) >= 2, params)


def gradient_trees(params, steps: int, seed: int = 1):
    """``steps`` gradient pytrees, each layer scaled by its own 10^U(-3, 0), as real networks differ."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(params)
    scales = 10.0 ** rng.uniform(-3, 0, size=len(leaves))
    return [jax.tree.unflatten(treedef, [s * rng.standard_normal(np.shape(x)) for x, s in zip(leaves, scales)])
            for _ in range(steps)]


def run_lj(tx, params, grads, dtype, jit=False):
    """Steps of an optax transformation; the flat leaves after each step and the recorded trust ratios."""
    p = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    state = tx.init(p)
    update = jax.jit(tx.update) if jit else tx.update
    history, ratios = [], []
    for g in grads:
        updates, state = update(jax.tree.map(lambda x: jnp.asarray(x, dtype), g), state, p)
        p = optax.apply_updates(p, updates)
        history.append([np.asarray(x, np.float64) for x in jax.tree.leaves(p)])
        tree = optax.tree_utils.tree_get(state, "trust_ratio")
        ratios.append(None if tree is None else jax.tree.leaves(
            tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode)))
    return history, ratios


def run_reference(fn, params, grads, **hyper):
    x = [np.asarray(a, np.float64) for a in jax.tree.leaves(params)]
    state, history, ratios = None, [], []
    for g in grads:
        state, x = fn(state, x, jax.tree.leaves(g), **hyper)
        history.append(x)
        ratios.append(state.get("trust_ratio"))
    return history, ratios


def max_relative_error(ours, theirs) -> float:
    worst = 0.0
    for step_a, step_b in zip(ours, theirs, strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            scale = max(float(np.max(np.abs(b))), 1e-300)
            worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def check_ratios(ours, theirs, adapt, rtol):
    """Recorded trust ratios equal the reference's on adapted layers; unadapted ones are MaskedNode (ratio 1)."""
    for step_ours, step_ref in zip(ours, theirs, strict=True):
        for r, r_ref, a in zip(step_ours, step_ref, adapt, strict=True):
            if a:
                np.testing.assert_allclose(float(r), r_ref, rtol=rtol)
            else:
                assert isinstance(r, optax.MaskedNode) and r_ref == 1.0


LAMB_REFERENCES = {None: reference.lamb, "n": reference.nlamb, "nn": reference.nnlamb}
MASKINGS = ("none", "both", "decay_only", "adaptation_only")


def lamb_case(nesterov, norm, bias_correction, trust_clip, masking, momentum_decay=4e-3, callable_masks=False):
    params = make_params()
    mask_tree = not_a_vector(params)
    mask = mask_tree if not callable_masks else not_a_vector
    decay_mask = mask if masking in ("both", "decay_only") else None
    adapt_mask = mask if masking in ("both", "adaptation_only") else None
    options = dict(weight_decay=0.01, norm=norm, bias_correction=bias_correction, trust_clip=trust_clip)
    if nesterov is not None:
        options["momentum_decay"] = momentum_decay
    tx = lj.lamb(LR, b1=0.9, b2=0.999, eps=1e-6, nesterov=nesterov, mask=decay_mask,
                 layer_adaptation_mask=adapt_mask, **options)
    flat_mask = jax.tree.leaves(mask_tree)
    ref_masks = dict(weight_decay_mask=flat_mask if decay_mask is not None else None,
                     layer_adaptation_mask=flat_mask if adapt_mask is not None else None)
    ref = run_reference(LAMB_REFERENCES[nesterov], params, gradient_trees(params, STEPS), lr=LR, beta1=0.9,
                        beta2=0.999, eps=1e-6, **options, **ref_masks)
    adapt = flat_mask if adapt_mask is not None else [True] * len(flat_mask)
    return tx, params, ref, adapt


# Every combination of the four options; the two maskings alternate through the grid so that each meets
# every Nesterov variant and every norm (the masks act after the moments and before the norms).
LAMB_GRID = [(*combo, ("none", "both")[k % 2]) for k, combo in enumerate(itertools.product(
    (None, "n", "nn"), ("l2", "l1", "linf"), (True, False), (None, (0.5, 2.0))))]


@pytest.mark.parametrize("nesterov,norm,bias_correction,trust_clip,masking", LAMB_GRID)
def test_lamb_float64_every_option(x64, nesterov, norm, bias_correction, trust_clip, masking):
    tx, params, (ref, ref_ratios), adapt = lamb_case(nesterov, norm, bias_correction, trust_clip, masking)
    ours, ratios = run_lj(tx, params, gradient_trees(params, STEPS), jnp.float64)
    assert max_relative_error(ours, ref) < 1e-12
    check_ratios(ratios, ref_ratios, adapt, rtol=1e-12)


@pytest.mark.parametrize("nesterov", (None, "n", "nn"))
@pytest.mark.parametrize("masking", ("decay_only", "adaptation_only"))
def test_lamb_float64_one_mask_at_a_time_callable(x64, nesterov, masking):
    """Each mask alone, given as a callable (optax's other mask form)."""
    tx, params, (ref, ref_ratios), adapt = lamb_case(nesterov, "l2", True, None, masking, callable_masks=True)
    ours, ratios = run_lj(tx, params, gradient_trees(params, STEPS), jnp.float64)
    assert max_relative_error(ours, ref) < 1e-12
    check_ratios(ratios, ref_ratios, adapt, rtol=1e-12)


@pytest.mark.parametrize("nesterov", ("n", "nn"))
@pytest.mark.parametrize("momentum_decay", (None, 0.0, 0.05))
def test_nesterov_momentum_schedules_float64(x64, nesterov, momentum_decay):
    """Constant schedule (None), psi = 0 (beta1_t = beta1 / 2) and a fast-warming psi."""
    tx, params, (ref, _), _ = lamb_case(nesterov, "l2", True, None, "none", momentum_decay=momentum_decay)
    ours, _ = run_lj(tx, params, gradient_trees(params, STEPS), jnp.float64)
    assert max_relative_error(ours, ref) < 1e-12


@pytest.mark.parametrize("norm,trust_clip,masking,weight_decay,nesterov", list(itertools.product(
    ("l2", "l1", "linf"), (None, (0.5, 2.0)), MASKINGS, (0.01,), (False,))) + [
    ("l2", None, "none", 0.0, False), ("l2", None, "both", 0.01, True), ("linf", (0.5, 2.0), "none", 0.01, True)])
def test_lars_float64_every_option(x64, norm, trust_clip, masking, weight_decay, nesterov):
    params = make_params()
    mask_tree = not_a_vector(params)
    decay_mask = mask_tree if masking in ("both", "decay_only") else None
    adapt_mask = mask_tree if masking in ("both", "adaptation_only") else None
    tx = lj.lars(LR, momentum=0.9, weight_decay=weight_decay, norm=norm, trust_clip=trust_clip, nesterov=nesterov,
                 mask=decay_mask, layer_adaptation_mask=adapt_mask)
    flat = jax.tree.leaves(mask_tree)
    ref, ref_ratios = run_reference(
        reference.lars, params, gradient_trees(params, STEPS), lr=LR, beta1=0.9, weight_decay=weight_decay,
        norm=norm, trust_clip=trust_clip, nesterov=nesterov,
        weight_decay_mask=flat if decay_mask is not None else None,
        layer_adaptation_mask=flat if adapt_mask is not None else None)
    ours, ratios = run_lj(tx, params, gradient_trees(params, STEPS), jnp.float64)
    assert max_relative_error(ours, ref) < 1e-12
    check_ratios(ratios, ref_ratios, flat if adapt_mask is not None else [True] * len(flat), rtol=1e-12)


@pytest.mark.parametrize("nesterov,norm,bias_correction,trust_clip,masking", [
    (None, "l2", True, None, "none"), (None, "l1", False, (0.5, 2.0), "both"), (None, "linf", True, None, "both"),
    ("n", "l2", True, None, "both"), ("n", "linf", False, (0.5, 2.0), "none"),
    ("nn", "l2", True, None, "both"), ("nn", "l1", False, None, "none"),
])
def test_lamb_float32_close_to_float64_reference(nesterov, norm, bias_correction, trust_clip, masking):
    """float32 (JAX's default, jitted) against the float64 reference: rounding only, under 1e-5 relative.

    The bias corrections use -expm1(t ln beta) with ln beta taken in double precision; ``1 - beta2**t`` in
    float32 would carry float32(0.999)'s representation error into every step, 6e-6 relative on the first.
    """
    tx, params, (ref, ref_ratios), adapt = lamb_case(nesterov, norm, bias_correction, trust_clip, masking)
    ours, ratios = run_lj(tx, params, gradient_trees(params, STEPS), jnp.float32, jit=True)
    assert max_relative_error(ours, ref) < 1e-5
    check_ratios(ratios, ref_ratios, adapt, rtol=1e-5)


def test_float32_bias_correction_is_closer_to_the_math_than_optax():
    """optax.lamb's float32 run carries float32(0.999)'s error (about 6e-6 relative); lj.lamb's does not."""
    params = make_params()
    grads = gradient_trees(params, STEPS)
    ref, _ = run_reference(reference.lamb, params, grads, lr=LR, weight_decay=0.01)
    ours, _ = run_lj(lj.lamb(LR, weight_decay=0.01), params, grads, jnp.float32, jit=True)
    theirs, _ = run_lj(optax.lamb(LR, weight_decay=0.01), params, grads, jnp.float32, jit=True)
    assert max_relative_error(ours, ref) < 1e-6 < max_relative_error(theirs, ref) < 1e-5


@pytest.mark.parametrize("norm,trust_clip", [("l2", None), ("l1", (0.5, 2.0)), ("linf", None)])
def test_lars_float32_close_to_float64_reference(norm, trust_clip):
    params = make_params()
    mask = not_a_vector(params)
    flat = jax.tree.leaves(mask)
    tx = lj.lars(LR, momentum=0.9, weight_decay=0.01, norm=norm, trust_clip=trust_clip, mask=mask,
                 layer_adaptation_mask=mask)
    ref, _ = run_reference(reference.lars, params, gradient_trees(params, STEPS), lr=LR, beta1=0.9,
                           weight_decay=0.01, norm=norm, trust_clip=trust_clip, weight_decay_mask=flat,
                           layer_adaptation_mask=flat)
    ours, _ = run_lj(tx, params, gradient_trees(params, STEPS), jnp.float32, jit=True)
    assert max_relative_error(ours, ref) < 1e-5


def test_trust_ratio_building_block_matches_reference_trust_ratio(x64):
    """lj.layer_norm and lj.trust_ratio agree with reference.layer_norm / reference.trust_ratio, zero rule too."""
    rng = np.random.default_rng(3)
    cases = [(rng.standard_normal((4, 5)), rng.standard_normal((4, 5))), (np.zeros(3), rng.standard_normal(3)),
             (rng.standard_normal(3), np.zeros(3)), (np.zeros((0, 2)), np.zeros((0, 2))),
             (np.array(2.0), np.array(-0.5))]
    for norm in reference.NORMS:
        for clip in (None, (0.5, 2.0), (3.0, np.inf)):
            for x, u in cases:
                ours = lj.trust_ratio(lj.layer_norm(jnp.asarray(x), norm), lj.layer_norm(jnp.asarray(u), norm), clip)
                assert float(ours) == pytest.approx(reference.trust_ratio(x, u, norm, clip), rel=1e-14)
            assert float(lj.layer_norm(jnp.asarray(cases[0][0]), norm)) == pytest.approx(
                reference.layer_norm(cases[0][0], norm), rel=1e-14)
