"""lamb.jax behaviour: jit without recompilation, schedules, inject_hyperparams, trust-ratio telemetry, bf16,
and clear errors at construction. float32 (JAX's default) unless a test says otherwise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamb import jax as lj
from lamb import reference

from test_jax_reference import gradient_trees, make_params, max_relative_error, not_a_vector, run_reference


def as_jax(tree, dtype=jnp.float32):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


@pytest.mark.parametrize("make", [
    lambda: lj.lamb(1e-2),
    lambda: lj.lamb(optax.linear_schedule(0.0, 1e-2, 5), nesterov="nn", norm="l1", trust_clip=(0.1, 10.0),
                    mask=not_a_vector, layer_adaptation_mask=not_a_vector),
    lambda: lj.lamb(1e-2, nesterov="n", bias_correction=False, weight_decay=optax.constant_schedule(0.01)),
    lambda: lj.lars(1e-2, weight_decay=1e-3, nesterov=True, norm="linf", layer_adaptation_mask=not_a_vector),
], ids=["lamb", "lamb-options-schedule", "nlamb-wd-schedule", "lars"])
def test_jit_traces_once_and_state_keeps_its_types(make):
    tx = make()
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)                               # runs only while tracing
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = as_jax(make_params())
    state = tx.init(params)
    types0 = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for g in gradient_trees(make_params(), 4):
        params, state = step(params, state, as_jax(g))
    assert len(traces) == 1
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == types0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def test_learning_rate_schedule_is_read_at_each_step():
    """optax's convention: the schedule is evaluated at the count before the step (0 on the first)."""
    schedule = optax.exponential_decay(0.05, transition_steps=1, decay_rate=0.7)
    params = make_params()
    grads = gradient_trees(params, 6)
    with jax.enable_x64(True):
        tx = lj.lamb(schedule, weight_decay=0.01)
        p = as_jax(params, jnp.float64)
        state = tx.init(p)
        ours = []
        for g in grads:
            updates, state = tx.update(as_jax(g, jnp.float64), state, p)
            p = optax.apply_updates(p, updates)
            ours.append([np.asarray(x) for x in jax.tree.leaves(p)])
        # as optax evaluates them, at an int32 count (exponential_decay then works in float32)
        rates = [float(schedule(jnp.asarray(k, jnp.int32))) for k in range(len(grads))]
    np.testing.assert_allclose(rates, 0.05 * 0.7 ** np.arange(len(grads)), rtol=1e-6)
    x, ref_state, ref = [np.asarray(a, np.float64) for a in jax.tree.leaves(params)], None, []
    for k, g in enumerate(grads):
        ref_state, x = reference.lamb(ref_state, x, jax.tree.leaves(g), lr=rates[k], weight_decay=0.01)
        ref.append(x)
    assert max_relative_error(ours, ref) < 1e-12


def test_inject_hyperparams_changes_the_learning_rate_under_jit():
    tx = optax.inject_hyperparams(lj.lamb)(learning_rate=0.1, weight_decay=0.01, nesterov="n")
    params = as_jax(make_params())
    state = tx.init(params)
    step = jax.jit(tx.update)
    g = as_jax(gradient_trees(make_params(), 1)[0])
    updates_a, _ = step(g, state, params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.05)
    updates_b, _ = step(g, state, params)
    for a, b in zip(jax.tree.leaves(updates_a), jax.tree.leaves(updates_b)):
        np.testing.assert_allclose(np.asarray(b), 0.5 * np.asarray(a), rtol=1e-6)


