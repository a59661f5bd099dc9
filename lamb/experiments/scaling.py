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
  :func:`sweep_bank` -- the same protocol for several optimizers at once, every optimizer x rate of a batch
  size in one program (:func:`optimizer_bank`), so a whole ladder of a workload costs two compilations;
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

__all__ = ["OPTIMIZERS", "optimizer", "optimizer_bank", "switch_transformation", "sweep_bank", "check_steps_never_rise",
           "frequency_baseline", "decay_mask", "choose_trial", "seed_summary", "fit_critical_batch",
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


_BANKS: dict = {}


def switch_transformation(txs, index):
    """An ``optax.GradientTransformation`` that keeps the state of every transformation of ``txs`` and applies
    the update of ``txs[index]`` (``index`` may be traced: under ``jax.vmap`` every update is computed and the
    trial's own is selected)."""
    import jax
    import jax.numpy as jnp
    import optax

    txs = list(txs)

    def init(params):
        return tuple(t.init(params) for t in txs)

    def update(grads, state, params=None):
        outs = [t.update(grads, s, params) for t, s in zip(txs, state)]
        chosen = outs[0][0]
        for j, (u, _) in enumerate(outs[1:], 1):
            chosen = jax.tree.map(lambda a, b, j=j: jnp.where(index == j, b, a), chosen, u)
        return chosen, tuple(s for _, s in outs)

    return optax.GradientTransformation(init, update)


def optimizer_bank(factories: Sequence[Callable]) -> Callable:
    """One factory ``make_tx(learning_rate, variant)`` for ``run_trials(variants=...)`` that trains trial
    ``variant`` with ``factories[variant]`` (each a ``make_tx(learning_rate)``, e.g. from :func:`optimizer`).

    Every optimizer of the bank is built and keeps its own state; the trial's own optimizer's update is the
    one applied (the others see the same gradients and parameters and are discarded). Under ``jax.vmap`` all
    of them are computed -- a few elementwise passes over the parameters, small beside the forward and
    backward passes -- so that every optimizer x rate x seed of a batch size trains in one compiled program.
    The same factories return the same function object (one compiled program per bank)."""
    factories = tuple(factories)
    if not factories or not all(callable(f) for f in factories):
        raise ValueError(f"factories must be a non-empty sequence of make_tx(learning_rate) functions, got "
                         f"{factories!r}")
    if factories in _BANKS:
        return _BANKS[factories]

    def make_tx(learning_rate, variant):
        return switch_transformation([f(learning_rate) for f in factories], variant)

    make_tx.factories = factories
    make_tx.config = {"bank": [getattr(f, "config", repr(f)) for f in factories]}
    _BANKS[factories] = make_tx
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
    r = log_s[None, :] - np.log1p(np.exp(grid)[:, None] / b[None, :])  # every grid point at once
    values = np.sum((r - r.mean(axis=1, keepdims=True)) ** 2, axis=1)
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


def check_steps_never_rise(batch_sizes: Sequence[float], seed_steps: Sequence[Sequence[float]],
                           resolution: Sequence[float] | None = None,
                           budgets: Sequence[float] | None = None) -> dict[str, list[str]]:
    """Shallue et al.'s regularity: with the metaparameters retuned, the steps to target never rise with the
    batch size beyond seed noise.

    Each batch size whose tuned trial's median reached the target is compared with the nearest *smaller* batch
    size whose median did: the bound is the largest seed at that smaller batch plus the evaluation interval
    ``resolution`` of the larger one. A median above the bound is a **violation**. A batch size whose median
    never reached the target is not a number of steps and is never skipped: it is a violation when its step
    ``budget`` was at least the bound (the target was not reached in more steps than the smaller batch needed),
    else **inconclusive** (the budget ended before the bound). Without ``budgets`` every such point is
    inconclusive. Returns ``{"violations": [...], "inconclusive": [...]}``, each a list of explanations."""
    b = np.asarray(batch_sizes, dtype=np.float64)
    if b.ndim != 1 or len(seed_steps) != b.size:
        raise ValueError(f"seed_steps must hold one sequence per batch size ({b.size}), got {len(seed_steps)}")
    res = np.zeros_like(b) if resolution is None else np.asarray(resolution, dtype=np.float64)
    bud = None if budgets is None else np.asarray(budgets, dtype=np.float64)
    for name, a in (("resolution", res), ("budgets", bud)):
        if a is not None and a.shape != b.shape:
            raise ValueError(f"{name} must hold one value per batch size ({b.size}), got shape {a.shape}")
    per_batch = [_as_steps(v, f"seed_steps[{i}]") for i, v in enumerate(seed_steps)]
    out = {"violations": [], "inconclusive": []}
    ref = None  # the last batch size whose median reached the target
    for k, steps in enumerate(per_batch):
        med = float(np.median(steps))
        if ref is not None:
            bound = per_batch[ref].max() + res[k]
            where = f"batch {b[k]:g}"
            smaller = f"{per_batch[ref].max():g} (max over seeds at batch {b[ref]:g}) + {res[k]:g}"
            if math.isfinite(med) and med > bound:
                out["violations"].append(f"{where}: median {med:g} steps > {smaller}")
            elif not math.isfinite(med):
                if bud is not None and math.isfinite(bound) and bud[k] >= bound:
                    out["violations"].append(f"{where}: the target was never reached in the budget of {bud[k]:g} "
                                             f"steps >= {smaller}")
                else:
                    budget_text = "" if bud is None else f" of {bud[k]:g} steps"
                    out["inconclusive"].append(f"{where}: the target was never reached in the budget{budget_text}, "
                                               f"which ended before {smaller}")
        if math.isfinite(med):
            ref = k
    return out


def steps_never_rise(batch_sizes: Sequence[float], seed_steps: Sequence[Sequence[float]],
                     resolution: Sequence[float] | None = None, budgets: Sequence[float] | None = None) -> list[str]:
    """The violations of :func:`check_steps_never_rise` (empty when none): a median at a larger batch above the
    largest seed at the nearest smaller batch that reached the target plus the evaluation interval
    ``resolution``, or, with ``budgets``, a target never reached in a budget at least that long."""
    return check_steps_never_rise(batch_sizes, seed_steps, resolution, budgets)["violations"]


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


def _batch_budget_and_cache(cache, prefix, base, B, examples, min_steps, evaluations, max_steps):
    """``(steps, eval_every, cache path, cached payload or None)`` of one batch size of a sweep."""
    from lamb.experiments.train import config_hash

    steps, every = budget(B, examples=examples, min_steps=min_steps, evaluations=evaluations, max_steps=max_steps)
    path = None if cache is None else cache / f"{prefix}-{B}-{config_hash(dict(base, batch_size=B))}.json"
    payload = _read_cache(path) if path is not None and path.exists() else None
    return steps, every, path, payload


def _check_protocol(task, batch_sizes, seeds, warmup_fraction, metric):
    """The ladder (increasing positive ints), the metric (default by the task's kind) and its direction."""
    from lamb.experiments import metrics as _metrics

    ladder = [int(b) for b in batch_sizes]
    if not ladder or any(b < 1 for b in ladder) or ladder != sorted(set(ladder)):
        raise ValueError(f"batch_sizes must be increasing positive ints, got {list(batch_sizes)!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    metric = metric or ("test_loss" if task.kind == "mlm" else "test_accuracy")
    return ladder, metric, _metrics._higher_is_better(metric, None)


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
    from lamb.experiments import vectorized
    from lamb.experiments.train import _jsonable

    grid = sorted(float(v) for v in grid)
    if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
        raise ValueError(f"grid must hold positive learning rates, got {grid!r}")
    ladder, metric, hib = _check_protocol(task, batch_sizes, seeds, warmup_fraction, metric)
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
        steps, every, path, payload = _batch_budget_and_cache(cache, name, base, B, examples, min_steps,
                                                              evaluations, max_steps)
        if payload is not None:
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


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, allow_nan=True))
    os.replace(tmp, path)


