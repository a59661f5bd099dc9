r"""Metrics for the paper's claims: how many steps (and examples) a run needs to reach a target.

The paper's argument is about *time to a target quality* as the batch grows: with perfect scaling, doubling
the batch halves the steps to the target; past the critical batch size (McCandlish et al. 2018) the steps stop
falling and the examples processed rise. :func:`steps_to_target` reads one run's curve;
:func:`scaling_curve` collects it over runs at several batch sizes, giving the curve that
:func:`lamb.experiments.plotting.steps_to_target` draws on log axes.

A history is a mapping from metric names to 1-D arrays, as :class:`lamb.experiments.train.TrainResult.history`:
per-step metrics (``loss``, ``accuracy``) go with ``step``; evaluation metrics (``test_loss``,
``test_accuracy``) with ``eval_step``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["steps_to_target", "examples_to_target", "scaling_curve", "step_key", "LOWER_IS_BETTER"]

#: Metrics for which smaller is better (a target is reached when the value drops to it or below).
LOWER_IS_BETTER = ("loss", "test_loss", "train_loss", "validation_loss")


def step_key(metric: str) -> str:
    """The history key holding the steps of ``metric``: ``"eval_step"`` for evaluation metrics
    (``test_*``, ``validation_*``), else ``"step"``."""
    return "eval_step" if metric.startswith(("test_", "validation_", "eval_")) else "step"


def _higher_is_better(metric: str, higher_is_better):
    if higher_is_better is None:
        return metric not in LOWER_IS_BETTER
    return bool(higher_is_better)


def steps_to_target(steps, values, target: float, higher_is_better: bool = True) -> float:
    r"""The first step at which ``values`` reaches ``target``: ``min {s_i : v_i >= target}`` when
    ``higher_is_better`` (an accuracy), ``min {s_i : v_i <= target}`` otherwise (a loss); ``inf`` when it never
    does. ``steps`` must be increasing. NaN values (a diverged run) never reach the target.
    """
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != values.shape:
        raise ValueError(f"steps and values must be 1-D arrays of the same length, got shapes {steps.shape} and "
                         f"{values.shape}")
    if steps.size > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    if not isinstance(target, (int, float, np.floating)) or not math.isfinite(target):
        raise ValueError(f"target must be a finite number, got {target!r}")
    with np.errstate(invalid="ignore"):
        reached = values >= target if higher_is_better else values <= target
    hits = np.flatnonzero(reached)
    return float(steps[hits[0]]) if hits.size else math.inf


def _history(run) -> Mapping:
    return run.history if hasattr(run, "history") else run


def examples_to_target(run, metric: str, target: float, batch_size: int, higher_is_better=None) -> float:
    """Examples processed until ``metric`` of ``run`` (a history or a result) reaches ``target``:
    ``steps_to_target * batch_size``."""
    h = _history(run)
    s = steps_to_target(h[step_key(metric)], h[metric], target, _higher_is_better(metric, higher_is_better))
    return s * batch_size


def scaling_curve(runs: Mapping[int, object], metric: str, target: float, higher_is_better=None) -> dict:
    r"""Steps and examples to reach ``target`` in ``metric`` against batch size.

    ``runs`` maps each batch size to a run (a :class:`~lamb.experiments.train.TrainResult` or a history).
    ``higher_is_better`` defaults by the metric's name (losses lower, accuracies higher). Returns
    ``{"batch_size", "steps", "examples"}`` as float arrays sorted by batch size (``inf`` where the target
    was never reached).
    """
    hib = _higher_is_better(metric, higher_is_better)
    sizes = sorted(runs)
    steps = []
    for b in sizes:
        h = _history(runs[b])
        if metric not in h:
            raise KeyError(f"run at batch size {b} has no metric {metric!r}; it has {sorted(h)}")
        steps.append(steps_to_target(h[step_key(metric)], h[metric], target, hib))
    steps = np.asarray(steps, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    return {"batch_size": sizes, "steps": steps, "examples": steps * sizes}
