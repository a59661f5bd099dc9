"""Tests of lamb.experiments.ablation: aggregation over seeds, the spread comparison, the image task."""

import math

import numpy as np
import pytest

from lamb.experiments import ablation


def _fake_train(offsets):
    """A deterministic 'training run': a curve per config whose final value is offset + seed noise."""
    def train(config, seed):
        steps = np.array([10, 20, 30])
        final = offsets[config] + 0.01 * seed
        return {"step": steps, "acc": np.array([0.0, final / 2, final])}
    return train


def test_run_collects_every_config_and_seed():
    offsets = {"a": 0.5, "b": 0.7}
    result = ablation.run({"A": "a", "B": "b"}, seeds=[0, 1, 2], train=_fake_train(offsets))
    assert result.names == ["A", "B"] and result.seeds == [0, 1, 2]
    curves = result.curves("acc")
    assert curves["A"].shape == (3, 3)
    np.testing.assert_allclose(result.final("acc")["B"], [0.7, 0.71, 0.72])
    s = result.summary("acc")["A"]
    np.testing.assert_allclose([s["mean"], s["min"], s["max"]], [0.51, 0.5, 0.52])
    np.testing.assert_allclose(s["std"], 0.01)  # sample std of {0, 0.01, 0.02}
    only_b = result.select(["B"])
    assert only_b.names == ["B"] and set(only_b.histories) == {"B"}
    with pytest.raises(KeyError, match="unknown configurations"):
        result.select(["C"])


def test_spread_matches_scipy_anova_and_ranges():
    from scipy import stats

    rng = np.random.default_rng(0)
    finals = {"A": rng.normal(0.5, 0.02, 4), "B": rng.normal(0.52, 0.02, 4), "C": rng.normal(0.6, 0.02, 4)}

    def train(config, seed):
        return {"step": np.array([1]), "acc": np.array([finals[config][seed]])}

    result = ablation.run({k: k for k in finals}, seeds=range(4), train=train)
    spread = result.spread("acc")
    f, p = stats.f_oneway(*finals.values())
    np.testing.assert_allclose([spread["f_statistic"], spread["p_value"]], [f, p], rtol=1e-10)
    means = [v.mean() for v in finals.values()]
    np.testing.assert_allclose(spread["between_range"], max(means) - min(means))
    np.testing.assert_allclose(spread["within_range"], max(v.max() - v.min() for v in finals.values()))
    pooled = math.sqrt(sum(((v - v.mean()) ** 2).sum() for v in finals.values()) / (12 - 3))
    np.testing.assert_allclose(spread["within_std"], pooled)
    assert spread["exceeds_seed_noise"] == float(p < 0.05)


def test_identical_configs_do_not_exceed_seed_noise():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.02, 5)

    def train(config, seed):  # the same distribution for every config: only seed noise
        return {"step": np.array([1]), "acc": np.array([0.8 + noise[seed] + 1e-4 * (config == "b")])}

    spread = ablation.run({"a": "a", "b": "b"}, seeds=range(5), train=train).spread("acc")
    assert spread["p_value"] > 0.5 and spread["exceeds_seed_noise"] == 0.0


def test_bad_input_is_named():
    train = _fake_train({"a": 0.5})
    with pytest.raises(ValueError, match="configs"):
        ablation.run({}, seeds=[0], train=train)
    with pytest.raises(ValueError, match="distinct"):
        ablation.run({"A": "a"}, seeds=[0, 0], train=train)
    with pytest.raises(KeyError, match="unknown metric"):
        ablation.run({"A": "a"}, seeds=[0], train=train).curves("loss")
    with pytest.raises(ValueError, match="two configurations"):
        ablation.run({"A": "a"}, seeds=[0, 1], train=train).spread("acc")
    with pytest.raises(ValueError, match="eval_every"):
        ablation.ImageTask(np.zeros((8, 2)), np.zeros(8, int), np.zeros((2, 2)), np.zeros(2, int),
                           steps=10, eval_every=3, batch_size=4)


@pytest.fixture(scope="module")
def task():
    return ablation.ImageTask.mnist1d(num_samples=1000, hidden=(32,), steps=40, batch_size=100, eval_every=20)


def test_vectorized_training_equals_one_seed_at_a_time(task):
    import optax

    tx = optax.adam(1e-2)
    together = task.train_seeds(tx, [3, 4])
    alone = [task.train(tx, 3), task.train(tx, 4)]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a["step"], [20, 40])
        np.testing.assert_allclose(a["epoch"], [20 * 100 / 800, 40 * 100 / 800])
        np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"], atol=2e-3)
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-4)
    # Different seeds give different runs (initial weights and batch order).
    assert not np.allclose(together[0]["train_loss"], together[1]["train_loss"])


def test_image_task_learns_and_matches_a_hand_written_sgd_loop(task):
    import jax
    import optax

    lr = 0.1
    histories, params = task.train_seeds(optax.sgd(lr), [0], return_params=True)
    assert histories[0]["train_loss"][-1] < histories[0]["train_loss"][0]
    assert histories[0]["test_accuracy"][-1] > 0.15  # above chance (0.1) after 40 SGD steps
    # The same 40 steps written out: same init, same batch order (a permutation per epoch), plain SGD.
    p = task.init_params(0)
    n = len(task.x_train)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 1), 5)
    order = np.concatenate([np.asarray(jax.random.permutation(k, n)) for k in keys])[:4000].reshape(40, 100)
    for idx in order:
        g = jax.grad(task.loss)(p, task.x_train[idx], task.y_train[idx])
        p = jax.tree_util.tree_map(lambda x, gx: x - lr * gx, p, g)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(np.asarray(b)[0], np.asarray(a), rtol=1e-4, atol=1e-5)


def test_run_vectorized_equals_run(task):
    import optax

    configs = {"sgd": optax.sgd(0.1), "adam": optax.adam(1e-2)}
    a = ablation.run_vectorized(configs, [0, 1], task.train_seeds)
    b = ablation.run(configs, [0, 1], task.train)
    for name in configs:
        np.testing.assert_allclose(a.curves("train_loss")[name], b.curves("train_loss")[name], rtol=1e-4)


def test_validation_split_holds_out_part_of_the_training_set(task):
    val = task.validation_split(0.25)
    assert len(val.x_train) == 600 and len(val.x_test) == 200
    # Validation and training examples come from the original training set and do not overlap.
    rows = {r.tobytes() for r in task.x_train}
    assert all(r.tobytes() in rows for r in val.x_test)
    assert not ({r.tobytes() for r in val.x_train} & {r.tobytes() for r in val.x_test})
    with pytest.raises(ValueError, match="fraction"):
        task.validation_split(1.5)
