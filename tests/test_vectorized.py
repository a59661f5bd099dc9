"""lamb.experiments.vectorized: trials vectorized = trials alone, accumulation = the large batch, every example
once per epoch, the stop rules, BERT's masking on the device, the noise scale, dry runs, bad arguments."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamb import jax as lj
from lamb.experiments import ablation, data, gradient_noise, metrics, models, vectorized


@pytest.fixture(scope="module")
def task():
    ds = data.load("digits", seed=0)
    return vectorized.image_task(models.mlp(64, [32], 10), ds, eval_examples=300, eval_batch_size=128)


def _lamb(lr):
    return lj.lamb(lr, weight_decay=0.01)


def _close_trees(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_trials_together_equal_trials_alone(task):
    kw = dict(batch_size=64, steps=12, eval_every=5, warmup_steps=3, stop=None)
    both = vectorized.run(task, _lamb, [3e-3, 3e-2], [0, 1], **kw)
    assert both.trials == [(3e-3, 0), (3e-3, 1), (3e-2, 0), (3e-2, 1)]
    np.testing.assert_array_equal(both.steps, [5, 10, 12])  # the last chunk is shorter
    alone = vectorized.run_trials(task, _lamb, [(3e-2, 1)], **kw)
    for k in ("train_loss", "test_loss", "test_accuracy"):
        np.testing.assert_allclose(both.history(3e-2, 1)[k], alone.histories[0][k], rtol=2e-5)
    _close_trees(jax.tree.map(lambda a: a[3], both.params), jax.tree.map(lambda a: a[0], alone.params),
                 rtol=2e-5, atol=1e-6)
    # different seeds and rates give different runs
    assert not np.allclose(both.histories[0]["test_loss"], both.histories[1]["test_loss"])
    assert all(np.isfinite(h["test_loss"]).all() for h in both.histories)


def test_accumulated_micro_batches_equal_the_large_batch(task):
    kw = dict(batch_size=64, steps=6, eval_every=3, warmup_steps=2, stop=None)
    whole = vectorized.run(task, _lamb, [1e-2], [0], **kw)
    micro = vectorized.run(task, _lamb, [1e-2], [0], micro_batch=16, **kw)
    _close_trees(micro.params, whole.params, rtol=5e-5, atol=1e-6)
    np.testing.assert_allclose(micro.histories[0]["test_loss"], whole.histories[0]["test_loss"], rtol=1e-5)


def _counting_task(num_train):
    """A linear model on one-hot inputs (example i has input e_i) whose weights start at zero: with plain SGD
    and a tiny rate, row i of the kernel moves by (a multiple of) the number of times example i was used."""
    x = np.eye(num_train, dtype=np.float32)
    y = np.zeros(num_train, np.int32)
    ds = data.Dataset("onehot", x, y, x[:4], y[:4], num_classes=2)

    def init(key):
        return {"kernel": jnp.zeros((num_train, 2), jnp.float32)}

    model = models.Model("linear", init, lambda p, x: x @ p["kernel"], {"model": "linear"})
    return vectorized.image_task(model, ds)


@pytest.mark.parametrize("num_train, batch_size, micro_batch, steps, eval_every", [
    (60, 12, 4, 5, 3),     # exactly one epoch, chunks not aligned with the epoch
    (60, 8, 8, 8, 3),      # one epoch and 4 examples: a micro-batch straddles the epoch boundary
    (48, 16, 8, 9, 4),     # three epochs
])
def test_every_example_once_per_epoch(num_train, batch_size, micro_batch, steps, eval_every):
    task = _counting_task(num_train)
    lr = 1e-4
    result = vectorized.run(task, optax.sgd, [lr], [3], batch_size=batch_size, micro_batch=micro_batch,
                            steps=steps, eval_every=eval_every, schedule="constant", stop=None)
    kernel = np.asarray(result.params["kernel"][0], np.float64)
    # one use of example i moves row i by -lr * (p - e_0) / batch_size = lr * (0.5, -0.5) / batch_size
    counts = -kernel[:, 1] / (0.5 * lr / batch_size)
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)
    counts = np.round(counts).astype(int)
    seen = steps * batch_size
    assert counts.sum() == seen
    full, rest = divmod(seen, num_train)
    assert counts.min() == full and counts.max() == full + (rest > 0) and np.sum(counts > full) == rest


def test_stop_rules_and_steps_to_target(task):
    kw = dict(batch_size=64, steps=200, eval_every=10, warmup_steps=5, target=0.8)
    grid = [1e-4, 1e-2, 3e-2]
    every = vectorized.run(task, _lamb, grid, [0], stop=None, **kw)
    s_every = every.steps_to_target()
    assert math.isinf(s_every[0])  # 1e-4 for 200 steps never gets there: inf, never a number
    assert np.isfinite(s_every[1:]).all()
    first = int(np.nanmin(s_every))
    anyone = vectorized.run(task, _lamb, grid, [0], stop="any", **kw)
    assert anyone.stopped_early and anyone.steps[-1] == first
    np.testing.assert_array_equal(anyone.steps_to_target(), np.where(s_every == first, first, np.inf))
    reached = vectorized.run(task, _lamb, grid[1:], [0], stop="all", **kw)
    assert reached.steps[-1] == int(s_every[1:].max())
    # the history is read by metrics.steps_to_target like a train.fit history
    h = every.histories[1]
    assert metrics.steps_to_target(h[metrics.step_key("test_accuracy")], h["test_accuracy"], 0.8) == s_every[1]
    result = every.ablation()
    assert isinstance(result, ablation.AblationResult) and result.names == ["lr=0.0001", "lr=0.01", "lr=0.03"]
    assert result.final("test_accuracy")["lr=0.03"].shape == (1,)


def test_divergence_stops_and_is_never_a_number(task):
    result = vectorized.run(task, optax.sgd, [1e6], [0], batch_size=32, steps=100, eval_every=5,
                            schedule="constant", target=0.5)
    assert result.stopped_early and result.steps[-1] < 100
    assert not np.isfinite(result.histories[0]["test_loss"][-1])
    assert math.isinf(result.steps_to_target()[0])


def test_json_round_trip(task):
    result = vectorized.run(task, _lamb, [1e-2], [0, 1], batch_size=32, steps=4, eval_every=2, target=0.5)
    back = vectorized.VectorizedResult.from_json(result.to_json())
    assert back.trials == result.trials and back.config == result.config
    np.testing.assert_allclose(back.histories[1]["test_loss"], result.histories[1]["test_loss"])


def test_dry_run_trains_one_trial_two_steps(task, monkeypatch):
    monkeypatch.setenv("LAMB_DRY_RUN", "1")
    result = vectorized.run(task, _lamb, [1e-3, 1e-2], [0, 1, 2], batch_size=64, steps=500, eval_every=50)
    assert len(result.trials) == 1 and result.steps[-1] == 2


def test_mask_tokens_on_device_follows_berts_rule():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 500, size=(400, 64)).astype(np.int32)
    tokens[:, 0], tokens[:, -1], tokens[:40, 50:] = 2, 3, 0  # [CLS], [SEP], padding
    inputs, labels = vectorized.mask_tokens_on_device(jax.random.PRNGKey(0), jnp.asarray(tokens), vocab_size=500)
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    chosen = labels != -100
    maskable = (tokens >= 5).sum(axis=1)
    np.testing.assert_array_equal(chosen.sum(axis=1), np.maximum(1, np.round(0.15 * maskable)))
    assert not chosen[tokens < 5].any()
    np.testing.assert_array_equal(labels[chosen], tokens[chosen])
    np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])
    masked = inputs[chosen] == 4
    kept = inputs[chosen] == tokens[chosen]
    n = chosen.sum()
    assert abs(masked.mean() - 0.8) < 4 * math.sqrt(0.16 / n)
    assert abs(kept.mean() - 0.1 - 1 / 495 * 0.1) < 4 * math.sqrt(0.09 / n)
    assert (inputs[chosen] >= 4).all()


def test_bert_masked_language_model_task(tiny_mlm):
    mlm = tiny_mlm
    model = models.bert(mlm.vocab_size, 16, hidden=16, layers=1, heads=2)
    task = vectorized.mlm_task(model, mlm, eval_sequences=16)
    result = vectorized.run(task, _lamb, [3e-3, 3e-2], [0], batch_size=16, micro_batch=8, steps=30, eval_every=10,
                            warmup_steps=3, noise_scale_trials=1, noise_scale_examples=32)
    assert result.config["metric"] == "test_loss"
    for h in result.histories:
        assert np.isfinite(h["test_loss"]).all() and h["test_loss"][-1] < h["test_loss"][0]
    assert np.isfinite(result.histories[0]["noise_scale"]).all()
    assert "noise_scale" not in result.histories[1]


def test_noise_scale_matches_the_per_example_computation(task):
    n = 64
    fn = jax.jit(vectorized._noise_scale_fn(task, n))
    params = task.model.init(jax.random.PRNGKey(1))
    x, y = vectorized._noise_sample(task, n)
    b_simple, signal, trace = (float(v) for v in fn(params, x, y))

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(task.model.apply(p, xb), yb).mean()

    g = gradient_noise.per_example_gradients(loss, params, np.asarray(x), np.asarray(y))
    trace_unbiased = gradient_noise.trace_covariance(g) * n / (n - 1)
    signal_unbiased = float(np.sum(g.mean(axis=0) ** 2)) - trace_unbiased / n
    np.testing.assert_allclose([trace, signal], [trace_unbiased, signal_unbiased], rtol=2e-4)
    np.testing.assert_allclose(b_simple, trace_unbiased / signal_unbiased, rtol=5e-4)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=100, micro_batch=30), ValueError, "multiple of micro_batch"),
    (dict(batch_size=10_000), ValueError, "exceeds"),
    (dict(stop="first"), ValueError, "stop must be one of"),
    (dict(schedule="cosine"), ValueError, "schedule must be one of"),
    (dict(warmup_steps=10), ValueError, "warmup_steps=10 must be smaller"),
    (dict(metric="accuracy"), ValueError, "metric must be"),
    (dict(target=float("nan")), ValueError, "target must be"),
    (dict(noise_scale_trials=1, noise_scale_examples=1), ValueError, "noise_scale_examples"),
])
def test_bad_arguments(task, kwargs, error, match):
    kw = dict(batch_size=32, steps=10, eval_every=5)
    kw.update(kwargs)
    with pytest.raises(error, match=match):
        vectorized.run(task, _lamb, [1e-2], [0], **kw)


def test_bad_trials_and_tasks(task):
    with pytest.raises(ValueError, match="learning rates must be finite and > 0"):
        vectorized.run(task, _lamb, [0.0], [0], batch_size=32, steps=2, eval_every=1)
    with pytest.raises(ValueError, match="non-empty"):
        vectorized.run(task, _lamb, [], [0], batch_size=32, steps=2, eval_every=1)
    with pytest.raises(TypeError, match="vectorized.Task"):
        vectorized.run("mnist", _lamb, [1e-2], [0], batch_size=32, steps=2, eval_every=1)
    with pytest.raises(TypeError, match="Dataset or"):
        vectorized.task_for(task.model, [1, 2, 3])


def test_variants_train_each_trial_with_its_own_optimizer(task):
    """One program, two optimizers: each trial equals the same trial run with its optimizer alone, and
    ``stop="any"`` waits for a trial of every variant."""
    sgd = lambda lr: optax.sgd(lr, momentum=0.9)  # noqa: E731
    bank = lambda lr, variant: optax.GradientTransformation(  # noqa: E731
        lambda p: (_lamb(lr).init(p), sgd(lr).init(p)),
        lambda g, s, p=None: _select(variant, _lamb(lr).update(g, s[0], p), sgd(lr).update(g, s[1], p)))
    kw = dict(batch_size=64, steps=12, eval_every=4, warmup_steps=2, stop=None)
    both = vectorized.run_trials(task, bank, [(3e-2, 0), (0.1, 1)], variants=[0, 1], **kw)
    assert both.variants == [0, 1]
    alone_lamb = vectorized.run_trials(task, _lamb, [(3e-2, 0)], **kw)
    alone_sgd = vectorized.run_trials(task, sgd, [(0.1, 1)], **kw)
    np.testing.assert_allclose(both.histories[0]["test_loss"], alone_lamb.histories[0]["test_loss"], rtol=2e-5)
    np.testing.assert_allclose(both.histories[1]["test_loss"], alone_sgd.histories[0]["test_loss"], rtol=2e-5)
    # stop="any" with variants: the run goes on until the slower variant has a trial at the target
    kw = dict(batch_size=64, steps=300, eval_every=10, warmup_steps=5, target=0.8)
    free = vectorized.run_trials(task, bank, [(3e-2, 0), (0.01, 0)], variants=[0, 1], stop=None, **kw)
    s = free.steps_to_target()
    assert np.isfinite(s).all() and s[0] != s[1]
    anyone = vectorized.run_trials(task, bank, [(3e-2, 0), (0.01, 0)], variants=[0, 1], stop="any", **kw)
    assert anyone.steps[-1] == max(s)
    np.testing.assert_array_equal(anyone.steps_to_target(), s)
    with pytest.raises(ValueError, match="one int per trial"):
        vectorized.run_trials(task, bank, [(3e-2, 0)], variants=[0, 1], **kw)
    with pytest.raises(ValueError, match="variants"):
        vectorized.run_trials(task, bank, [(3e-2, 0)], variants=[-1], **kw)


def _select(variant, a, b):
    (ua, sa), (ub, sb) = a, b
    return jax.tree.map(lambda x, y: jnp.where(variant == 1, y, x), ua, ub), (sa, sb)
