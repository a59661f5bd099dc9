r"""Learning-rate sweeps with a result cache, so that re-running a notebook does not retrain what is done.

The paper's Figure 4 compares optimizers that were each "carefully tuned" over one learning-rate grid
(:data:`FIGURE4_LR_GRID`, from the figure's caption). :func:`sweep` does the same at the book's scale::

    def train_one(optimizer, lr):                      # any function returning a history or a TrainResult
        tx = {"lamb": lj.lamb, "adamw": optax.adamw}[optimizer](lr)
        return train.fit(model, tx, ds, batch_size=512, steps=200, eval_every=50, progress=False)

    result = tuning.sweep(train_one, ["lamb", "adamw"], [1e-3, 1e-2, 1e-1],
                          config={"task": "mnist1d-mlp", "steps": 200, "batch_size": 512},
                          metric="test_accuracy", cache_dir="results/cache/figure4")
    result.best["lamb"]        # (best learning rate, its score)

Each run ``(optimizer, learning rate)`` is cached as one JSON file (its history) under ``cache_dir``, named by
the SHA-256 of the canonical JSON of ``config`` plus the optimizer's name, the learning rate and the package's
source fingerprint (:func:`lamb.fingerprint.package_fingerprint`: every source file of ``lamb`` and the versions
of numpy, jax, optax and torch). ``config`` must describe *everything* else that changes a run (model, data,
steps, batch size, seeds, other hyperparameters): two sweeps with the same config and the same code share their
runs, and after an edit to the package (an optimizer fix, say) every run is trained again, never read from the
runs of the old code. Files of older code are left in ``cache_dir`` unused (delete the folder to reclaim them).
A run whose metric is NaN (diverged) scores worst; a best rate at the edge of the grid is reported in
:attr:`SweepResult.at_edge` (the grid should be widened).

In a dry run (:func:`lamb.profiles.dry_run`) each optimizer's grid is cut to its middle rate
(:func:`lamb.profiles.dry_run_grid`: one trial per optimizer, so that ``best`` has every optimizer and the
cells after the sweep run), and the cache key carries ``"dry_run": true``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lamb import profiles
from lamb.experiments.train import _arrays, _jsonable, config_hash
from lamb.fingerprint import package_fingerprint

__all__ = ["FIGURE4_LR_GRID", "SweepResult", "sweep", "score", "cache_key"]

#: The learning-rate tuning space of Adam, AdamW, Adagrad and LAMB in the paper's Figure 4 caption
#: (You et al. 2020): 34 values from 1e-4 to 50.
FIGURE4_LR_GRID = (0.0001, 0.0002, 0.0004, 0.0006, 0.0008, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.02, 0.04,
                   0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 15, 20, 25, 30, 35, 40, 45, 50)

#: The weight-decay grid of AdamW in the same caption.
FIGURE4_WEIGHT_DECAY_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0)

_REDUCTIONS = ("final", "best")


@dataclass
class SweepResult:
    """``histories[optimizer][lr]``: each run's history; ``scores[optimizer][lr]``: its score;
    ``best[optimizer] = (lr, score)``; ``at_edge``: the optimizers whose best rate is the grid's smallest or
    largest; ``trained``/``cached``: how many runs were trained now or read from the cache."""

    metric: str
    higher_is_better: bool
    histories: dict
    scores: dict
    best: dict
    at_edge: list
    trained: int
    cached: int

    def best_lr(self, optimizer: str) -> float:
        return self.best[optimizer][0]

    def curve(self, optimizer: str) -> tuple[np.ndarray, np.ndarray]:
        """``(learning rates, scores)`` of one optimizer, for a plot of score against rate."""
        lrs = sorted(self.scores[optimizer])
        return np.asarray(lrs), np.asarray([self.scores[optimizer][lr] for lr in lrs])


def cache_key(config: Mapping, optimizer: str, learning_rate: float, code: str | None = None) -> str:
    """The cache file's stem: a hash of ``config`` with the optimizer's name, the learning rate and ``code``, the
    source fingerprint of the code that trains the run (default :func:`lamb.fingerprint.package_fingerprint`)."""
    code = package_fingerprint() if code is None else code
    return config_hash({"config": dict(config), "optimizer": optimizer, "learning_rate": float(learning_rate),
                        "code": code})


def score(history: Mapping, metric: str, reduction: str = "final", higher_is_better: bool = True) -> float:
    """A run's score: its ``metric``'s last value (``"final"``) or best value (``"best"``); NaN or a missing
    value scores ``-inf`` (``+inf`` when lower is better), so a diverged run never wins."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if metric not in history:
        raise KeyError(f"history has no metric {metric!r}; it has {sorted(history)}")
    values = np.asarray(history[metric], dtype=np.float64)
    worst = -math.inf if higher_is_better else math.inf
    if values.size == 0:
        return worst
    if reduction == "final":
        v = values[-1]
    else:
        finite = values[np.isfinite(values)]
        v = (finite.max() if higher_is_better else finite.min()) if finite.size else np.nan
    return float(v) if np.isfinite(v) else worst


