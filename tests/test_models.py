"""Models: output shapes, readable layer names, the loss against a NumPy computation, properties the
architecture promises (per-example normalization, padding ignored), and a loss that decreases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamb.experiments import models


def test_mlp_shapes_and_names():
    m = models.mlp(40, [16, 8], 10)
    p = m.init(jax.random.key(0))
    assert models.layer_names(p) == ["dense_0/bias", "dense_0/kernel", "dense_1/bias", "dense_1/kernel",
                                     "dense_2/bias", "dense_2/kernel"]
    assert p["dense_0"]["kernel"].shape == (40, 16)
    assert m.apply(p, jnp.ones((5, 40))).shape == (5, 10)
    assert models.count_params(p) == 40 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10


@pytest.mark.parametrize("input_shape, x_shape", [((40,), (3, 40)), ((40, 2), (3, 40, 2)), ((8, 8, 3), (3, 8, 8, 3))])
def test_resnet_shapes_1d_and_2d(input_shape, x_shape):
    m = models.resnet(input_shape, 10, widths=(8, 16), blocks_per_stage=1, groups=4)
    p = jax.eval_shape(m.init, jax.random.key(0))  # shapes only: nothing is compiled
    names = models.layer_names(p)
    assert "block_1/conv_2/kernel" in names and "block_1/projection/kernel" in names and "head/kernel" in names
    assert "block_0/projection/kernel" not in names  # same shape: identity shortcut
    assert jax.eval_shape(m.apply, p, jnp.ones(x_shape)).shape == (3, 10)


def test_resnet_examples_are_independent_of_their_batch():
    # GroupNorm normalizes each example on its own: an example's logits do not depend on its companions
    # (BatchNorm's would), which is why data-parallel splits compute the same function.
    m = models.resnet((40,), 10, widths=(8, 16), groups=4)
    p = m.init(jax.random.key(1))
    p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), p)  # leave init's zeros
    x = jax.random.normal(jax.random.key(3), (6, 40))
    whole, part = jax.jit(lambda p, x: (m.apply(p, x)[:2], m.apply(p, x[:2])))(p, x)
    np.testing.assert_allclose(whole, part, rtol=2e-5, atol=2e-6)


def test_group_norm_against_numpy():
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    p = {"scale": np.linspace(0.5, 2, 8, dtype=np.float32), "bias": np.arange(8, dtype=np.float32)}
    g = x.astype(np.float64).reshape(2, 5, 4, 2)
    want = (g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + 1e-5)
    want = want.reshape(2, 5, 8) * p["scale"] + p["bias"]
    np.testing.assert_allclose(models.group_norm(p, jnp.asarray(x), 4), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pre_layer_norm, tie", [(False, True), (True, False)])
def test_bert_shapes_names_and_padding(pre_layer_norm, tie):
    m = models.bert(50, 12, hidden=16, layers=2, heads=2, pre_layer_norm=pre_layer_norm, tie_embeddings=tie)
    p = m.init(jax.random.key(0))
    names = models.layer_names(p)
    assert "encoder_0/attention/query/kernel" in names and "encoder_1/mlp/dense_out/kernel" in names
    assert ("mlm_head/output_bias" in names) == tie and ("mlm_head/decoder/kernel" in names) == (not tie)
    ids = jax.random.randint(jax.random.key(1), (2, 8), 5, 50)
    apply = jax.jit(m.apply)
    logits = apply(p, ids)
    assert logits.shape == (2, 8, 50)
    # appending [PAD] tokens (masked out of attention) leaves the real positions' logits unchanged
    padded = jnp.concatenate([ids, jnp.zeros((2, 4), ids.dtype)], axis=1)
    np.testing.assert_allclose(apply(p, padded)[:, :8], logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        m.apply(p, jnp.ones((1, 13), jnp.int32))


def test_bert_masked_head_gives_the_full_heads_loss():
    m = models.bert(40, 20, hidden=16, layers=1, heads=2)
    p = m.init(jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (3, 20), 5, 40)
    # 3 labelled positions per sequence (BERT's 15%), at different places in each sequence
    positions = jnp.array([[1, 5, 11], [0, 2, 19], [7, 8, 9]])
    chosen = jnp.zeros((3, 20), bool).at[jnp.arange(3)[:, None], positions].set(True)
    labels = jnp.where(chosen, ids, -100)

    @jax.jit
    def both(p, ids, labels):
        return models.loss_sums(m.apply(p, ids), labels), models.loss_sums(*m.apply_masked(p, ids, labels))

    full, masked = both(p, ids, labels)
    assert float(masked["count"]) == float(full["count"]) == float(chosen.sum())
    assert float(masked["loss"]) == pytest.approx(float(full["loss"]), rel=1e-5)
    assert float(masked["correct"]) == float(full["correct"])
    # more labels than the gathered positions (ceil(0.2 * 20) = 4): NaN, never silently dropped labels
    _, overflow = both(p, ids, jnp.where(jnp.arange(20) < 6, ids, -100))
    assert math.isnan(float(overflow["loss"]))


def test_loss_sums_against_numpy_with_ignored_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3, 7)).astype(np.float32)
    labels = np.array([[1, -100, 6], [0, 2, -100], [-1, 3, 3], [5, 5, 5]], np.int32)
    s = models.loss_sums(jnp.asarray(logits), jnp.asarray(labels))
    z = logits.astype(np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    valid = labels >= 0
    nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    assert float(s["count"]) == valid.sum()
    assert float(s["loss"]) == pytest.approx(nll[valid].sum(), rel=1e-5)
    assert float(s["correct"]) == ((z.argmax(-1) == labels) & valid).sum()


def _signal_task(k):
    # a learnable 4-class task: the class is the segment (of four) with the largest mean
    x = jax.random.normal(k, (32, 40))
    return x, jnp.argmax(x.reshape(32, 4, 10).mean(-1), axis=-1)


def _frequency_task(k):
    # a translation-invariant 4-class task for the convolutional net: the frequency of a noisy sine wave
    k1, k2, k3 = jax.random.split(k, 3)
    y = jax.random.randint(k1, (32,), 0, 4)
    phase = jax.random.uniform(k2, (32, 1), maxval=2 * jnp.pi)
    t = jnp.arange(40) / 40
    x = jnp.sin(2 * jnp.pi * jnp.array([1.0, 2.0, 4.0, 8.0])[y][:, None] * t + phase)
    return x + 0.3 * jax.random.normal(k3, x.shape), y


def _token_task(k):
    x = jax.random.randint(k, (8, 8), 5, 30)
    return x, x  # predict the token itself


@pytest.mark.parametrize("make, task", [
    (lambda: models.mlp(40, [32], 4), _signal_task),
    (lambda: models.resnet((40,), 4, widths=(8,), groups=4), _frequency_task),
    (lambda: models.bert(30, 8, hidden=16, layers=1, heads=2), _token_task),
])
def test_loss_decreases_over_a_few_steps(make, task):
    m = make()
    x, y = task(jax.random.key(1))
    params = m.init(jax.random.key(0))
    tx = optax.adam(1e-2)
    state = tx.init(params)

    def loss(p):
        s = models.loss_sums(m.apply(p, x), y)
        return s["loss"] / s["count"]

    @jax.jit
    def step(p, state):
        value, g = jax.value_and_grad(loss)(p)
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state, value

    losses = []
    for _ in range(15):
        params, state, value = step(params, state)
        losses.append(float(value))
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("call, match", [
    (lambda: models.mlp(0, [4], 2), "input_dim"),
    (lambda: models.mlp(4, 8, 2), "hidden"),
    (lambda: models.mlp(4, [8], 2, activation="swish"), "activation"),
    (lambda: models.resnet((40,), 10, widths=(6,), groups=4), "divisible"),
    (lambda: models.resnet((4, 4, 4, 4), 10), "input_shape"),
    (lambda: models.bert(10, 8, hidden=10, heads=3), "divisible"),
])
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
