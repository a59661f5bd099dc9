r"""A cost model of one data-parallel training step: compute, plus the all-reduce of the gradient.

The paper's Figure 8 reports *scaling efficiency*: the speed-up from 16 to 1024 TPU chips divided by the 64-fold
growth in chips. Its time per step is the work of one chip on its share of the batch plus the communication that
makes every chip hold the same averaged gradient. This module states that second part with the standard
alpha-beta model (Hockney 1994; Thakur, Rabenseifner and Gropp 2005) of a **ring all-reduce** of :math:`n` bytes
over :math:`p` workers: a reduce-scatter and an all-gather, each :math:`p - 1` rounds that move
:math:`n / p` bytes per link,

.. math:: T_{\text{all-reduce}}(n, p) = 2 (p - 1)\,\alpha + 2\,\frac{p - 1}{p}\,\frac{n}{\beta},

with :math:`\alpha` the latency of one message (seconds) and :math:`\beta` the bandwidth of one link
(bytes per second). For large :math:`p` the bandwidth term tends to :math:`2 n / \beta`, independent of
:math:`p`: that is why the ring is the default collective of data-parallel training. A LAMB step all-reduces the
same gradient as an AdamW step; its trust ratios need only local norms of replicated parameters under plain data
parallelism (and one scalar all-reduce per layer when parameters are sharded).

The model is a *labelled model*, not a measurement: every figure drawn with it says which alpha, beta and
per-step compute time it assumed.
"""

from __future__ import annotations

import math

__all__ = ["ring_allreduce_time", "data_parallel_step_time", "speedup_and_efficiency"]


def _check_positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        allowed = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return v


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    v = int(value)
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return v


def ring_allreduce_time(num_bytes: float, workers: int, *, latency_s: float, bandwidth_bytes_per_s: float) -> float:
    r"""Seconds for a ring all-reduce of ``num_bytes`` over ``workers``:
    :math:`2 (p-1) \alpha + 2 \frac{p-1}{p} \frac{n}{\beta}` (zero for one worker)."""
    n = _check_positive("num_bytes", num_bytes, allow_zero=True)
    p = _check_int("workers", workers)
    alpha = _check_positive("latency_s", latency_s, allow_zero=True)
    beta = _check_positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / beta


def data_parallel_step_time(compute_s_per_example: float, global_batch: int, workers: int, gradient_bytes: float,
                            *, latency_s: float, bandwidth_bytes_per_s: float, overlap: float = 0.0) -> float:
    r"""Seconds for one step of data-parallel training with ``global_batch`` examples split evenly over
    ``workers``: the per-worker compute :math:`c\,B/p` plus the gradient all-reduce, of which a fraction
    ``overlap`` in :math:`[0, 1]` is hidden behind the backward pass."""
    c = _check_positive("compute_s_per_example", compute_s_per_example)
    p = _check_int("workers", workers)
    b = _check_int("global_batch", global_batch)
    if not 0.0 <= float(overlap) <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap!r}")
    if b % p:
        raise ValueError(f"global_batch ({b}) must be a multiple of workers ({p})")
    comm = ring_allreduce_time(gradient_bytes, p, latency_s=latency_s, bandwidth_bytes_per_s=bandwidth_bytes_per_s)
    return c * b / p + (1.0 - float(overlap)) * comm


def speedup_and_efficiency(base_time: float, time: float, resource_ratio: float) -> tuple[float, float]:
    r"""Speed-up :math:`T_0 / T` and scaling efficiency :math:`(T_0 / T) / r` for ``resource_ratio`` :math:`r`
    times the resources (the paper's Figure 8: 49.1 times faster on 64 times the chips is 76.7%)."""
    t0 = _check_positive("base_time", base_time)
    t = _check_positive("time", time)
    r = _check_positive("resource_ratio", resource_ratio)
    speedup = t0 / t
    return speedup, speedup / r