def sweep_bank(task, optimizers: Mapping[str, Callable], grid_points: int, grid_step: float,
               grid_start: Mapping[str, float], batch_sizes: Sequence[int], *, target: float,
               metric: str | None = None, seeds: int = 3, examples: int, min_steps: int, evaluations: int = 40,
               max_steps: int | None = None, warmup_fraction: float = 0.05, micro_batch: int | None = None,
               noise_scale_examples: int = 0, noise_optimizers: Sequence[str] = (), cache_dir=None,
               verbose: bool = False) -> dict[str, ScalingResult]:
    """:func:`sweep`'s protocol for several optimizers at once: ``{name: ScalingResult}``.

    ``optimizers`` maps names to ``make_tx(learning_rate)`` factories (:func:`optimizer`). Every optimizer gets
    a log grid of the same ``grid_points`` rates with the same ratio ``grid_step``, starting at its
    ``grid_start``. At each batch size of the ladder:

    1. every optimizer x rate trains with seed 0 in one vectorized program (:func:`optimizer_bank`), stopped as
       soon as every optimizer has a trial at the target (the first to reach it is its tuned trial);
    2. every optimizer's tuned rate trains with seeds ``1 .. seeds - 1`` in a second program (stopped once all
       reach the target); at the smallest batch size the first of these records the gradient noise scale for
       the optimizers in ``noise_optimizers``.

    Both programs are compiled once and serve the whole ladder (batch size, budget and rates are traced), so
    a workload costs two compilations whatever the number of optimizers and batch sizes. The budget, schedule
    and stop rule are :func:`sweep`'s; so is a never-reached trial (``inf``, never a number). Each batch size
    is cached as one JSON file under ``cache_dir``, keyed by everything that defines it. In a dry run one trial
    trains for two steps at the *smallest* batch size only, with the first optimizer only, and nothing is
    cached: the program is the same for every batch size of the ladder (a batch is a traced number of
    micro-batches, and the device memory is set by the micro-batch), so that one run checks every shape the full
    run compiles.
    """
    import time

    from lamb import profiles
    from lamb.experiments import vectorized
    from lamb.experiments.train import _jsonable

    names = list(optimizers)
    if not names:
        raise ValueError("optimizers must name at least one optimizer")
    if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 1:
        raise ValueError(f"grid_points must be a positive int, got {grid_points!r}")
    if not (isinstance(grid_step, (int, float)) and math.isfinite(grid_step) and grid_step > 1):
        raise ValueError(f"grid_step must be a number > 1, got {grid_step!r}")
    missing = [n for n in names if n not in grid_start]
    if missing:
        raise ValueError(f"grid_start has no rate for {missing}; it has {sorted(grid_start)}")
    grids = {n: [float(grid_start[n]) * float(grid_step) ** k for k in range(grid_points)] for n in names}
    for n, g in grids.items():
        if not all(math.isfinite(v) and v > 0 for v in g):
            raise ValueError(f"grid_start[{n!r}] must be a positive rate, got {grid_start[n]!r}")
    unknown = [n for n in noise_optimizers if n not in names]
    if unknown:
        raise ValueError(f"noise_optimizers {unknown} are not among the optimizers {names}")
    ladder, metric, hib = _check_protocol(task, batch_sizes, seeds, warmup_fraction, metric)
    dry = profiles.dry_run()
    if dry:  # one program checks every shape; the bank's other optimizers only add elementwise passes
        ladder, names = ladder[:1], names[:1]
    bank = optimizer_bank([optimizers[n] for n in names])
    configs = {n: getattr(optimizers[n], "config", {"optimizer": n}) for n in names}
    base = {"task": task.config, "optimizers": configs, "grids": grids, "target": float(target), "metric": metric,
            "seeds": seeds, "examples": examples, "min_steps": min_steps, "evaluations": evaluations,
            "max_steps": max_steps, "warmup_fraction": warmup_fraction, "micro_batch": micro_batch,
            "noise_scale_examples": noise_scale_examples, "noise_optimizers": list(noise_optimizers),
            "protocol": "bank-1"}
    cache = None if (cache_dir is None or dry) else Path(cache_dir)
    per_name: dict[str, list] = {n: [] for n in names}
    tune_trials = [(lr, 0) for n in names for lr in grids[n]]
    tune_variants = [i for i, n in enumerate(names) for _ in grids[n]]
    for B in ladder:
        steps, every, path, payload = _batch_budget_and_cache(cache, "bank", base, B, examples, min_steps,
                                                              evaluations, max_steps)
        if payload is not None:
            for n in names:
                per_name[n].append(ScalingResult.from_json({"optimizer": n, "config": base,
                                                            "batches": [payload[n]]}).batches[0])
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        kw = dict(batch_size=B, steps=steps, eval_every=every, warmup_steps=int(warmup_fraction * steps),
                  micro_batch=None if micro_batch is None else min(micro_batch, B), target=float(target),
                  metric=metric)
        tune = vectorized.run_trials(task, bank, tune_trials, stop="any", variants=tune_variants, **kw)
        grid_steps = tune.steps_to_target()
        last = np.array([h[metric][-1] for h in tune.histories])
        rows = {}
        for i, n in enumerate(names):
            idx = [j for j, v in enumerate(tune.variants or [0]) if v == i]  # a dry run keeps one trial
            if not idx:
                rows[n] = (math.nan, False, [math.inf] * seeds, [], grid_steps[:0])
                continue
            pick = choose_trial([tune.trials[j][0] for j in idx], grid_steps[idx], last[idx], hib)
            if pick is None:
                rows[n] = (math.nan, False, [math.inf] * seeds, [], grid_steps[idx])
            else:
                j = idx[pick]
                lr = tune.trials[j][0]
                rows[n] = (lr, grid_points > 1 and lr in (grids[n][0], grids[n][-1]), [float(grid_steps[j])],
                           [tune.histories[j]], grid_steps[idx])
        tuned = [n for n in names if not math.isnan(rows[n][0])]
        if seeds > 1 and tuned and not dry:
            noisy = [n for n in tuned if n in noise_optimizers and noise_scale_examples and B == ladder[0]]
            order = noisy + [n for n in tuned if n not in noisy]  # noise-scale trials first
            trials = [(rows[n][0], s) for n in order for s in range(1, seeds)]
            variants = [names.index(n) for n in order for _ in range(1, seeds)]
            noise_trials = [k for k, n in enumerate(order) for s in range(1, seeds) if n in noisy and s == 1]
            more = vectorized.run_trials(task, bank, trials, stop="all", variants=variants,
                                         noise_scale_trials=(max(noise_trials) + 1) if noise_trials else 0,
                                         noise_scale_examples=noise_scale_examples or 256, **kw)
            more_steps = more.steps_to_target()
            for k, n in enumerate(order):
                sl = slice(k * (seeds - 1), (k + 1) * (seeds - 1))
                rows[n][2].extend(float(v) for v in more_steps[sl])
                hist = more.histories[sl]
                if n not in noisy:  # noise trials of other optimizers recorded on the way
                    hist = [{key: v for key, v in h.items() if key not in _NOISE_KEYS} for h in hist]
                rows[n][3].extend(hist)
        seconds = time.perf_counter() - t0
        payload = {}
        for n in names:
            lr, at_edge, seed_steps, histories, gsteps = rows[n]
            result = BatchResult(B, steps, every, grids[n], [float(v) for v in gsteps], float(lr), bool(at_edge),
                                 list(range(len(seed_steps))), seed_steps, histories, seconds)
            per_name[n].append(result)
            payload[n] = _jsonable(vars(result))
            if verbose:
                print(f"{n:>9s} B={B:6d}: tuned lr {lr:.3g}{' (edge)' if at_edge else ''}, steps {seed_steps}")
        if verbose:
            print(f"batch {B}: {seconds:.1f} s, {time.process_time() - c0:.1f} s CPU time")
        if path is not None:
            _write_json(path, payload)
    return {n: ScalingResult(n, per_name[n], dict(base, optimizer=configs[n])) for n in names}


