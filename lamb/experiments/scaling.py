r"""Steps to a target against batch size, every optimizer retuned at every batch size (Shallue et al. 2019).

The paper's claim is about how far the batch can grow before it stops buying fewer steps. Shallue et al.
(2019, *Measuring the Effects of Data Parallelism on Neural Network Training*, JMLR 20(112)) gave the protocol
that settles such claims: measure the number of **steps to a target** out-of-sample quality as a function of the
batch size :math:`B`, with the metaparameters **retuned at every batch size**. This module holds that protocol:

- :func:`optimizer` -- LAMB, LARS (Algorithm 1), AdamW and Nesterov momentum as factories ``make_tx(lr)`` for
  :mod:`lamb.experiments.vectorized`, with BERT's exclusions (biases and normalization parameters get no
  weight decay and no trust ratio);
- :func:`sweep` -- at each batch size of a ladder, tune the peak learning rate on a log grid (one seed, every
  grid point in one vectorized program, stopped as soon as the first trial reaches the target: it is the best),
  then train the chosen rate with more seeds; results cached on disk by configuration;
- :func:`choose_trial` -- the tuned trial: fewest steps to the target; a trial that never reaches it counts as
  not reaching it (``inf``), never as a number; ties go to the better metric at that step, then the smaller
  rate;
- :func:`fit_critical_batch` -- McCandlish et al. (2018)'s :math:`S(B) = S_\text{min}(1 + B_\text{crit}/B)`,
  equivalently :math:`E(B) = E_\text{min}(1 + B/B_\text{crit})` for the examples :math:`E = BS`, with
  :math:`B_\text{crit} = E_\text{min}/S_\text{min}`; :func:`bootstrap_critical_batch` resamples the seeds;
- :func:`regions` -- perfect scaling, diminishing returns, maximal data parallelism, read off the data;
- :func:`learning_rate_exponent` -- the slope of :math:`\log \eta^*` against :math:`\log B` (1: the linear rule,
  1/2: the square-root rule);
- :func:`load_mlperf_rcps` -- the MLPerf reference convergence points shipped in ``lamb/data/mlperf_rcps.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["OPTIMIZERS", "optimizer", "decay_mask", "choose_trial", "seed_summary", "fit_critical_batch",
           "CriticalBatchFit", "bootstrap_critical_batch", "percentile_interval", "regions",
           "learning_rate_exponent", "steps_never_rise", "budget", "sweep", "BatchResult", "ScalingResult",
           "load_mlperf_rcps"]

#: The optimizers of the comparison: the paper's two and the two baselines of Nado et al. (2021).
OPTIMIZERS = ("lamb", "lars", "adamw", "nesterov")


# ---------------------------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------------------------

def decay_mask(params):
    """``True`` for the arrays that get weight decay and a trust ratio: kernels and embeddings. Biases and the
    scales and biases of normalization layers are excluded, as BERT's optimizer excludes ``bias`` and
    ``LayerNorm`` (``exclude_from_weight_decay``, ``exclude_from_layer_adaptation``)."""
    import jax

    def keep(path, _):
        last = path[-1]
        name = str(getattr(last, "key", getattr(last, "name", last)))
        return name in ("kernel", "embedding", "w")

    return jax.tree_util.tree_map_with_path(keep, params)


_FACTORIES: dict = {}


def optimizer(name: str, *, weight_decay: float, momentum: float = 0.9, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-6, exclusions: bool = True) -> Callable:
    r"""``make_tx(learning_rate) -> optax.GradientTransformation`` for one of :data:`OPTIMIZERS`.

    - ``"lamb"``: :func:`lamb.jax.lamb` (Algorithm 2) with ``b1, b2, eps, weight_decay``;
    - ``"lars"``: :func:`lamb.jax.lars` (Algorithm 1) with ``momentum`` and ``weight_decay`` inside the momentum;
    - ``"adamw"``: ``optax.adamw`` with ``b1, b2, eps, weight_decay`` (decoupled, multiplied by the rate);
    - ``"nesterov"``: SGD with Nesterov momentum, :math:`v \leftarrow \mu v + g + \lambda x`,
      :math:`x \leftarrow x - \eta(\mu v + g + \lambda x)` (``optax.sgd(nesterov=True)`` after
      ``add_decayed_weights``): Nado et al.'s baseline.

    With ``exclusions`` biases and normalization parameters get neither weight decay nor a trust ratio
    (:func:`decay_mask`). The same arguments return the same function object, so that sweeps share one
    compiled program.
    """
    import optax

    from lamb import jax as lj

    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    for arg, value, low, high in (("weight_decay", weight_decay, 0.0, math.inf), ("momentum", momentum, 0.0, 1.0),
                                  ("b1", b1, 0.0, 1.0), ("b2", b2, 0.0, 1.0), ("eps", eps, 0.0, math.inf)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value < high):
            raise ValueError(f"{arg} must be a number in [{low}, {high}), got {value!r}")
    key = (name, float(weight_decay), float(momentum), float(b1), float(b2), float(eps), bool(exclusions))
    if key in _FACTORIES:
        return _FACTORIES[key]
    mask = decay_mask if exclusions else None

    if name == "lamb":
        def make_tx(lr):
            return lj.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask, layer_adaptation_mask=mask)
    elif name == "lars":
        def make_tx(lr):
            return lj.lars(lr, momentum=momentum, weight_decay=weight_decay, mask=mask, layer_adaptation_mask=mask)
    elif name == "adamw":
        def make_tx(lr):
            return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    else:
        def make_tx(lr):
            return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                               optax.sgd(lr, momentum=momentum, nesterov=True))

    make_tx.config = {"optimizer": name, "weight_decay": weight_decay, "momentum": momentum, "b1": b1, "b2": b2,
                      "eps": eps, "exclusions": exclusions}
    _FACTORIES[key] = make_tx
    return make_tx


# ---------------------------------------------------------------------------------------------------------------
# The tuned trial and its seeds
# ---------------------------------------------------------------------------------------------------------------

def _as_steps(values, name="steps") -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {a.shape}")
    if np.any(np.isnan(a)) or np.any(a <= 0):
        raise ValueError(f"{name} must be positive step counts or inf (never reached), got {a.tolist()}")
    return a


def choose_trial(learning_rates: Sequence[float], steps: Sequence[float], scores: Sequence[float] | None = None,
                 higher_is_better: bool = True) -> int | None:
    """The index of the tuned trial: the fewest steps to the target; among ties, the better ``scores`` (the
    metric at that step), then the smaller learning rate. ``None`` when no trial reached the target (``inf``
    everywhere): a trial that never reaches the target is never chosen."""
    lrs = np.asarray(learning_rates, dtype=np.float64)
    s = _as_steps(steps)
    if lrs.shape != s.shape:
        raise ValueError(f"learning_rates and steps must have the same length, got {lrs.size} and {s.size}")
    if not np.isfinite(s).any():
        return None
    sc = np.zeros_like(s) if scores is None else np.asarray(scores, dtype=np.float64)
    sc = np.where(np.isfinite(sc), sc, -np.inf if higher_is_better else np.inf)
    candidates = [i for i in range(len(s)) if s[i] == s.min()]
    return min(candidates, key=lambda i: (-sc[i] if higher_is_better else sc[i], lrs[i]))


def seed_summary(steps: Sequence[float]) -> dict:
    """Median, min and max over seeds of steps to target; ``inf`` counts as never reached (a median of
    ``inf`` means most seeds never reached it), ``reached`` is the number of seeds that did."""
    s = _as_steps(steps)
    return {"median": float(np.median(s)), "min": float(s.min()), "max": float(s.max()),
            "reached": int(np.isfinite(s).sum()), "seeds": int(s.size)}


# ---------------------------------------------------------------------------------------------------------------
# McCandlish et al.'s fit
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CriticalBatchFit:
    r""":math:`S(B) = S_\text{min}(1 + B_\text{crit}/B)` fitted to steps to target. ``bound`` is ``None`` when
    :math:`B_\text{crit}` lies inside the search range, ``"below"`` when the fit wants it below the range (the
    ladder shows no perfect scaling: only a bound :math:`B_\text{crit} \lesssim` ``b_crit``), ``"above"`` when
    above (the ladder never left perfect scaling: :math:`B_\text{crit} \gtrsim` ``b_crit``)."""

    s_min: float
    b_crit: float
    bound: str | None
    points: int
    rms_log_residual: float

    @property
    def e_min(self) -> float:
        return self.s_min * self.b_crit

    def steps(self, batch_size):
        return self.s_min * (1.0 + self.b_crit / np.asarray(batch_size, dtype=np.float64))

    def examples(self, batch_size):
        b = np.asarray(batch_size, dtype=np.float64)
        return b * self.steps(b)


_SEARCH_DECADES = 3.0  # B_crit is searched from 10^-3 x the smallest batch to 10^3 x the largest


def fit_critical_batch(batch_sizes: Sequence[float], steps: Sequence[float]) -> CriticalBatchFit:
    r"""Least squares in log space: minimise :math:`\sum_i (\log S_i - \log S_\text{min} - \log(1 +
    B_\text{crit}/B_i))^2` over the batch sizes where the target was reached (finite :math:`S_i`). For a
    given :math:`B_\text{crit}` the best :math:`\log S_\text{min}` is the mean of :math:`\log S_i - \log(1 +
    B_\text{crit}/B_i)`; :math:`\log B_\text{crit}` is found on a fine grid, then refined (log space weighs
    every batch size alike: the steps span orders of magnitude). Needs three finite points at distinct sizes.
    """
    from scipy.optimize import minimize_scalar

    b = np.asarray(batch_sizes, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    if b.ndim != 1 or b.shape != s.shape:
        raise ValueError(f"batch_sizes and steps must be 1-D of the same length, got shapes {b.shape} and {s.shape}")
    if np.any(~np.isfinite(b)) or np.any(b <= 0):
        raise ValueError(f"batch sizes must be positive and finite, got {b.tolist()}")
    if np.any(np.isnan(s)) or np.any(s <= 0):
        raise ValueError(f"steps must be positive (inf where the target was never reached), got {s.tolist()}")
    keep = np.isfinite(s)
    b, s = b[keep], s[keep]
    if len(np.unique(b)) < 3:
        raise ValueError(f"the fit needs the target reached at >= 3 distinct batch sizes, got {len(np.unique(b))}")
    log_s = np.log(s)

    def objective(u):
        shape = np.log1p(np.exp(u) / b)
        r = log_s - shape
        return float(np.sum((r - r.mean()) ** 2))

    lo = math.log(b.min()) - _SEARCH_DECADES * math.log(10)
    hi = math.log(b.max()) + _SEARCH_DECADES * math.log(10)
    grid = np.linspace(lo, hi, 601)
    values = [objective(u) for u in grid]
    k = int(np.argmin(values))
    u = grid[k]
    if 0 < k < len(grid) - 1:
        u = minimize_scalar(objective, bounds=(grid[k - 1], grid[k + 1]), method="bounded",
                            options={"xatol": 1e-8}).x
    bound = "below" if k == 0 else "above" if k == len(grid) - 1 else None
    b_crit = math.exp(u)
    log_s_min = float(np.mean(log_s - np.log1p(b_crit / b)))
    rms = math.sqrt(objective(u) / len(b))
    return CriticalBatchFit(math.exp(log_s_min), b_crit, bound, int(len(b)), rms)


def bootstrap_critical_batch(batch_sizes: Sequence[float], seed_steps: Sequence[Sequence[float]],
                             samples: int = 1000, seed: int = 0) -> np.ndarray:
    r"""Bootstrap over seeds: at every batch size draw the seeds with replacement, take the median steps,
    refit :func:`fit_critical_batch`; returns the :math:`B_\text{crit}` of every resample (``nan`` where a
    resample has fewer than three batch sizes that reached the target)."""
    b = np.asarray(batch_sizes, dtype=np.float64)
    if len(seed_steps) != len(b):
        raise ValueError(f"seed_steps must hold one sequence per batch size ({len(b)}), got {len(seed_steps)}")
    per_batch = [_as_steps(v, f"seed_steps[{i}]") for i, v in enumerate(seed_steps)]
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    rng = np.random.default_rng(seed)
    out = np.empty(samples)
    for k in range(samples):
        medians = [np.median(v[rng.integers(0, len(v), len(v))]) for v in per_batch]
        try:
            out[k] = fit_critical_batch(b, medians).b_crit
        except ValueError:
            out[k] = np.nan
    return out


def percentile_interval(samples, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of the finite ``samples``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("no finite samples to take an interval of")
    tail = 50 * (1 - level)
    return float(np.percentile(x, tail)), float(np.percentile(x, 100 - tail))


def regions(batch_sizes: Sequence[float], steps: Sequence[float], perfect: float = 0.8,
            maximal: float = 0.1) -> list[str]:
    r"""The scaling region of each step of the ladder :math:`B_k \to B_{k+1}`, read off the data: with the
    measured reduction :math:`r = S(B_k)/S(B_{k+1})` and the ideal one :math:`q = B_{k+1}/B_k`, the step is
    ``"perfect"`` when :math:`\log r / \log q \ge` ``perfect`` (at least 80% of the ideal reduction, in log
    terms), ``"maximal"`` (maximal data parallelism) when :math:`\log r / \log q \le` ``maximal``, else
    ``"diminishing"``; ``"unknown"`` where either end never reached the target."""
    b = np.asarray(batch_sizes, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    if b.ndim != 1 or b.shape != s.shape or b.size < 2 or np.any(np.diff(b) <= 0):
        raise ValueError(f"batch_sizes must be increasing and match steps, got {b.tolist()} and {s.tolist()}")
    if not 0 <= maximal < perfect <= 1:
        raise ValueError(f"need 0 <= maximal < perfect <= 1, got maximal={maximal!r}, perfect={perfect!r}")
    out = []
    for k in range(len(b) - 1):
        if not (np.isfinite(s[k]) and np.isfinite(s[k + 1])):
            out.append("unknown")
            continue
        efficiency = math.log(s[k] / s[k + 1]) / math.log(b[k + 1] / b[k])
        out.append("perfect" if efficiency >= perfect else "maximal" if efficiency <= maximal else "diminishing")
    return out


def learning_rate_exponent(batch_sizes: Sequence[float], learning_rates: Sequence[float]) -> float:
    r"""The least-squares slope :math:`\alpha` of :math:`\log \eta^*(B)` against :math:`\log B`: 1 is the
    linear scaling rule (Goyal et al. 2017), 1/2 the square-root rule (Krizhevsky 2014; the LAMB paper's)."""
    b = np.asarray(batch_sizes, dtype=np.float64)
    lr = np.asarray(learning_rates, dtype=np.float64)
    keep = np.isfinite(lr) & (lr > 0)
    if keep.sum() < 2 or len(np.unique(b[keep])) < 2:
        raise ValueError("the exponent needs tuned rates at >= 2 distinct batch sizes")
    return float(np.polyfit(np.log(b[keep]), np.log(lr[keep]), 1)[0])


def steps_never_rise(batch_sizes: Sequence[float], seed_steps: Sequence[Sequence[float]],
                     resolution: Sequence[float] | None = None) -> list[str]:
    """Check Shallue et al.'s regularity: with the metaparameters retuned, the steps to target never rise
    with the batch size beyond seed noise. Between consecutive batch sizes where the target was reached, a
    violation is a median at the larger batch above the largest seed at the smaller batch plus the
    evaluation interval ``resolution`` of the larger one. Returns the violations (empty when none)."""
    b = np.asarray(batch_sizes, dtype=np.float64)
    res = np.zeros_like(b) if resolution is None else np.asarray(resolution, dtype=np.float64)
    out = []
    for k in range(len(b) - 1):
        lo, hi = _as_steps(seed_steps[k]), _as_steps(seed_steps[k + 1])
        if not (np.isfinite(lo).all() and np.isfinite(np.median(hi))):
            continue
        if np.median(hi) > lo.max() + res[k + 1]:
            out.append(f"batch {b[k + 1]:g}: median {np.median(hi):g} steps > {lo.max():g} (max over seeds at "
                       f"batch {b[k]:g}) + {res[k + 1]:g}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------------

def budget(batch_size: int, *, examples: int, min_steps: int, evaluations: int, max_steps: int | None = None
           ) -> tuple[int, int]:
    """``(steps, eval_every)`` at ``batch_size``: ``max(min_steps, ceil(examples / batch_size))`` steps (at most
    ``max_steps``) -- an example budget where it allows enough steps, a step floor at large batches where the
    steps to target stop falling -- and about ``evaluations`` evaluations over it."""
    for name, v in (("batch_size", batch_size), ("examples", examples), ("min_steps", min_steps),
                    ("evaluations", evaluations)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    steps = max(int(min_steps), -(-int(examples) // int(batch_size)))
    if max_steps is not None:
        steps = min(steps, int(max_steps))
    return steps, max(1, steps // int(evaluations))


@dataclass
class BatchResult:
    """One (optimizer, batch size) of a sweep: the grid's steps to target with seed 0 (``inf`` where a trial
    had not reached it when the sweep stopped), the tuned rate (``nan`` when no rate reached the target), the
    tuned rate's steps over every seed, and the histories of the tuned rate's seeds."""

    batch_size: int
    steps_budget: int
    eval_every: int
    grid: list
    grid_steps: list
    tuned_lr: float
    at_edge: bool
    seeds: list
    seed_steps: list
    histories: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def summary(self) -> dict:
        return seed_summary(self.seed_steps)


@dataclass
class ScalingResult:
    """The sweep of one optimizer on one workload: a :class:`BatchResult` per batch size."""

    optimizer: str
    batches: list
    config: dict

    @property
    def batch_sizes(self) -> np.ndarray:
        return np.array([r.batch_size for r in self.batches], dtype=np.float64)

    def median_steps(self) -> np.ndarray:
        return np.array([r.summary["median"] for r in self.batches])

    def tuned_lrs(self) -> np.ndarray:
        return np.array([r.tuned_lr for r in self.batches])

    def fit(self) -> CriticalBatchFit:
        return fit_critical_batch(self.batch_sizes, self.median_steps())

    def bootstrap(self, samples: int = 1000, seed: int = 0) -> np.ndarray:
        return bootstrap_critical_batch(self.batch_sizes, [r.seed_steps for r in self.batches], samples, seed)

    def to_json(self) -> dict:
        from lamb.experiments.train import _jsonable

        return _jsonable({"optimizer": self.optimizer, "config": self.config,
                          "batches": [vars(r) for r in self.batches]})

    @classmethod
    def from_json(cls, payload: Mapping) -> "ScalingResult":
        batches = []
        for r in payload["batches"]:
            r = dict(r)
            r["histories"] = [{k: np.asarray(v, dtype=np.float64) for k, v in h.items()} for h in r["histories"]]
            r["grid_steps"] = [float(v) for v in r["grid_steps"]]
            r["seed_steps"] = [float(v) for v in r["seed_steps"]]
            r["tuned_lr"] = float(r["tuned_lr"])
            batches.append(BatchResult(**r))
        return cls(payload["optimizer"], batches, dict(payload["config"]))


def _read_cache(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sweep(task, make_tx: Callable, grid: Sequence[float], batch_sizes: Sequence[int], *, target: float,
          metric: str | None = None, seeds: int = 3, examples: int, min_steps: int, evaluations: int = 40,
          max_steps: int | None = None, warmup_fraction: float = 0.05, micro_batch: int | None = None,
          noise_scale_examples: int = 0, cache_dir=None, name: str | None = None,
          verbose: bool = False) -> ScalingResult:
    """Shallue et al.'s protocol for one optimizer over a ladder of batch sizes.

    At each batch size ``B`` (step budget and evaluation interval from :func:`budget`; the schedule warms up
    linearly over ``warmup_fraction`` of the budget, then decays linearly to zero at its end):

    1. every peak rate of ``grid`` trains with seed 0 in one vectorized program, stopped as soon as one trial
       reaches ``target`` (:func:`choose_trial` picks it; the others had not reached it and cannot be faster);
    2. the tuned rate trains with seeds ``1 .. seeds - 1`` (stopped once all reach the target), so the tuned
       trial has ``seeds`` measurements; the first of them records the gradient noise scale along the run when
       ``noise_scale_examples`` > 0 (at the smallest batch size only).

    Every batch size's result is cached as JSON under ``cache_dir`` (none when ``None``), keyed by the SHA-256
    of everything that defines it: the task's configuration, the optimizer's, the grid, budget, target and
    seeds. In a dry run one trial trains for two steps per batch size and nothing is cached.
    """
    import time

    from lamb import profiles
    from lamb.experiments import metrics as _metrics
    from lamb.experiments import vectorized
    from lamb.experiments.train import _jsonable, config_hash

    grid = sorted(float(v) for v in grid)
    if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
        raise ValueError(f"grid must hold positive learning rates, got {grid!r}")
    ladder = [int(b) for b in batch_sizes]
    if not ladder or any(b < 1 for b in ladder) or ladder != sorted(set(ladder)):
        raise ValueError(f"batch_sizes must be increasing positive ints, got {list(batch_sizes)!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    metric = metric or ("test_loss" if task.kind == "mlm" else "test_accuracy")
    hib = _metrics._higher_is_better(metric, None)
    dry = profiles.dry_run()
    opt_config = getattr(make_tx, "config", {"optimizer": name or repr(make_tx)})
    name = name or opt_config.get("optimizer", "optimizer")
    base = {"task": task.config, "optimizer": opt_config, "grid": grid, "target": float(target), "metric": metric,
            "seeds": seeds, "examples": examples, "min_steps": min_steps, "evaluations": evaluations,
            "max_steps": max_steps, "warmup_fraction": warmup_fraction, "micro_batch": micro_batch,
            "noise_scale_examples": noise_scale_examples, "protocol": 1}
    cache = None if (cache_dir is None or dry) else Path(cache_dir)
    results = []
    for B in ladder:
        steps, every = budget(B, examples=examples, min_steps=min_steps, evaluations=evaluations,
                              max_steps=max_steps)
        config = dict(base, batch_size=B)
        path = None if cache is None else cache / f"{name}-{B}-{config_hash(config)}.json"
        if path is not None and path.exists() and (payload := _read_cache(path)) is not None:
            results.append(ScalingResult.from_json({"optimizer": name, "config": base,
                                                    "batches": [payload]}).batches[0])
            continue
        t0 = time.perf_counter()
        kw = dict(batch_size=B, steps=steps, eval_every=every, warmup_steps=int(warmup_fraction * steps),
                  micro_batch=None if micro_batch is None else min(micro_batch, B), target=float(target),
                  metric=metric)
        tune = vectorized.run(task, make_tx, grid, [0], stop="any", **kw)
        grid_steps = tune.steps_to_target()
        last = [h[metric][-1] for h in tune.histories]
        pick = choose_trial([lr for lr, _ in tune.trials], grid_steps, last, hib)
        if pick is None:
            tuned_lr, at_edge, seed_steps, histories = math.nan, False, [math.inf] * seeds, []
        else:
            tuned_lr = tune.trials[pick][0]
            at_edge = len(grid) > 1 and tuned_lr in (grid[0], grid[-1])
            seed_steps, histories = [float(grid_steps[pick])], [tune.histories[pick]]
            if seeds > 1 and not dry:
                noise = noise_scale_examples if (noise_scale_examples and B == ladder[0]) else 0
                more = vectorized.run(task, make_tx, [tuned_lr], list(range(1, seeds)), stop="all",
                                      noise_scale_trials=1 if noise else 0,
                                      noise_scale_examples=noise or 256, **kw)
                seed_steps += [float(v) for v in more.steps_to_target()]
                histories += more.histories
        result = BatchResult(B, steps, every, grid, [float(v) for v in grid_steps], float(tuned_lr), bool(at_edge),
                             list(range(len(seed_steps))), seed_steps, histories, time.perf_counter() - t0)
        if verbose:
            print(f"{name:>9s} B={B:6d}: tuned lr {tuned_lr:.3g}{' (edge)' if at_edge else ''}, steps "
                  f"{seed_steps} ({result.seconds:.1f} s)")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(_jsonable(vars(result)), allow_nan=True))
            os.replace(tmp, path)
        results.append(result)
    return ScalingResult(name, results, base)


# ---------------------------------------------------------------------------------------------------------------
# Published points
# ---------------------------------------------------------------------------------------------------------------

def load_mlperf_rcps() -> dict:
    """The MLPerf Training reference convergence points shipped in ``lamb/data/mlperf_rcps.json``.

    Returns ``{benchmark: dict}`` for ``"resnet50_lars"`` (epochs to 75.9% top-1 on ImageNet) and
    ``"bert_large_lamb"`` (samples to 0.720 masked-LM accuracy), each with the file's metadata (``workload``,
    ``optimizer``, ``target``, ``unit``, ``source``) and arrays sorted by batch size: ``batch_size``,
    ``values`` (one list per batch size, in the unit), ``mean``, ``median``, ``examples`` (mean, converted:
    epochs x 1,281,167 ImageNet images) and ``steps`` (examples / batch size)."""
    path = resources.files("lamb") / "data" / "mlperf_rcps.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for name, bench in raw["benchmarks"].items():
        unit = bench["unit"]
        if unit not in ("epochs", "samples"):
            raise ValueError(f"{path}: benchmark {name!r} has unknown unit {unit!r}")
        points = sorted(bench["points"], key=lambda p: p["batch_size"])
        b = np.array([p["batch_size"] for p in points], dtype=np.float64)
        values = [np.asarray(p["values"], dtype=np.float64) for p in points]
        mean = np.array([v.mean() for v in values])
        per_unit = float(bench["examples_per_epoch"]) if unit == "epochs" else 1.0
        entry = {k: v for k, v in bench.items() if k != "points"}
        entry.update({"batch_size": b, "values": values, "mean": mean,
                      "median": np.array([np.median(v) for v in values]), "examples": mean * per_unit,
                      "steps": mean * per_unit / b})
        out[name] = entry
    return out