def _write_atomic(path: Path, payload: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, allow_nan=True))
    os.replace(tmp, path)


def sweep(train: Callable[[str, float], object], optimizers: Sequence[str], lr_grid, *, config: Mapping,
          metric: str = "test_accuracy", higher_is_better: bool | None = None, reduction: str = "final",
          cache_dir=None) -> SweepResult:
    """Train every ``(optimizer, learning rate)`` of ``optimizers x lr_grid`` with ``train(optimizer, lr)``
    (which returns a history mapping or a :class:`~lamb.experiments.train.TrainResult`), in this process,
    reading finished runs from ``cache_dir`` (no cache when ``None``), and return the best rate per optimizer.

    ``lr_grid`` is one sequence for all optimizers or ``{optimizer: sequence}``. ``higher_is_better`` defaults
    by the metric's name (losses lower, everything else higher).
    """
    if isinstance(optimizers, str) or not optimizers:
        raise ValueError(f"optimizers must be a non-empty sequence of names, got {optimizers!r}")
    grids = {}
    for name in optimizers:
        grid = lr_grid[name] if isinstance(lr_grid, Mapping) else lr_grid
        grid = [float(v) for v in grid]
        if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
            raise ValueError(f"the learning-rate grid of {name!r} must be non-empty and positive, got {grid!r}")
        grids[name] = profiles.dry_run_grid(sorted(set(grid)))
    if higher_is_better is None:
        from lamb.experiments.metrics import LOWER_IS_BETTER

        higher_is_better = metric not in LOWER_IS_BETTER
    if profiles.dry_run():  # a dry run's 2-step histories must never answer a real sweep from the cache
        config = {**dict(config), "dry_run": True}
    cache = None if cache_dir is None else Path(cache_dir)
    code = package_fingerprint() if cache is not None else None  # once per sweep: the code of all its runs
    histories, scores, best, at_edge = {}, {}, {}, []
    trained = cached = 0
    for name in optimizers:
        histories[name], scores[name] = {}, {}
        for lr in grids[name]:
            path = None if cache is None else cache / f"{cache_key(config, name, lr, code)}.json"
            if path is not None and path.exists():
                history = _arrays(json.loads(path.read_text())["history"])
                cached += 1
            else:
                out = train(name, lr)
                history = _arrays(out.history if hasattr(out, "history") else out)
                trained += 1
                if path is not None:
                    _write_atomic(path, {"config": _jsonable(dict(config)), "optimizer": name, "learning_rate": lr,
                                         "code": code, "history": _jsonable(history)})
            histories[name][lr] = history
            scores[name][lr] = score(history, metric, reduction, higher_is_better)
        pick = max if higher_is_better else min
        lr_best = pick(grids[name], key=lambda lr: scores[name][lr])
        best[name] = (lr_best, scores[name][lr_best])
        if len(grids[name]) > 1 and lr_best in (grids[name][0], grids[name][-1]):
            at_edge.append(name)
    return SweepResult(metric, higher_is_better, histories, scores, best, at_edge, trained, cached)