def test_trust_ratios_are_retrievable_with_tree_get():
    """Documented: optax.tree_utils.tree_get(state, "trust_ratio"), a pytree like params (MaskedNode where
    layer adaptation is off), 1 before the first step, the reference's ratios after it."""
    params = make_params()
    tx = lj.lamb(0.01, layer_adaptation_mask=not_a_vector)
    state = tx.init(as_jax(params))
    before = optax.tree_utils.tree_get(state, "trust_ratio")
    assert jax.tree.structure(before, is_leaf=lambda x: isinstance(x, optax.MaskedNode)) == jax.tree.structure(
        jax.tree.map(lambda _: 0, params))
    assert all(float(r) == 1.0 for r in jax.tree.leaves(before))
    g = gradient_trees(params, 1)[0]
    _, state = tx.update(as_jax(g), state, as_jax(params))
    ratios = optax.tree_utils.tree_get(state, "trust_ratio")
    assert isinstance(ratios["dense"]["bias"], optax.MaskedNode)
    flat_mask = jax.tree.leaves(not_a_vector(params))
    _, ref_ratios = run_reference(reference.lamb, params, [g], lr=0.01, layer_adaptation_mask=flat_mask)
    ours = jax.tree.leaves(ratios, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    for r, r_ref, adapted in zip(ours, ref_ratios[0], flat_mask):
        if adapted:
            assert float(r) == pytest.approx(r_ref, rel=1e-5)


def test_bf16_parameters_keep_float32_moments_and_step_like_float32():
    params = make_params()
    grads = gradient_trees(params, 5)
    runs = {}
    for dtype in (jnp.bfloat16, jnp.float32):
        tx = lj.lamb(0.01, nesterov="nn")
        p = as_jax(params, dtype)
        state = tx.init(p)
        adam_state = state[0]
        assert all(m.dtype == jnp.float32 for m in jax.tree.leaves((adam_state.mu, adam_state.nu)))
        for g in grads:
            updates, state = jax.jit(tx.update)(as_jax(g, dtype), state, p)
            p = optax.apply_updates(p, updates)
        assert all(x.dtype == dtype for x in jax.tree.leaves(p))
        assert all(r.dtype == jnp.float32 for r in jax.tree.leaves(optax.tree_utils.tree_get(state, "trust_ratio")))
        runs[dtype] = [np.asarray(x, np.float64) for x in jax.tree.leaves(p)]
    # bf16 has an 8-bit significand: each stored step is rounded to about 4e-3 of the layer's scale.
    assert max_relative_error([runs[jnp.bfloat16]], [runs[jnp.float32]]) < 2e-2


def test_mu_dtype_sets_the_first_moment_dtype():
    params = as_jax(make_params())
    for tx in (lj.lamb(0.01, mu_dtype=jnp.bfloat16), lj.lamb(0.01, nesterov="n", mu_dtype=jnp.bfloat16)):
        state = tx.init(params)
        assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(state[0].mu))
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(state[0].nu))
        _, new_state = tx.update(as_jax(gradient_trees(make_params(), 1)[0]), state, params)
        assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(new_state[0].mu))
    state = lj.lars(0.01, mu_dtype=jnp.bfloat16).init(params)
    assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(optax.tree_utils.tree_get(state, "mu")))


def test_zero_gradient_layer_gets_ratio_one_and_no_nan():
    params = as_jax(make_params())
    grads = jax.tree.map(jnp.zeros_like, params)
    for tx in (lj.lamb(0.01, weight_decay=0.0), lj.lars(0.01), lj.lamb(0.01, nesterov="nn", weight_decay=0.0)):
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
        assert all(float(r) == 1.0 for r in jax.tree.leaves(optax.tree_utils.tree_get(state, "trust_ratio")))


def test_scale_by_trust_ratio_needs_params():
    tx = lj.scale_by_trust_ratio()
    params = as_jax(make_params())
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), None)