_NOISE_KEYS = ("noise_scale", "gradient_sq_norm", "trace_covariance")


def frequency_baseline(task) -> dict:
    """The trivial baselines of a task's held-out split, from the training split's label frequencies: the
    ``accuracy`` of always predicting the most frequent label (token) and the cross-entropy ``loss`` (nats) of
    predicting the frequency distribution itself -- the best any model can do that ignores its input. For MLM
    the labels are the masked positions of the evaluation sequences and the frequencies those of the ordinary
    tokens of the training sequences."""
    if task.kind == "mlm":
        train = np.asarray(task.train_inputs).ravel()
        train = train[train >= 5]
        size = int(task.vocab_size)
    else:
        train = np.asarray(task.train_labels).ravel()
        size = int(train.max()) + 1
    labels = np.asarray(task.eval_labels).ravel()
    labels = labels[labels >= 0]
    if labels.size == 0 or train.size == 0:
        raise ValueError("the task has no labelled evaluation examples or no training labels")
    counts = np.bincount(train, minlength=size).astype(np.float64)
    p = counts / counts.sum()
    with np.errstate(divide="ignore"):
        loss = float(-np.mean(np.log(p[labels])))
    return {"accuracy": float(np.mean(labels == int(np.argmax(counts)))), "loss": loss}


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


