"""lamb.experiments.scaling: the critical-batch fit recovers known values, steps to target for curves that never
reach it, the tuned trial, regions, the learning-rate exponent, the MLPerf points file, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lamb.experiments import metrics, scaling

LADDER = np.array([32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=float)


@pytest.mark.parametrize("b_crit, s_min", [(300.0, 50.0), (2000.0, 12.0), (90.0, 400.0)])
def test_fit_recovers_a_known_critical_batch(b_crit, s_min):
    steps = s_min * (1 + b_crit / LADDER)
    fit = scaling.fit_critical_batch(LADDER, steps)
    assert fit.bound is None
    np.testing.assert_allclose([fit.b_crit, fit.s_min], [b_crit, s_min], rtol=1e-4)
    np.testing.assert_allclose(fit.e_min, s_min * b_crit, rtol=1e-4)
    np.testing.assert_allclose(fit.steps(LADDER), steps, rtol=1e-4)
    # McCandlish et al.'s trade-off: (S/S_min - 1)(E/E_min - 1) = 1
    np.testing.assert_allclose((fit.steps(LADDER) / fit.s_min - 1) * (fit.examples(LADDER) / fit.e_min - 1), 1.0,
                               rtol=1e-6)


def test_fit_with_noise_and_unreached_points():
    rng = np.random.default_rng(0)
    steps = 80 * (1 + 500 / LADDER) * np.exp(rng.normal(0, 0.03, LADDER.size))
    steps[0] = math.inf  # the smallest batch never reached the target within its budget
    fit = scaling.fit_critical_batch(LADDER, steps)
    assert fit.points == LADDER.size - 1
    assert 400 < fit.b_crit < 620


def test_fit_reports_bounds_outside_the_ladder():
    perfect = 1e5 / LADDER  # halving at every doubling: the ladder never leaves perfect scaling
    fit = scaling.fit_critical_batch(LADDER, perfect)
    assert fit.bound == "above" and fit.b_crit > 100 * LADDER.max()
    flat = np.full(LADDER.size, 30.0)  # no reduction at all
    assert scaling.fit_critical_batch(LADDER, flat).bound == "below"


def test_bootstrap_interval_covers_the_truth_and_narrows_with_seed_agreement():
    rng = np.random.default_rng(1)
    truth = 60 * (1 + 700 / LADDER)
    seeds = [t * np.exp(rng.normal(0, 0.05, 5)) for t in truth]
    samples = scaling.bootstrap_critical_batch(LADDER, seeds, samples=300, seed=0)
    lo, hi = scaling.percentile_interval(samples)
    assert lo < 700 < hi and hi / lo < 2
    exact = scaling.bootstrap_critical_batch(LADDER, [[t] * 3 for t in truth], samples=20)
    np.testing.assert_allclose(exact, 700, rtol=1e-4)


def test_steps_to_target_for_curves_that_never_reach_it():
    steps = np.array([10, 20, 30, 40])
    assert math.isinf(metrics.steps_to_target(steps, [0.1, 0.2, 0.3, 0.35], 0.5))
    assert math.isinf(metrics.steps_to_target(steps, [0.1, np.nan, np.nan, np.nan], 0.5))  # diverged
    assert math.isinf(metrics.steps_to_target(steps, [3.0, 2.5, 2.2, 2.1], 2.0, higher_is_better=False))
    assert metrics.steps_to_target(steps, [3.0, 2.5, 1.9, 2.1], 2.0, higher_is_better=False) == 30
    # never reached counts as never reached: not chosen, median inf when most seeds never get there
    assert scaling.choose_trial([1e-3, 1e-2], [math.inf, math.inf]) is None
    assert scaling.choose_trial([1e-3, 1e-2, 1e-1], [math.inf, 40, 60]) == 1
    summary = scaling.seed_summary([30, math.inf, math.inf])
    assert math.isinf(summary["median"]) and summary["reached"] == 1 and summary["min"] == 30


def test_choose_trial_breaks_ties_by_score_then_smaller_rate():
    assert scaling.choose_trial([1e-3, 1e-2, 1e-1], [40, 40, 60], [0.81, 0.85, 0.9]) == 1
    assert scaling.choose_trial([1e-3, 1e-2, 1e-1], [40, 40, 60], [0.85, 0.85, 0.9]) == 0
    assert scaling.choose_trial([1e-3, 1e-2], [40, 40], [2.0, 1.5], higher_is_better=False) == 1
    assert scaling.choose_trial([1e-3, 1e-2], [40, 40], [np.nan, 0.5]) == 1  # a NaN score loses


def test_regions_read_off_the_data():
    b = [32, 64, 128, 256, 512]
    s = [1000, 500, 300, 280, 280]
    assert scaling.regions(b, s) == ["perfect", "diminishing", "maximal", "maximal"]
    assert scaling.regions([32, 64, 128], [math.inf, 50, 40]) == ["unknown", "diminishing"]


def test_learning_rate_exponent_and_monotonicity_check():
    b = LADDER
    np.testing.assert_allclose(scaling.learning_rate_exponent(b, 1e-3 * b), 1.0)
    np.testing.assert_allclose(scaling.learning_rate_exponent(b, 1e-3 * np.sqrt(b)), 0.5)
    ok = [[100, 110, 120], [60, 70, 65], [60, 55, 62]]
    assert scaling.steps_never_rise([32, 64, 128], ok) == []
    bad = [[100, 110, 120], [200, 210, 190]]
    assert len(scaling.steps_never_rise([32, 64], bad)) == 1
    assert scaling.steps_never_rise([32, 64], bad, resolution=[10, 100]) == []


def test_budget():
    assert scaling.budget(32, examples=64_000, min_steps=100, evaluations=40) == (2000, 50)
    assert scaling.budget(4096, examples=64_000, min_steps=100, evaluations=40) == (100, 2)
    assert scaling.budget(32, examples=64_000, min_steps=100, evaluations=40, max_steps=500) == (500, 12)


def test_optimizer_factories_build_and_are_shared():
    import jax
    import jax.numpy as jnp

    params = {"dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}, "norm": {"scale": jnp.ones(2)}}
    mask = scaling.decay_mask(params)
    assert mask == {"dense_0": {"kernel": True, "bias": False}, "norm": {"scale": False}}
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    for name in scaling.OPTIMIZERS:
        make_tx = scaling.optimizer(name, weight_decay=0.1)
        assert scaling.optimizer(name, weight_decay=0.1) is make_tx
        tx = make_tx(lambda count: 0.01)
        updates, _ = tx.update(grads, tx.init(params), params)
        assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))
    # biases get no weight decay: with zero gradients only the kernels move
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = scaling.optimizer("nesterov", weight_decay=0.1)(lambda count: 0.01)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert np.all(np.asarray(updates["dense_0"]["bias"]) == 0) and np.all(np.asarray(updates["norm"]["scale"]) == 0)
    assert np.all(np.asarray(updates["dense_0"]["kernel"]) < 0)


def test_mlperf_reference_points_parse_with_units_and_monotone_batch():
    rcps = scaling.load_mlperf_rcps()
    assert set(rcps) == {"resnet50_lars", "bert_large_lamb"}
    resnet, bert = rcps["resnet50_lars"], rcps["bert_large_lamb"]
    assert resnet["unit"] == "epochs" and bert["unit"] == "samples"
    assert resnet["optimizer"] == "LARS" and bert["optimizer"] == "LAMB"
    for entry in rcps.values():
        assert np.all(np.diff(entry["batch_size"]) > 0)
        assert entry["source"]["repository"] == "https://github.com/mlcommons/logging"
        assert len(entry["source"]["commit"]) == 40
        assert all(len(v) >= 10 for v in entry["values"])
        np.testing.assert_allclose(entry["steps"] * entry["batch_size"], entry["examples"])
    assert resnet["batch_size"][0] == 1632 and resnet["batch_size"][-1] == 67840
    assert bert["batch_size"][0] == 256 and bert["batch_size"][-1] == 16384
    # epochs are tens, samples millions: the units are what the file says
    assert 30 < resnet["mean"].min() and resnet["mean"].max() < 100
    assert 1e6 < bert["mean"].min() and bert["mean"].max() < 1e7
    # converted: 35 epochs of ImageNet at batch 1632 are ~27,500 steps
    np.testing.assert_allclose(resnet["steps"][0], resnet["mean"][0] * 1281167 / 1632)
    assert 27000 < resnet["steps"][0] < 28000
    # the steps to target never rise with the batch in either table, and the fit runs
    assert np.all(np.diff(resnet["steps"]) < 0) and np.all(np.diff(bert["steps"]) < 0)
    fit = scaling.fit_critical_batch(resnet["batch_size"], resnet["steps"])
    assert fit.bound is None and 1e4 < fit.b_crit < 1e5


@pytest.mark.parametrize("call, match", [
    (lambda: scaling.fit_critical_batch([32, 64], [10, 5]), ">= 3 distinct batch sizes"),
    (lambda: scaling.fit_critical_batch([32, 64, 128], [10, 5]), "same length"),
    (lambda: scaling.fit_critical_batch([32, 0, 128], [10, 5, 3]), "batch sizes must be positive"),
    (lambda: scaling.fit_critical_batch([32, 64, 128], [10, -5, 3]), "steps must be positive"),
    (lambda: scaling.fit_critical_batch([32, 64, 128], [10, np.nan, 3]), "steps must be positive"),
    (lambda: scaling.fit_critical_batch([32, 64, 128, 256], [10, math.inf, math.inf, 3]), ">= 3 distinct"),
    (lambda: scaling.choose_trial([1e-3], [10, 20]), "same length"),
    (lambda: scaling.seed_summary([]), "non-empty"),
    (lambda: scaling.regions([64, 32], [1, 2]), "increasing"),
    (lambda: scaling.regions([32, 64], [2, 1], perfect=0.1, maximal=0.5), "maximal < perfect"),
    (lambda: scaling.percentile_interval([np.nan]), "no finite samples"),
    (lambda: scaling.percentile_interval([1.0], level=1.5), "level"),
    (lambda: scaling.budget(0, examples=10, min_steps=1, evaluations=1), "batch_size"),
    (lambda: scaling.optimizer("sgd", weight_decay=0.0), "optimizer must be one of"),
    (lambda: scaling.optimizer("lamb", weight_decay=-1.0), "weight_decay"),
    (lambda: scaling.learning_rate_exponent([32, 64], [np.nan, 1e-3]), ">= 2 distinct"),
    (lambda: scaling.bootstrap_critical_batch([32, 64, 128], [[1], [2]]), "one sequence per batch size"),
])
def test_bad_inputs_get_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_never_reached_points_are_violations_or_inconclusive_never_skipped():
    inf = math.inf
    seed_steps = [[100, 110, 120], [inf, inf, 90], [50, 55, 60]]
    # batch 64's median never reached: with a budget longer than the bound (120 + 10) it is a violation ...
    out = scaling.check_steps_never_rise([32, 64, 128], seed_steps, [10, 10, 10], budgets=[500, 250, 125])
    assert len(out["violations"]) == 1 and "never reached" in out["violations"][0] and out["inconclusive"] == []
    assert scaling.steps_never_rise([32, 64, 128], seed_steps, [10, 10, 10], budgets=[500, 250, 125]) == \
        out["violations"]
    # ... with a shorter budget, inconclusive; without budgets, inconclusive
    out = scaling.check_steps_never_rise([32, 64, 128], seed_steps, [10, 10, 10], budgets=[500, 100, 125])
    assert out["violations"] == [] and len(out["inconclusive"]) == 1
    assert len(scaling.check_steps_never_rise([32, 64, 128], seed_steps)["inconclusive"]) == 1
    # batch 128 is compared with batch 32, the nearest smaller batch that reached the target
    rising = [[100, 110, 120], [inf, inf, inf], [200, 210, 220]]
    out = scaling.check_steps_never_rise([32, 64, 128], rising, budgets=[500, 100, 500])
    assert len(out["violations"]) == 1 and "batch 128" in out["violations"][0] and "batch 32" in out["violations"][0]
    # a smaller batch whose seeds did not all reach it bounds nothing
    assert scaling.steps_never_rise([32, 64], [[100, inf, 90], [inf, inf, inf]], budgets=[500, 500]) == []


def test_frequency_baseline():
    from types import SimpleNamespace

    task = SimpleNamespace(kind="classification", train_labels=np.array([0, 0, 0, 1]),
                           eval_labels=np.array([0, 1, -1]))
    out = scaling.frequency_baseline(task)
    assert out["accuracy"] == 0.5
    np.testing.assert_allclose(out["loss"], -(np.log(0.75) + np.log(0.25)) / 2)
    mlm = SimpleNamespace(kind="mlm", vocab_size=8, train_inputs=np.array([[2, 5, 5, 6, 3, 0]]),
                          eval_labels=np.array([[-100, 5, -100, 6, -100, -100]]))
    out = scaling.frequency_baseline(mlm)  # special tokens (ids < 5) are never labels: frequencies 2/3, 1/3
    assert out["accuracy"] == 0.5
    np.testing.assert_allclose(out["loss"], -(np.log(2 / 3) + np.log(1 / 3)) / 2)


def test_sweep_bank_runs_every_optimizer_with_the_same_grid_shape(tmp_path):
    from lamb.experiments import data, models, vectorized

    ds = data.load("digits", seed=0)
    task = vectorized.image_task(models.mlp(64, [16], 10), ds, eval_examples=200, eval_batch_size=100)
    names = ["lamb", "nesterov"]
    factories = {n: scaling.optimizer(n, weight_decay=1e-4) for n in names}
    assert scaling.optimizer_bank(list(factories.values())) is scaling.optimizer_bank(list(factories.values()))
    kw = dict(target=0.6, seeds=2, examples=3200, min_steps=20, evaluations=10, micro_batch=32,
              cache_dir=tmp_path)
    out = scaling.sweep_bank(task, factories, 3, 10.0, {"lamb": 1e-3, "nesterov": 1e-2}, [32, 64], **kw)
    assert list(out) == names
    for n, r in out.items():
        assert [x.batch_size for x in r.batches] == [32, 64]
        for x in r.batches:
            assert len(x.grid) == 3 and len(x.seed_steps) == 2
            np.testing.assert_allclose(np.diff(np.log10(x.grid)), 1.0)
        assert np.isfinite(r.batches[0].seed_steps).all()  # the digits reach 60% at batch 32
    again = scaling.sweep_bank(task, factories, 3, 10.0, {"lamb": 1e-3, "nesterov": 1e-2}, [32, 64], **kw)
    assert [x.seed_steps for x in again["lamb"].batches] == [x.seed_steps for x in out["lamb"].batches]
    assert len(list(tmp_path.glob("bank-*.json"))) == 2
    with pytest.raises(ValueError, match="grid_start has no rate"):
        scaling.sweep_bank(task, factories, 3, 10.0, {"lamb": 1e-3}, [32], **kw)