@pytest.mark.parametrize("factory,kwargs,error,words", [
    (lj.lamb, dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (lj.lamb, dict(learning_rate=float("nan")), ValueError, "learning_rate"),
    (lj.lamb, dict(learning_rate=None), TypeError, "learning_rate"),
    (lj.lamb, dict(learning_rate="0.1"), TypeError, "learning_rate"),
    (lj.lamb, dict(learning_rate=0.1, b1=1.0), ValueError, "b1"),
    (lj.lamb, dict(learning_rate=0.1, b2=-0.1), ValueError, "b2"),
    (lj.lamb, dict(learning_rate=0.1, eps=-1e-8), ValueError, "eps"),
    (lj.lamb, dict(learning_rate=0.1, weight_decay=-0.01), ValueError, "weight_decay"),
    (lj.lamb, dict(learning_rate=0.1, weight_decay=True), TypeError, "weight_decay"),
    (lj.lamb, dict(learning_rate=0.1, norm="l3"), ValueError, "norm"),
    (lj.lamb, dict(learning_rate=0.1, nesterov="nnn"), ValueError, "nesterov"),
    (lj.lamb, dict(learning_rate=0.1, nesterov=True), ValueError, "nesterov"),
    (lj.lamb, dict(learning_rate=0.1, trust_clip=(2.0, 1.0)), ValueError, "trust_clip"),
    (lj.lamb, dict(learning_rate=0.1, trust_clip=(-1.0, 1.0)), ValueError, "trust_clip"),
    (lj.lamb, dict(learning_rate=0.1, trust_clip=1.0), ValueError, "trust_clip"),
    (lj.lamb, dict(learning_rate=0.1, trust_clip=(0.1, 1.0, 2.0)), ValueError, "trust_clip"),
    (lj.lamb, dict(learning_rate=0.1, momentum_decay=-4e-3), ValueError, "momentum_decay"),
    (lj.lamb, dict(learning_rate=0.1, momentum_decay=float("inf")), ValueError, "momentum_decay"),
    (lj.lamb, dict(learning_rate=0.1, bias_correction=1), TypeError, "bias_correction"),
    (lj.lamb, dict(learning_rate=0.1, mask={"a": 0.5}), TypeError, "mask"),
    (lj.lamb, dict(learning_rate=0.1, b1=jnp.ones(2) * 0.9), TypeError, "b1"),
    (lj.lars, dict(learning_rate=-0.1), ValueError, "learning_rate"),
    (lj.lars, dict(learning_rate=0.1, momentum=1.5), ValueError, "momentum"),
    (lj.lars, dict(learning_rate=0.1, weight_decay=float("inf")), ValueError, "weight_decay"),
    (lj.lars, dict(learning_rate=0.1, nesterov="n"), TypeError, "nesterov"),
    (lj.lars, dict(learning_rate=0.1, norm="L2"), ValueError, "norm"),
    (lj.lars, dict(learning_rate=0.1, trust_clip=(0.0, float("nan"))), ValueError, "trust_clip"),
    (lj.lars, dict(learning_rate=0.1, layer_adaptation_mask=[1, 0]), TypeError, "layer_adaptation_mask"),
    (lj.scale_by_trust_ratio, dict(norm="fro"), ValueError, "norm"),
    (lj.scale_by_nesterov_adam, dict(nesterov=None), ValueError, "nesterov"),
    (lj.scale_by_adam, dict(bias_correction="yes"), TypeError, "bias_correction"),
    (lj.scale_by_ema_momentum, dict(decay=1.0), ValueError, "decay"),
])
def test_bad_hyperparameters_raise_at_construction(factory, kwargs, error, words):
    with pytest.raises(error, match=words):
        factory(**kwargs)


def test_good_edge_values_are_accepted():
    """The boundaries that are allowed: beta = 0, eps = 0, lr = 0, gamma_u = inf, numpy/jax scalars."""
    lj.lamb(0.0, b1=0.0, b2=0.0, eps=0.0, weight_decay=0.0, trust_clip=(0.0, float("inf")), momentum_decay=0.0)
    lj.lamb(np.float32(0.1), b1=jnp.asarray(0.9), weight_decay=np.float64(0.01), trust_clip=[0.5, 2])
    lj.lars(jnp.asarray(0.1), momentum=0.0, mask=True, layer_adaptation_mask=False)


# --------------------------------------------------------------------------------------------------
# Complex parameters: rejected at init (and complex updates at update), as lamb.torch and lamb.reference do.


@pytest.mark.parametrize("make", [
    lambda: lj.lamb(1e-2), lambda: lj.lamb(1e-2, nesterov="nn", trust_clip=(0.1, 10.0)), lambda: lj.lars(1e-2),
    lambda: lj.scale_by_adam(), lambda: lj.scale_by_nesterov_adam(), lambda: lj.scale_by_ema_momentum(),
    lambda: lj.scale_by_trust_ratio(),
], ids=["lamb", "nnlamb-clip", "lars", "scale_by_adam", "scale_by_nesterov_adam", "scale_by_ema_momentum",
        "scale_by_trust_ratio"])
def test_complex_parameters_are_rejected_at_init_with_a_clear_error(make):
    """Silently wrong before (g^2 instead of |g|^2 in nu, a complex nu, trust_clip's "Clip received a complex
    value"); now a TypeError at init naming the dtype and the way out, the words of lamb.torch's error."""
    params = {"w": jnp.ones((2, 3), jnp.complex64), "b": jnp.zeros(3)}
    with pytest.raises(TypeError, match=r"does not support complex parameters .*complex64.*\(2, 3\).*real"):
        make().init(params)


def test_complex_updates_for_real_parameters_are_rejected():
    tx = lj.lamb(1e-2)
    params = {"w": jnp.ones((2, 3))}
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"does not support complex .*complex64"):
        tx.update({"w": jnp.ones((2, 3), jnp.complex64)}, state, params)


def test_lamb_step_stores_no_update_array():
    """The compiled LAMB step writes the moments and the weights and no array of the layer's size besides
    (the update u is recomputed, not stored: a stored u is a fresh temporary per step on XLA:CPU)."""
    import optax

    from lamb import jax as lj

    if jax.default_backend() != "cpu":
        pytest.skip("checks XLA:CPU's compiled program")
    shape = (64, 128)
    params = [jnp.zeros(shape, jnp.float32)]
    for options in ({}, {"nesterov": "nn"}, {"norm": "linf", "bias_correction": False}):
        tx = lj.lamb(1e-3, **options)
        state = tx.init(params)

        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        text = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile().as_text()
        entry = text.split("ENTRY", 1)[1]
        layer_sized = [line for line in entry.splitlines()
                       if "= f32[64,128]" in line and "parameter(" not in line]
        assert len(layer_sized) == 3, (options, layer_sized)   # m_t, v_t and x_{t+1}
