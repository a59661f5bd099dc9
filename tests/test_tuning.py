"""tuning.sweep: best rate per optimizer, diverged runs never win, and the cache: a second sweep trains nothing."""

import math

import numpy as np
import pytest

from lamb.experiments import tuning


def _fake_train(calls):
    # a synthetic accuracy curve peaking at lr = 0.01 for "a" and 0.1 for "b"; lr >= 1 diverges (NaN)
    def train(optimizer, lr):
        calls.append((optimizer, lr))
        peak = {"a": 0.01, "b": 0.1}[optimizer]
        final = np.nan if lr >= 1 else 1.0 - 0.1 * abs(math.log10(lr / peak))
        return {"eval_step": np.array([0, 10]), "test_accuracy": np.array([0.1, final])}
    return train


def test_figure4_grid_is_the_papers():
    g = tuning.FIGURE4_LR_GRID
    assert len(g) == 34 and g[0] == 1e-4 and g[-1] == 50 and list(g) == sorted(g)
    assert {0.0006, 0.008, 15, 45} <= set(g)


def test_sweep_picks_the_best_and_the_cache_trains_nothing_the_second_time(tmp_path):
    calls = []
    grid = [0.001, 0.01, 0.1, 1.0]
    config = {"task": "synthetic", "steps": 10}
    r1 = tuning.sweep(_fake_train(calls), ["a", "b"], grid, config=config, cache_dir=tmp_path)
    assert len(calls) == 8 and r1.trained == 8 and r1.cached == 0
    assert r1.best == {"a": (0.01, pytest.approx(1.0)), "b": (0.1, pytest.approx(1.0))}
    assert r1.scores["a"][1.0] == -math.inf  # diverged
    assert r1.at_edge == []
    calls.clear()
    r2 = tuning.sweep(_fake_train(calls), ["a", "b"], grid, config=config, cache_dir=tmp_path)
    assert calls == [] and r2.trained == 0 and r2.cached == 8
    assert r2.best == r1.best
    np.testing.assert_array_equal(r2.histories["b"][0.1]["test_accuracy"], r1.histories["b"][0.1]["test_accuracy"])
    # another configuration, or a new rate, trains only what is new
    r3 = tuning.sweep(_fake_train(calls), ["a"], [0.01, 0.02], config=config, cache_dir=tmp_path)
    assert calls == [("a", 0.02)] and r3.cached == 1
    calls.clear()
    tuning.sweep(_fake_train(calls), ["a"], [0.01], config={**config, "steps": 20}, cache_dir=tmp_path)
    assert calls == [("a", 0.01)]


def test_edge_and_lower_is_better_and_per_optimizer_grids():
    calls = []
    r = tuning.sweep(_fake_train(calls), ["a", "b"], {"a": [0.01, 0.001], "b": [0.2, 0.1, 0.05]},
                     config={}, cache_dir=None)
    assert r.at_edge == ["a"] and r.best_lr("b") == 0.1
    lrs, scores = r.curve("b")
    np.testing.assert_array_equal(lrs, [0.05, 0.1, 0.2])

    def loss_train(optimizer, lr):
        return {"step": np.arange(3), "loss": np.array([3.0, 2.0, abs(lr - 0.3)])}

    r = tuning.sweep(loss_train, ["x"], [0.1, 0.3, 1.0], config={}, metric="loss")
    assert not r.higher_is_better and r.best_lr("x") == 0.3


def test_reductions_and_bad_inputs():
    h = {"test_accuracy": np.array([0.5, 0.9, 0.7])}
    assert tuning.score(h, "test_accuracy", "final") == 0.7
    assert tuning.score(h, "test_accuracy", "best") == 0.9
    with pytest.raises(ValueError, match="reduction"):
        tuning.score(h, "test_accuracy", "mean")
    with pytest.raises(ValueError, match="grid"):
        tuning.sweep(_fake_train([]), ["a"], [0.1, -1.0], config={})
    with pytest.raises(ValueError, match="optimizers"):
        tuning.sweep(_fake_train([]), "a", [0.1], config={})


def test_an_edit_to_the_optimizer_invalidates_a_cached_sweep(tmp_path, monkeypatch):
    """Cached runs are keyed by the package's source too: after a change to lamb.jax (here in a copy of the
    package's source), the same sweep trains every run again instead of reading the old code's results."""
    import shutil
    from pathlib import Path

    import lamb
    from lamb import fingerprint

    source = tmp_path / "lamb"
    shutil.copytree(Path(lamb.__file__).parent, source, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE_ROOT", source, raising=False)
    calls, cache = [], tmp_path / "cache"
    config = {"task": "synthetic", "steps": 10}
    first = tuning.sweep(_fake_train(calls), ["a"], [0.001, 0.01], config=config, cache_dir=cache)
    again = tuning.sweep(_fake_train(calls), ["a"], [0.001, 0.01], config=config, cache_dir=cache)
    assert (first.trained, again.trained, again.cached) == (2, 0, 2)
    transforms = source / "jax" / "transforms.py"
    transforms.write_text(transforms.read_text() + "\nDEFAULT_EPS = 1e-6  # an edit to the optimizer's module\n")
    calls.clear()
    after_edit = tuning.sweep(_fake_train(calls), ["a"], [0.001, 0.01], config=config, cache_dir=cache)
    assert after_edit.trained == 2 and after_edit.cached == 0 and len(calls) == 2
    # the settings and the notebooks are not code: only what computes a run keys it
    (source / "settings" / "04_lamb.toml").write_text("[common]\n")
    assert tuning.sweep(_fake_train(calls), ["a"], [0.001, 0.01], config=config, cache_dir=cache).cached == 2