# ---------------------------------------------------------------------------------------------------------------
# Summaries and figures of a workload's payload: {"label", "metric", "target", "results": {optimizer: JSON}}
# (functions of the result data, so that a shipped full-scale result file redraws the same figures)
# ---------------------------------------------------------------------------------------------------------------

OPTIMIZER_LABELS = {"lamb": "LAMB", "lars": "LARS", "adamw": "AdamW", "nesterov": "Nesterov"}


def results_of(workload: Mapping) -> dict[str, ScalingResult]:
    """``{optimizer: ScalingResult}`` of a workload payload (JSON or already parsed)."""
    return {name: r if isinstance(r, ScalingResult) else ScalingResult.from_json(r)
            for name, r in workload["results"].items()}


def summarize(workload: Mapping, samples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    r"""Per optimizer: the fit (``s_min``, ``b_crit``, ``bound``), the bootstrap ``interval`` of
    :math:`B_\text{crit}` over seeds and its ``samples``, the ``regions`` of the ladder, the tuned rate's
    ``lr_exponent``, and the ``violations`` and ``inconclusive`` points of :func:`check_steps_never_rise`. An optimizer whose tuned trials
    reached the target at fewer than three batch sizes gets ``fit = None``."""
    out = {}
    for name, r in results_of(workload).items():
        b, med = r.batch_sizes, r.median_steps()
        entry = {"batch_size": b.tolist(), "median_steps": med.tolist(), "tuned_lr": r.tuned_lrs().tolist(),
                 "regions": regions(b, med) if len(b) > 1 else [],
                 **check_steps_never_rise(b, [x.seed_steps for x in r.batches], [x.eval_every for x in r.batches],
                                          [x.steps_budget for x in r.batches]),
                 "at_edge": [x.batch_size for x in r.batches if x.at_edge]}
        try:
            fit = r.fit()
        except ValueError:
            entry.update(fit=None, interval=(math.nan, math.nan), samples=np.full(samples, np.nan))
        else:
            boot = r.bootstrap(samples, seed)
            finite = np.isfinite(boot)
            entry.update(fit=fit, samples=boot,
                         interval=percentile_interval(boot, level) if finite.any() else (math.nan, math.nan))
        try:
            entry["lr_exponent"] = learning_rate_exponent(b, r.tuned_lrs())
        except ValueError:
            entry["lr_exponent"] = math.nan
        out[name] = entry
    return out


def critical_batch_ratio(summary: Mapping, numerator: str, denominator: str, level: float = 0.95) -> dict:
    r""":math:`B_\text{crit}` of ``numerator`` over that of ``denominator``: the ratio of the fits and the
    percentile interval of the ratio of independent bootstrap resamples (``nan`` where a fit is missing)."""
    a, b = summary[numerator], summary[denominator]
    if a["fit"] is None or b["fit"] is None:
        return {"ratio": math.nan, "interval": (math.nan, math.nan), "bounds": (None, None)}
    ratios = np.asarray(a["samples"]) / np.asarray(b["samples"])
    interval = percentile_interval(ratios, level) if np.isfinite(ratios).any() else (math.nan, math.nan)
    return {"ratio": a["fit"].b_crit / b["fit"].b_crit, "interval": interval,
            "bounds": (a["fit"].bound, b["fit"].bound)}


def _styles():
    from lamb.experiments import plotting

    return dict(zip(OPTIMIZERS, plotting.style_cycle()))


def plot_steps(workload: Mapping, *, ax=None, examples: bool = False, summary: Mapping | None = None):
    """Steps (or examples) to the target against batch size, log-log: the median over seeds of every
    optimizer's tuned trial with its range (bars), the perfect-scaling line through its smallest batch, the
    fit :math:`S_\\text{min}(1 + B_\\text{crit}/B)` (thin), and open markers at the top for batch sizes where
    the tuned trial never reached the target."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots()[1]
    styles = _styles()
    tops = []
    for name, r in results_of(workload).items():
        st = styles[name]
        b = r.batch_sizes
        scale = b if examples else np.ones_like(b)
        med = r.median_steps() * scale
        lo = np.array([x.summary["min"] for x in r.batches]) * scale
        hi = np.array([x.summary["max"] for x in r.batches]) * scale
        ok = np.isfinite(med)
        hi_ok = np.where(np.isfinite(hi), hi, med)
        ax.errorbar(b[ok], med[ok], yerr=[med[ok] - lo[ok], hi_ok[ok] - med[ok]], marker="o", capsize=2,
                    color=st["color"], linestyle=st["linestyle"], label=OPTIMIZER_LABELS.get(name, name))
        tops.extend(med[ok])
        if ok.any():
            i = np.flatnonzero(ok)[0]
            ideal = np.full_like(b, med[i]) if examples else med[i] * b[i] / b
            ax.plot(b, ideal, color=st["color"], linestyle=":", linewidth=0.9, alpha=0.6)
        fit = None if summary is None else summary.get(name, {}).get("fit")
        if fit is not None:
            bb = np.geomspace(b.min(), b.max(), 100)
            ax.plot(bb, fit.examples(bb) if examples else fit.steps(bb), color=st["color"], linewidth=0.7, alpha=0.8)
        if (~ok).any():
            ax.plot(b[~ok], np.full((~ok).sum(), max(tops or [1.0]) * 1.6), marker="o", markerfacecolor="none",
                    linestyle="none", color=st["color"])
    ax.plot([], [], color="0.4", linestyle=":", linewidth=0.9, label="perfect scaling")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size $B$")
    what = "examples" if examples else "steps"
    ax.set_ylabel(f"{what} to {workload['metric'].replace('_', ' ')} {'<=' if 'loss' in workload['metric'] else '>='} "
                  f"{workload['target']:g}")
    ax.set_title(workload["label"])
    ax.legend(ncols=2)
    return ax


def plot_learning_rates(workload: Mapping, *, ax=None):
    """The tuned peak learning rate against batch size per optimizer (log-log), normalised by the rate at the
    smallest batch, with the linear (:math:`\\propto B`) and square-root (:math:`\\propto \\sqrt B`) rules."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots()[1]
    styles = _styles()
    b_all = []
    for name, r in results_of(workload).items():
        b, lr = r.batch_sizes, r.tuned_lrs()
        ok = np.isfinite(lr)
        if not ok.any():
            continue
        i = np.flatnonzero(ok)[0]
        edge = np.array([x.at_edge for x in r.batches])
        st = styles[name]
        ax.plot(b[ok], lr[ok] / lr[i], marker="o", color=st["color"], linestyle=st["linestyle"],
                label=OPTIMIZER_LABELS.get(name, name))
        if (edge & ok).any():
            ax.plot(b[edge & ok], lr[edge & ok] / lr[i], marker="s", markersize=9, markerfacecolor="none",
                    linestyle="none", color=st["color"])
        b_all.extend(b)
    b = np.array(sorted(set(b_all)))
    if not b.size:  # no tuned rate reached the target anywhere (e.g. a dry run): nothing to draw on log axes
        ax.text(0.5, 0.5, "no tuned rate reached the target", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(workload["label"])
        return ax
    if b.size:
        ax.plot(b, b / b[0], color="0.3", linestyle="--", linewidth=1.0, label="linear rule")
        ax.plot(b, np.sqrt(b / b[0]), color="0.3", linestyle=":", linewidth=1.0, label="square-root rule")
    ax.plot([], [], marker="s", markerfacecolor="none", linestyle="none", color="0.4", label="at the grid's edge")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("batch size $B$")
    ax.set_ylabel("tuned peak rate / rate at smallest $B$")
    ax.set_title(workload["label"])
    ax.legend(ncols=2)
    return ax


_REGION_COLORS = {"perfect": "#009E73", "diminishing": "#E69F00", "maximal": "#D55E00", "unknown": "0.85"}


def region_legend_handles():
    """The legend entries of :func:`plot_regions` (for one legend shared by several panels)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label={"perfect": "perfect scaling", "diminishing": "diminishing returns",
                                     "maximal": "maximal data parallelism", "unknown": "target not reached"}[k])
               for k, c in _REGION_COLORS.items()]
    handles.append(plt.Line2D([], [], color="black", marker="|", markersize=12, label="$B_\\mathrm{crit}$ (95% interval)"))
    handles.append(plt.Line2D([], [], color="black", marker=">", linestyle="none",
                              label="$B_\\mathrm{crit}$ beyond the ladder (a bound)"))
    return handles


def plot_regions(workload: Mapping, summary: Mapping, *, ax=None, legend: bool = True):
    """Every optimizer's ladder as a strip of its steps between batch sizes, coloured by the region read off
    the data (:func:`regions`), with its fitted :math:`B_\\text{crit}` (a bar) and bootstrap interval. With
    ``legend=False`` the caller draws one legend (:func:`region_legend_handles`), e.g. below a figure."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots()[1]
    names = list(summary)
    ladder = []
    for row, name in enumerate(names):
        s = summary[name]
        b = np.asarray(s["batch_size"])
        for k, region in enumerate(s["regions"]):
            ax.barh(row, b[k + 1] - b[k], left=b[k], height=0.6, color=_REGION_COLORS[region], edgecolor="white")
        fit = s.get("fit")
        if fit is not None and fit.bound is not None:  # only a bound: an arrow at that end of the ladder
            ax.plot([b[-1] if fit.bound == "above" else b[0]], [row], marker=">" if fit.bound == "above" else "<",
                    markersize=10, color="black", linestyle="none")
        elif fit is not None:
            lo, hi = s["interval"]
            if np.isfinite(lo):
                ax.plot([lo, hi], [row, row], color="black", linestyle="-", linewidth=1.2)
            ax.plot([fit.b_crit], [row], marker="|", markersize=16, color="black", linestyle="none")
        ladder.extend(b.tolist())
    ax.set_yticks(range(len(names)), [OPTIMIZER_LABELS.get(n, n) for n in names])
    ax.set_xscale("log", base=2)
    if ladder:  # the ladder's range; an interval reaching beyond it is cut at the frame
        ax.set_xlim(min(ladder) / 1.25, max(ladder) * 1.25)
    ax.set_xlabel("batch size $B$")
    ax.set_title(workload["label"])
    if legend:  # below the axes; the constrained layout makes room for it, so a saved figure never clips it
        ax.legend(handles=region_legend_handles(), loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3,
                  fontsize=8)
        ax.figure.set_layout_engine("constrained")
    ax.grid(False)
    return ax


def plot_noise_scale(workload: Mapping, summary: Mapping | None = None, *, ax=None):
    """McCandlish et al.'s :math:`B_\\text{simple}` along the tuned run at the smallest batch size, against
    the examples seen, for every optimizer that recorded it, with each optimizer's fitted
    :math:`B_\\text{crit}` as a horizontal line."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots()[1]
    styles = _styles()
    for name, r in results_of(workload).items():
        st = styles[name]
        for h in (r.batches[0].histories if r.batches else []):
            if "noise_scale" in h:
                x = np.asarray(h["step"]) * r.batches[0].batch_size
                y = np.asarray(h["noise_scale"])
                ok = np.isfinite(y) & (y > 0)
                ax.plot(x[ok], y[ok], color=st["color"], linestyle=st["linestyle"],
                        label=f"$B_\\mathrm{{simple}}$, {OPTIMIZER_LABELS.get(name, name)}")
                break
        fit = None if summary is None else summary.get(name, {}).get("fit")
        if fit is not None and fit.bound is None:
            ax.axhline(fit.b_crit, color=st["color"], linewidth=0.8, alpha=0.7)
    ax.plot([], [], color="0.4", linewidth=0.8, label="fitted $B_\\mathrm{crit}$")
    ax.set_yscale("log")
    ax.set_xlabel("examples seen")
    ax.set_ylabel("batch size")
    ax.set_title(workload["label"])
    ax.legend(fontsize=8)
    return ax


def plot_mlperf(rcps: Mapping, *, ax=None):
    """The MLPerf reference convergence points converted to steps to target against batch size, with their
    fits and perfect-scaling lines (the runs were retuned at every batch size)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots()[1]
    for (name, entry), color in zip(rcps.items(), ("#0072B2", "#D55E00")):
        b, s = entry["batch_size"], entry["steps"]
        fit = fit_critical_batch(b, s)
        label = {"resnet50_lars": "ResNet-50, LARS", "bert_large_lamb": "BERT-Large, LAMB"}.get(name, name)
        ax.plot(b, s, marker="o", linestyle="none", color=color,
                label=f"{label} ($B_\\mathrm{{crit}}$ ~ {fit.b_crit:,.0f})")
        bb = np.geomspace(b.min(), b.max(), 100)
        ax.plot(bb, fit.steps(bb), color=color, linewidth=0.9)
        ax.plot(b, s[0] * b[0] / b, color=color, linestyle=":", linewidth=0.9, alpha=0.6)
    ax.plot([], [], color="0.4", linestyle=":", linewidth=0.9, label="perfect scaling")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size $B$")
    ax.set_ylabel("steps to the MLPerf target")
    ax.set_title("MLPerf reference convergence points")
    ax.legend()
    return ax
