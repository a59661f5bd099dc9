"""Steps-to-target on synthetic curves whose answer is known in closed form."""

import math

import numpy as np
import pytest

from lamb.experiments import metrics


def test_steps_to_target_on_an_exponential_loss_curve():
    # loss(s) = exp(-s / 100) reaches 0.1 first at s >= 100 ln 10 = 230.26, i.e. at the evaluation step 240
    steps = np.arange(0, 1001, 20)
    loss = np.exp(-steps / 100)
    assert metrics.steps_to_target(steps, loss, 0.1, higher_is_better=False) == 240
    assert metrics.steps_to_target(steps, 1 - loss, 0.9, higher_is_better=True) == 240
    assert metrics.steps_to_target(steps, loss, 1e-9, higher_is_better=False) == math.inf


def test_first_crossing_counts_not_the_last_and_nan_never_reaches():
    steps = [1, 2, 3, 4, 5]
    acc = [0.1, 0.8, 0.5, np.nan, 0.9]
    assert metrics.steps_to_target(steps, acc, 0.75) == 2
    assert metrics.steps_to_target(steps, acc, 0.85) == 5


def test_scaling_curve_of_a_perfectly_scaling_family():
    # runs whose accuracy is 1 - exp(-B s / 25600): steps to 0.9 = ceil(25600 ln 10 / B), examples constant-ish
    runs = {}
    for b in (64, 128, 256, 512):
        s = np.arange(0, 2001)
        runs[b] = {"eval_step": s, "test_accuracy": 1 - np.exp(-b * s / 25600.0)}
    c = metrics.scaling_curve(runs, "test_accuracy", 0.9)
    want = np.array([math.ceil(25600 * math.log(10) / b) for b in (64, 128, 256, 512)], float)
    np.testing.assert_array_equal(c["batch_size"], [64, 128, 256, 512])
    np.testing.assert_array_equal(c["steps"], want)
    np.testing.assert_array_equal(c["examples"], want * c["batch_size"])
    assert metrics.examples_to_target(runs[128], "test_accuracy", 0.9, 128) == want[1] * 128


def test_loss_metrics_default_to_lower_is_better():
    runs = {32: {"step": np.arange(1, 6), "loss": np.array([3.0, 2.0, 1.0, 0.5, 0.4])}}
    assert metrics.scaling_curve(runs, "loss", 1.0)["steps"][0] == 3
    assert metrics.step_key("test_loss") == "eval_step" and metrics.step_key("loss") == "step"


def test_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        metrics.steps_to_target([1, 2], [0.1], 0.5)
    with pytest.raises(ValueError, match="increasing"):
        metrics.steps_to_target([2, 1], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="target"):
        metrics.steps_to_target([1, 2], [0.1, 0.2], float("nan"))
    with pytest.raises(KeyError, match="no metric"):
        metrics.scaling_curve({8: {"step": [1], "loss": [1.0]}}, "test_accuracy", 0.5)
