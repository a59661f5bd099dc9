"""train.fit: accumulation = large batch, resume = uninterrupted, sharded = unsharded (8 simulated devices, in a
subprocess), recorded trust ratios and learning rates against independent computations, result files."""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import optax
import pytest

from _jax_devices import run_on_cpu_devices
from lamb import jax as lj
from lamb import reference
from lamb.experiments import data, models, schedules, train


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", seed=0)


@pytest.fixture(scope="module")
def mlp():
    return models.mlp(64, [32, 16], 10)


def _assert_trees_close(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_accumulation_equals_the_large_batch_step(digits, mlp):
    tx = lj.lamb(0.01, weight_decay=0.01)
    kw = dict(batch_size=256, steps=4, eval_every=2, progress=False)
    big = train.fit(mlp, tx, digits, **kw)
    acc = train.fit(mlp, tx, digits, accumulation_steps=4, **kw)
    _assert_trees_close(acc.params, big.params, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(acc.history["loss"], big.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(acc.history["test_accuracy"], big.history["test_accuracy"])
    for name in big.history["trust_ratio"]:
        np.testing.assert_allclose(acc.history["trust_ratio"][name], big.history["trust_ratio"][name], rtol=1e-4)


def test_resume_ends_like_an_uninterrupted_run(digits, mlp, tmp_path):
    lr = schedules.warmup_polynomial_decay(0.02, 2, 9)
    tx = lj.lamb(lr, weight_decay=0.01)
    kw = dict(batch_size=128, steps=9, eval_every=3, progress=False, learning_rate=lr)  # 11 batches per epoch
    whole = train.fit(mlp, tx, digits, **kw)

    class Interrupted(Exception):
        pass

    def close_the_tab(step, params, opt_state):
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train.fit(mlp, tx, digits, checkpoint_dir=tmp_path, checkpoint_every=2, callback=close_the_tab, **kw)
    resumed = train.fit(mlp, tx, digits, checkpoint_dir=tmp_path, checkpoint_every=2, **kw)
    assert resumed.resumed_from == 4
    for x, y in zip(jax.tree.leaves((whole.params, whole.opt_state)), jax.tree.leaves((resumed.params,
                                                                                       resumed.opt_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for key in ("step", "loss", "accuracy", "learning_rate", "eval_step", "test_loss", "test_accuracy"):
        np.testing.assert_array_equal(resumed.history[key], whole.history[key], err_msg=key)
    for name in whole.history["trust_ratio"]:
        np.testing.assert_array_equal(resumed.history["trust_ratio"][name], whole.history["trust_ratio"][name])
    # a checkpoint of another configuration is refused, not silently continued
    with pytest.raises(ValueError, match="another configuration"):
        train.fit(mlp, tx, digits, checkpoint_dir=tmp_path, **{**kw, "batch_size": 64})


def test_recorded_trust_ratios_and_learning_rates_match_the_reference(digits, mlp):
    lr = schedules.warmup_polynomial_decay(0.05, 1, 3, init_value=0.01)
    result = train.fit(mlp, lj.lamb(lr, weight_decay=0.01), digits, batch_size=128, steps=2, progress=False,
                       learning_rate=lr)
    np.testing.assert_allclose(result.history["learning_rate"], [0.01, 0.05], rtol=1e-6)
    # step 1 by the float64 reference, on the gradient of the same first batch at the same initial weights
    params0 = mlp.init(jax.random.key(0))
    x, y = next(data.batch_stream(digits.x_train, digits.y_train, batch_size=128, seed=0))

    def loss(p):
        s = models.loss_sums(mlp.apply(p, x), y)
        return s["loss"] / s["count"]

    grads = jax.grad(loss)(params0)
    names = models.layer_names(params0)
    as64 = [np.asarray(a, np.float64) for a in jax.tree.leaves(params0)]
    state, _ = reference.lamb(None, as64, [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)], lr=0.01,
                              weight_decay=0.01)
    recorded = [result.history["trust_ratio"][n][0] for n in names]
    np.testing.assert_allclose(recorded, state["trust_ratio"], rtol=1e-4)
    assert sorted(result.history["trust_ratio"]) == sorted(names)
    # optimizers without trust ratios record none
    adam = train.fit(mlp, optax.adam(1e-3), digits, batch_size=128, steps=1, progress=False)
    assert adam.history["trust_ratio"] == {}


def test_inject_hyperparams_learning_rate_is_recorded(digits, mlp):
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=optax.linear_schedule(0.1, 0.0, 4))
    result = train.fit(mlp, tx, digits, batch_size=256, steps=3, progress=False)
    np.testing.assert_allclose(result.history["learning_rate"], [0.1, 0.075, 0.05], rtol=1e-6)


def test_result_file_and_epochs(digits, mlp, tmp_path):
    path = tmp_path / "runs" / "r.json"
    result = train.fit(mlp, optax.adamw(1e-3), digits, batch_size=512, epochs=2, eval_every=2, progress=False,
                       result_path=path, config={"optimizer": "adamw", "lr": 1e-3})
    assert result.config["steps"] == 2 * (digits.num_train // 512)
    saved = train.load_result(path)
    assert saved["config"]["optimizer"] == "adamw" and saved["config"]["model"]["hidden"] == [32, 16]
    for key in ("device_kind", "device_count", "jax", "optax", "numpy", "date", "steps_per_second"):
        assert key in saved["environment"], key
    np.testing.assert_array_equal(saved["history"]["loss"], result.history["loss"])
    np.testing.assert_array_equal(saved["history"]["eval_step"], [0, 2, 4])
    assert json.loads(path.read_text())["environment"]["jax"] == jax.__version__
    # the test split is evaluated whole: the accuracy is a multiple of 1 / num_test
    acc = result.history["test_accuracy"] * digits.num_test
    np.testing.assert_allclose(acc, np.round(acc), atol=1e-6)


def test_bert_on_masked_language_modelling(tiny_mlm):
    mlm = tiny_mlm
    model = models.bert(mlm.vocab_size, 16, hidden=16, layers=1, heads=2)
    result = train.fit(model, lj.lamb(1e-2), mlm, batch_size=8, steps=6, eval_every=3, eval_batches=2,
                       progress=False)
    assert np.isfinite(result.history["loss"]).all() and np.isfinite(result.history["test_loss"]).all()
    assert result.history["test_loss"][-1] < result.history["test_loss"][0]
    assert "encoder_0/attention/query/kernel" in result.history["trust_ratio"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=64), "exactly one of steps and epochs"),
    (dict(batch_size=64, steps=2, epochs=1), "exactly one of steps and epochs"),
    (dict(batch_size=100, steps=2, accumulation_steps=3), "divisible"),
    (dict(batch_size=0, steps=2), "batch_size"),
    (dict(batch_size=10_000, steps=2), "exceeds"),
    (dict(batch_size=64, steps=2, devices=99), "devices"),
])
def test_bad_arguments(digits, mlp, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.fit(mlp, optax.sgd(0.1), digits, progress=False, **kwargs)


def test_bad_data_type(mlp):
    with pytest.raises(TypeError, match="Dataset"):
        train.fit(mlp, optax.sgd(0.1), [1, 2, 3], batch_size=1, steps=1, progress=False)


# --------------------------------------------------------------------------------------------------
# Data parallelism on 8 simulated CPU devices: XLA_FLAGS must be set before JAX starts, so the check runs
# in a fresh process (this file as a script).

DEVICES = 8


def test_sharded_run_equals_the_single_device_run():
    stdout = run_on_cpu_devices(__file__, DEVICES)
    assert "sharded == single device" in stdout, stdout


def _sharded_main():
    assert len(jax.devices()) == DEVICES, jax.devices()
    ds = data.load("digits", seed=0)
    model = models.mlp(64, [32, 16], 10)
    tx = lj.lamb(0.01, weight_decay=0.01)
    kw = dict(batch_size=128, steps=4, eval_every=2, progress=False, eval_batch_size=96)
    single = train.fit(model, tx, ds, devices=1, **kw)
    for accumulation in (1, 2):
        sharded = train.fit(model, tx, ds, devices=None, accumulation_steps=accumulation, **kw)
        assert sharded.environment["device_count"] == DEVICES
        _assert_trees_close(sharded.params, single.params, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(sharded.history["loss"], single.history["loss"], rtol=1e-5)
        np.testing.assert_allclose(sharded.history["test_loss"], single.history["test_loss"], rtol=1e-5)
        np.testing.assert_allclose(sharded.history["test_accuracy"], single.history["test_accuracy"])
    print("sharded == single device")


if __name__ == "__main__":
    _sharded_main()


def test_progress_bar_goes_to_the_stream_given(digits, mlp):
    stream = io.StringIO()
    train.fit(mlp, optax.adam(1e-3), digits, batch_size=128, steps=2, progress=stream)
    assert "2/2" in stream.getvalue()
    with pytest.raises(TypeError, match="progress must be"):
        train.fit(mlp, optax.adam(1e-3), digits, batch_size=128, steps=1, progress="stdout")
