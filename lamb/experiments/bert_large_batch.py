r"""BERT at large batch on the harness: the paper's Table 1 protocol, the mixed-batch two-phase recipe, and the
summaries and figures of ``notebooks/bert_large_batch.ipynb`` (You et al. 2020, section 4.1, Figures 5-14).

Everything trains through :func:`lamb.experiments.train.fit`; this module only chains its calls:

- :func:`optimizer` -- LAMB (:func:`lamb.jax.lamb`) or AdamW (``optax.adamw``) with BERT's exclusions (biases
  and LayerNorm parameters get neither weight decay nor a trust ratio), whose learning-rate schedule
  (:func:`lamb.experiments.schedules.two_phase_rate`, one or two phases) lives in the optimizer state through
  ``optax.inject_hyperparams``. The compiled step then depends only on the optimizer, the batch shape and
  the accumulation, so runs that differ in rate, schedule length or seed share one compiled program (with
  :func:`enable_compilation_cache`, across :func:`~lamb.experiments.train.fit` calls too).
- :func:`train_phases` -- one run made of phases (a sequence length, a batch, a number of steps each):
  ``fit`` once per phase, parameters *and* optimizer state carried from phase to phase, histories joined on
  a global step and an examples-seen axis, the time of every step measured.
- :func:`ladder` and :func:`grid` -- the sweeps: a batch ladder at a fixed budget of examples (the paper's
  fixed epochs) and a learning-rate grid. In a dry run (:func:`lamb.profiles.dry_run`) each trains one trial
  and every run stops after :data:`lamb.profiles.DRY_RUN_STEPS` steps per phase.
- Summaries (:func:`summarize`, :func:`table1`, :func:`ranking_disagreements`, :func:`scaling_model`) and
  figures (``plot_*``) take the JSON-able result data (:func:`run_record`), not notebook globals, so a
  shipped full-scale result file redraws them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb import profiles
from lamb.experiments import communication, schedules, train

__all__ = ["OPTIMIZERS", "LAYER_TYPES", "EXCLUDED", "Phase", "adaptation_mask", "layer_type", "optimizer",
           "mixed_precision", "enable_compilation_cache", "batch_ladder", "train_phases", "ladder", "grid",
           "run_record", "summarize", "table1", "ranking_disagreements", "scaling_model", "markdown_table",
           "plot_loss_vs_examples", "plot_table1", "plot_trust_ratios", "plot_validation_ranking",
           "plot_scaling_efficiency", "plot_two_phase", "draw_summary"]

OPTIMIZERS = ("lamb", "adamw")
#: The layer types of the trust-ratio figure, in drawing order.
LAYER_TYPES = ("embeddings", "attention query", "attention key", "attention value", "attention output", "FFN",
               "MLM head")
#: The label of the parameters BERT's LAMB leaves out of layer adaptation (and weight decay).
EXCLUDED = "LayerNorm and biases (excluded)"


# ---------------------------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------------------------

def adaptation_mask(params):
    """True for the arrays that get weight decay and a trust ratio: every matrix (kernels, embeddings); False for
    vectors (biases, LayerNorm scales and offsets), BERT's ``exclude_from_weight_decay`` and
    ``exclude_from_layer_adaptation`` lists."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def layer_type(name: str) -> str:
    """The type of a parameter of :func:`lamb.experiments.models.bert` from its path name (as in
    ``TrainResult.history["trust_ratio"]``): one of :data:`LAYER_TYPES`, or :data:`EXCLUDED` for biases and
    LayerNorm parameters."""
    parts = name.split("/")
    leaf = parts[-1]
    if leaf in ("bias", "scale", "output_bias") or any(p.endswith("norm") for p in parts):
        return EXCLUDED
    if parts[0] == "embeddings":
        return "embeddings"
    if parts[0] == "mlm_head":
        return "MLM head"
    if "attention" in parts:
        return "attention " + parts[-2]
    if "mlp" in parts:
        return "FFN"
    raise ValueError(f"no BERT layer type for parameter {name!r}")


def optimizer(name: str, *, peak_1: float, warmup_1: int, steps_1: int, peak_2: float = 0.0, warmup_2: int = 0,
              steps_2: int = 1, weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-6) -> optax.GradientTransformation:
    r"""``name`` (``"lamb"`` or ``"adamw"``) with the rate :func:`~lamb.experiments.schedules.two_phase_rate`
    (warmup to ``peak_1`` over ``warmup_1`` steps, linear decay to 0 at ``steps_1``; then re-warmed from 0 to
    ``peak_2``, decayed over ``steps_2``; a one-phase run never reaches phase 2), BERT's exclusions
    (:func:`adaptation_mask`), and the schedule's numbers injected into the state."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    # validates the numbers (the traced form below does not)
    schedules.two_phase_warmup_polynomial_decay(peak_1, warmup_1, steps_1, peak_2, warmup_2, steps_2)

    def factory(peak_1, warmup_1, steps_1, peak_2, warmup_2, steps_2):
        def rate(count):
            return schedules.two_phase_rate(count, peak_1, warmup_1, steps_1, peak_2, warmup_2, steps_2)
        if name == "lamb":
            from lamb import jax as lj

            return lj.lamb(rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=adaptation_mask,
                           layer_adaptation_mask=adaptation_mask)
        return optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=adaptation_mask)

    numbers = dict(peak_1=peak_1, warmup_1=warmup_1, steps_1=steps_1, peak_2=peak_2, warmup_2=warmup_2,
                   steps_2=steps_2)
    return optax.inject_hyperparams(factory)(**{k: jnp.float32(v) for k, v in numbers.items()})


def _rate_function(schedule: Mapping):
    keys = ("peak_1", "warmup_1", "steps_1", "peak_2", "warmup_2", "steps_2")
    return lambda count: schedules.two_phase_rate(count, *(float(schedule[k]) for k in keys))


def _continue_from(tx, state):
    """``tx`` whose ``init`` returns ``state``: the next phase's ``fit`` continues the optimizer."""
    return optax.GradientTransformation(lambda params: state, tx.update)


def mixed_precision(model, compute_dtype=jnp.bfloat16):
    """``model`` computing in ``compute_dtype`` (bf16 on GPU/TPU) from float32 parameters: the parameters are
    cast on the way in and the logits back to float32 for the loss, so gradients, parameters and the
    optimizer's moments stay float32 (the master-weights scheme of mixed-precision training). Floating inputs
    (images, signals: the ResNet) are cast to ``compute_dtype`` as well."""
    from lamb.experiments.models import Model

    def cast(params):
        return jax.tree.map(lambda p: p.astype(compute_dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                            params)

    def apply(params, inputs):  # floating inputs (images, signals) are cast too; token ids stay integers
        return model.apply(cast(params), cast(inputs)).astype(jnp.float32)

    apply_masked = None
    if model.apply_masked is not None:
        def apply_masked(params, inputs, labels):
            logits, labels = model.apply_masked(cast(params), inputs, labels)
            return logits.astype(jnp.float32), labels

    config = {**model.config, "compute_dtype": jnp.dtype(compute_dtype).name}
    return Model(model.name, model.init, apply, config, apply_masked)


def enable_compilation_cache(directory) -> None:
    """Keep compiled steps in ``directory`` (JAX's persistent compilation cache), so that a second ``fit`` of the
    same program (another seed, rate or schedule length) loads it instead of compiling again."""
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def batch_ladder(base_batch_size: int, rungs: int, factor: int = 2) -> list[int]:
    """``[B0, factor B0, factor^2 B0, ...]``, ``rungs`` sizes (Table 1 doubles the batch from 512 to 32K)."""
    for n, v, lo in (("base_batch_size", base_batch_size, 1), ("rungs", rungs, 1), ("factor", factor, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{n} must be an int >= {lo}, got {v!r}")
    return [base_batch_size * factor ** k for k in range(rungs)]


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One phase of a run: ``steps`` steps of ``batch_size`` sequences of ``data`` (an
    :class:`~lamb.experiments.text.MLMData`), each step in ``accumulation_steps`` micro-batches."""

    data: object
    batch_size: int
    steps: int
    accumulation_steps: int = 1


def train_phases(model, name: str, phases: Sequence[Phase], schedule: Mapping, *, seed: int = 0,
                 evaluations: int = 4, eval_batch_size: int = 128, eval_batches: int | None = None,
                 optimizer_options: Mapping | None = None, label: str = "", progress=False, result_path=None):
    """Train ``model`` with :func:`optimizer` ``(name, **schedule)`` through ``phases``, one ``fit`` per phase, the
    parameters and optimizer state carried over; return :func:`run_record`'s dict.

    ``evaluations``: validation passes per phase besides its start and end (on the phase's own validation
    split, ``eval_batches`` batches of ``eval_batch_size``). Every step is timed (the device is synchronised
    after each step). In a dry run each phase stops after :data:`lamb.profiles.DRY_RUN_STEPS` steps.
    """
    options = dict(optimizer_options or {})
    tx = optimizer(name, **schedule, **options)
    rate = _rate_function({"peak_2": 0.0, "warmup_2": 0, "steps_2": 1, **schedule})
    params, state, offset, examples = None, None, 0, 0
    parts = []
    for i, phase in enumerate(phases):
        steps = min(phase.steps, profiles.DRY_RUN_STEPS) if profiles.dry_run() else phase.steps
        times = []

        def timer(step, p, s, times=times):
            jax.block_until_ready(p)
            times.append(time.perf_counter())

        t0 = time.perf_counter()
        start = offset
        result = train.fit(model, tx if state is None else _continue_from(tx, state), phase.data,
                           batch_size=phase.batch_size, steps=steps, eval_every=max(1, steps // (evaluations + 1)),
                           seed=seed, params=params, accumulation_steps=phase.accumulation_steps,
                           learning_rate=lambda c, start=start: rate(c + start), eval_batch_size=eval_batch_size,
                           eval_batches=eval_batches, progress=progress, callback=timer,
                           config={"optimizer": name, **{k: float(v) for k, v in schedule.items()}, "phase": i})
        step_times = np.diff(np.concatenate([[t0], times]))
        params, state = result.params, result.opt_state
        parts.append((phase, result, step_times, offset, examples))
        offset += steps
        examples += steps * phase.batch_size
    return run_record(model, name, schedule, parts, seed=seed, label=label, result_path=result_path)


def run_record(model, name, schedule, parts, *, seed, label, result_path=None) -> dict:
    """The JSON-able record of a run: configuration, per-step and per-evaluation history on a global step and
    examples axis, per-layer trust ratios, per-phase timings (median step time, the first step -- compile --
    left out; ``train_time_s`` = median step time x steps, so compilation and evaluations do not count), and the
    environment."""
    h = {k: [] for k in ("step", "examples", "loss", "accuracy", "learning_rate", "eval_step", "eval_examples",
                         "test_loss", "test_accuracy", "eval_phase")}
    trust: dict[str, list] = {}
    phases = []
    for i, (phase, result, step_times, offset, examples) in enumerate(parts):
        r = result.history
        h["step"] += (r["step"] + offset).tolist()
        h["examples"] += (examples + r["step"] * phase.batch_size).tolist()
        for k in ("loss", "accuracy", "learning_rate"):
            h[k] += r[k].tolist()
        h["eval_step"] += (r["eval_step"] + offset).tolist()
        h["eval_examples"] += (examples + r["eval_step"] * phase.batch_size).tolist()
        h["test_loss"] += r["test_loss"].tolist()
        h["test_accuracy"] += r["test_accuracy"].tolist()
        h["eval_phase"] += [i] * len(r["eval_step"])
        for layer, v in r["trust_ratio"].items():
            trust.setdefault(layer, []).extend(v.tolist())
        steady = step_times[1:] if len(step_times) > 1 else step_times
        phases.append({"seq_len": int(phase.data.seq_len), "batch_size": int(phase.batch_size),
                       "steps": int(len(r["step"])), "planned_steps": int(phase.steps),
                       "accumulation_steps": int(phase.accumulation_steps),
                       "median_step_s": float(np.median(steady)),
                       "train_time_s": float(np.median(steady) * len(step_times)),
                       "fit_wall_s": float(result.environment["wall_time_s"])})
    from lamb.experiments.models import count_params, layer_names

    params = parts[-1][1].params
    names = layer_names(params)
    record = {"label": label, "optimizer": name, "seed": int(seed), "schedule": {k: float(v) for k, v in
                                                                                 schedule.items()},
              "model": dict(model.config), "num_params": int(count_params(params)),
              "excluded_parameters": [n for n in names if layer_type(n) == EXCLUDED],
              "phases": phases, "history": h, "trust_ratio": trust,
              "environment": parts[-1][1].environment, "dry_run": profiles.dry_run()}
    if result_path is not None:
        import json
        from pathlib import Path

        path = Path(result_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, allow_nan=True))
    return record


def ladder(model, name: str, data, batch_sizes: Sequence[int], *, total_examples: int, peak_lr: float,
           base_batch_size: int, warmup_steps: int, seeds: Sequence[int] = (0,), rule: str = "sqrt",
           micro_batch: int | None = None, results_dir=None, label: str = "", done: Mapping | None = None,
           **kwargs) -> dict:
    r"""Table 1's protocol: at every batch :math:`B` of ``batch_sizes``, ``total_examples / B`` steps (a fixed
    budget of examples, the paper's fixed epochs), the peak rate ``peak_lr`` scaled from ``base_batch_size`` by
    ``rule`` (the square root) and ``warmup_steps`` steps of warmup at every batch (the linear-epoch rule:
    warmup epochs grow with :math:`B`, so warmup steps stay put); nothing retuned. Returns
    ``{(B, seed): record}``; a dry run trains only the first batch size and seed. ``done``: records of runs
    already trained with these settings (e.g. the tuning run at ``B0``), ``{(B, seed): record}``, reused."""
    out = {}
    trials = [(b, s) for b in batch_sizes for s in seeds]
    for b, s in trials[:1] if profiles.dry_run() else trials:
        if done and (b, s) in done:
            out[(b, s)] = done[(b, s)]
            continue
        steps = total_examples // b
        if steps <= warmup_steps:
            raise ValueError(f"batch {b}: the budget of {total_examples} examples gives {steps} steps, not more "
                             f"than the {warmup_steps} warmup steps; raise total_examples or lower the batch")
        peak = schedules.scale_learning_rate(peak_lr, b, base_batch_size, rule)
        schedule = {"peak_1": peak, "warmup_1": warmup_steps, "steps_1": steps}
        acc = max(1, b // micro_batch) if micro_batch else 1
        lab = f"{label or name}-B{b}-lr{peak:.3g}-seed{s}"
        out[(b, s)] = train_phases(model, name, [Phase(data, b, steps, acc)], schedule, seed=s, label=lab,
                                   result_path=None if results_dir is None else f"{results_dir}/{lab}.json",
                                   **kwargs)
    return out


def grid(model, name: str, data, batch_size: int, peak_lrs: Sequence[float], *, total_examples: int,
         warmup_steps: int, seed: int = 0, micro_batch: int | None = None, results_dir=None, label: str = "",
         **kwargs) -> dict:
    """One run per peak rate of ``peak_lrs`` at ``batch_size`` (``total_examples / batch_size`` steps,
    ``warmup_steps`` of warmup): ``{peak_lr: record}``. A dry run trains the first rate only."""
    out = {}
    for lr in peak_lrs[:1] if profiles.dry_run() else peak_lrs:
        out[lr] = ladder(model, name, data, [batch_size], total_examples=total_examples, peak_lr=lr,
                         base_batch_size=batch_size, warmup_steps=warmup_steps, seeds=(seed,),
                         micro_batch=micro_batch, results_dir=results_dir, label=label, **kwargs)[(batch_size, seed)]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------------

def _final(record, metric):
    return float(record["history"][metric][-1])


def summarize(records: Sequence[Mapping]) -> dict:
    """Seed statistics of runs that differ only in seed: mean, min, max, std of the final validation loss and
    masked-token accuracy; steps; mean training time."""
    loss = np.array([_final(r, "test_loss") for r in records])
    acc = np.array([_final(r, "test_accuracy") for r in records])
    return {"seeds": len(records), "steps": int(sum(p["steps"] for p in records[0]["phases"])),
            "loss_mean": float(loss.mean()), "loss_min": float(loss.min()), "loss_max": float(loss.max()),
            "acc_mean": float(acc.mean()), "acc_min": float(acc.min()), "acc_max": float(acc.max()),
            "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
            "train_time_s": float(np.mean([sum(p["train_time_s"] for p in r["phases"]) for r in records])),
            "median_step_s": float(np.mean([r["phases"][0]["median_step_s"] for r in records]))}


def table1(ladder_records: Mapping, target_accuracy: float) -> list[dict]:
    """Rows of our Table 1 from ``{(B, seed): record}``: per batch, :func:`summarize` plus ``reaches``, whether
    the seed-mean final masked-token accuracy is at least ``target_accuracy``."""
    rows = []
    for b in sorted({b for b, _ in ladder_records}):
        row = {"batch_size": b, **summarize([r for (bb, _), r in sorted(ladder_records.items()) if bb == b])}
        row["reaches"] = bool(row["acc_mean"] >= target_accuracy)
        rows.append(row)
    return rows


def largest_reaching(rows: Sequence[Mapping]) -> int | None:
    """The largest batch of a :func:`table1` whose every smaller rung also reached the target (None if B0 did
    not)."""
    best = None
    for row in sorted(rows, key=lambda r: r["batch_size"]):
        if not row["reaches"]:
            break
        best = row["batch_size"]
    return best


def ranking_disagreements(records: Mapping[str, Mapping]) -> list[tuple[str, str]]:
    """Pairs of runs (labels) that the final validation loss and the masked-token accuracy rank in opposite
    orders: ``a`` has the lower loss *and* the lower accuracy (the paper's Figure 5: "even the validation loss is
    not reliable")."""
    labels = sorted(records)
    out = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            dl = _final(records[a], "test_loss") - _final(records[b], "test_loss")
            da = _final(records[a], "test_accuracy") - _final(records[b], "test_accuracy")
            if dl * da > 0:  # lower loss with lower accuracy (or higher with higher)
                out.append((a, b) if dl < 0 else (b, a))
    return out


def scaling_model(rows: Sequence[Mapping], *, base_batch_size: int, compute_s_per_example: float,
                  gradient_bytes: float, latency_s: float, bandwidth_bytes_per_s: float) -> list[dict]:
    r"""Figure 8 as a labelled model: at batch :math:`B`, :math:`p = B / B_0` data-parallel workers each computing
    :math:`B_0` examples per step (``compute_s_per_example`` measured here), plus a ring all-reduce of
    ``gradient_bytes`` (:func:`lamb.experiments.communication.data_parallel_step_time`); time to quality =
    steps :math:`\times` step time for the rows that reached the target (``inf`` otherwise); speed-up over one
    worker at :math:`B_0`, efficiency = speed-up / p."""
    base = next(r for r in rows if r["batch_size"] == base_batch_size)
    t0 = base["steps"] * compute_s_per_example * base_batch_size
    out = []
    for r in rows:
        p = r["batch_size"] // base_batch_size
        step = communication.data_parallel_step_time(compute_s_per_example, r["batch_size"], p, gradient_bytes,
                                                     latency_s=latency_s, bandwidth_bytes_per_s=bandwidth_bytes_per_s)
        t = r["steps"] * step if r["reaches"] else math.inf
        speedup, eff = communication.speedup_and_efficiency(t0, t, p) if math.isfinite(t) else (0.0, 0.0)
        out.append({"batch_size": r["batch_size"], "workers": p, "step_s": step, "time_s": t, "speedup": speedup,
                    "efficiency": eff, "reaches": r["reaches"]})
    return out


def markdown_table(rows: Sequence[Mapping], columns: Mapping[str, object]) -> str:
    """A Markdown table: ``columns`` maps each header to a row key or to a function of the row."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = ""
    for row in rows:
        cells = [c(row) if callable(c) else row[c] for c in columns.values()]
        body += "| " + " | ".join(str(c) for c in cells) + " |\n"
    return head + body


# ---------------------------------------------------------------------------------------------------------------
# Figures (from result data)
# ---------------------------------------------------------------------------------------------------------------

def _ax(ax):
    import matplotlib.pyplot as plt

    return plt.gca() if ax is None else ax


def _smooth(y, window):
    y = np.asarray(y, dtype=float)
    if window <= 1 or len(y) < 2:
        return y
    window = min(window, len(y))
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[window:] - c[:-window]) / window
    return np.concatenate([np.cumsum(y[:window - 1]) / np.arange(1, window), out])


def plot_loss_vs_examples(records: Mapping[int, Mapping], *, ax=None, smooth_examples: int = 0, title=None):
    """Figures 6 and 7: training loss against examples seen, one curve per batch size (``{B: record}``), each
    smoothed over a window of ``smooth_examples`` examples (so every curve averages the same amount of data)."""
    import matplotlib.pyplot as plt

    ax = _ax(ax)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(records), 1)))
    for c, (b, r) in zip(colors, sorted(records.items())):
        h = r["history"]
        ax.plot(h["examples"], _smooth(h["loss"], max(1, smooth_examples // b)), color=c, lw=1.2, label=f"B={b}")
    ax.set_xlabel("examples seen")
    ax.set_ylabel("training MLM loss")
    ax.legend(fontsize=8, ncol=2)
    if title:
        ax.set_title(title)
    return ax


def plot_table1(rows_by_optimizer: Mapping[str, Sequence[Mapping]], target: float, *, ax=None, title=None):
    """Final validation masked-token accuracy against batch size (seed range as error bars), the target line."""
    ax = _ax(ax)
    for name, rows in rows_by_optimizer.items():
        b = np.array([r["batch_size"] for r in rows])
        m = np.array([r["acc_mean"] for r in rows])
        err = np.array([[r["acc_mean"] - r["acc_min"] for r in rows], [r["acc_max"] - r["acc_mean"] for r in rows]])
        ax.errorbar(b, m, yerr=err, marker="o", capsize=3, label=name)
    ax.axhline(target, color="0.4", ls="--", lw=0.9, label="target (B0's quality)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("final validation masked-token accuracy")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def trust_ratios_by_type(record: Mapping) -> dict[str, np.ndarray]:
    """The median over the layers of each :data:`LAYER_TYPES` entry of the per-step trust ratios of a run."""
    groups: dict[str, list] = {}
    for name, v in record["trust_ratio"].items():
        groups.setdefault(layer_type(name), []).append(np.asarray(v, dtype=float))
    return {t: np.median(np.stack(groups[t]), axis=0) for t in LAYER_TYPES if t in groups}


def plot_trust_ratios(record: Mapping, *, ax=None, title=None):
    """BERT's trust ratios through training per layer type (median over layers of the type), against the fraction
    of training; the parameters excluded from adaptation drawn at their ratio of 1."""
    import matplotlib.pyplot as plt

    ax = _ax(ax)
    groups = trust_ratios_by_type(record)
    colors = plt.cm.tab10(np.arange(len(LAYER_TYPES)))
    steps = np.asarray(record["history"]["step"], dtype=float)
    x = steps / steps[-1]
    for c, t in zip(colors, LAYER_TYPES):
        if t in groups:
            ax.plot(x, groups[t], color=c, lw=1.2, label=t)
    ax.plot(x, np.ones_like(x), color="0.5", ls=":", lw=1.2,
            label=f"{EXCLUDED}: {len(record['excluded_parameters'])} arrays, ratio 1")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of training")
    ax.set_ylabel(r"trust ratio $\|x\| / \|r + \lambda x\|$")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def plot_validation_ranking(records: Mapping[str, Mapping], *, ax=None, title=None):
    """Figure 5: final validation MLM loss against masked-token accuracy, one point per run; pairs that the two
    rank in opposite orders joined by a line."""
    ax = _ax(ax)
    markers = {"lamb": "o", "adamw": "s"}
    for label, r in records.items():
        ax.scatter(_final(r, "test_loss"), _final(r, "test_accuracy"), marker=markers.get(r["optimizer"], "^"),
                   s=22, color="C0" if r["optimizer"] == "lamb" else "C1")
    for a, b in ranking_disagreements(records):
        ax.plot([_final(records[a], "test_loss"), _final(records[b], "test_loss")],
                [_final(records[a], "test_accuracy"), _final(records[b], "test_accuracy")], color="C3", lw=0.6,
                alpha=0.6)
    ax.scatter([], [], marker="o", color="C0", label="LAMB")
    ax.scatter([], [], marker="s", color="C1", label="AdamW")
    ax.plot([], [], color="C3", lw=0.6, label="pair ranked differently")
    ax.set_xlabel("final validation MLM loss")
    ax.set_ylabel("final validation masked-token accuracy")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def plot_scaling_efficiency(model_rows: Sequence[Mapping], paper: Mapping | None = None, *, ax=None, title=None):
    """Figure 8: scaling efficiency (speed-up / workers) against workers, ours (a labelled model) and the paper's
    two points recomputed from Table 1's times (``paper``: ``{label: (workers ratio, efficiency)}``)."""
    ax = _ax(ax)
    rows = [r for r in model_rows if r["workers"] > 1]
    ok = [r for r in rows if r["reaches"]]
    ax.plot([r["workers"] for r in ok], [100 * r["efficiency"] for r in ok], "o-", label="ours (model)")
    miss = [r for r in rows if not r["reaches"]]
    if miss:
        ax.plot([r["workers"] for r in miss], [0] * len(miss), "x", color="C3", label="target not reached")
    for i, (label, (ratio, eff)) in enumerate((paper or {}).items()):
        ax.plot([ratio], [100 * eff], "*", ms=11, color=f"C{i + 1}", label=label)
    ax.axhline(100, color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("workers (chips) relative to the base")
    ax.set_ylabel("scaling efficiency (%)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def plot_two_phase(records: Mapping[str, Mapping], *, ax=None, title=None):
    """Validation MLM loss of the two-phase runs against steps, the phase change marked."""
    ax = _ax(ax)
    for i, (label, r) in enumerate(records.items()):
        h = r["history"]
        phase = np.asarray(h["eval_phase"])
        for k in sorted(set(phase.tolist())):
            sel = phase == k
            ax.plot(np.asarray(h["eval_step"])[sel], np.asarray(h["test_loss"])[sel], marker="o", ms=3, color=f"C{i}",
                    ls="-" if k == 0 else "--", label=f"{label}, seq {r['phases'][k]['seq_len']}")
        ax.axvline(r["phases"][0]["steps"], color=f"C{i}", lw=0.7, ls=":")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation MLM loss (at the phase's length)")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def draw_summary(data: Mapping):
    """The notebook's main figures from its result file (the JSON it writes, or a shipped full-scale export):
    Table 1's accuracies, LAMB's loss against examples, the scaling model and the trust ratios at the largest
    batch; titled with the device, date and commit of the run. Returns the figure."""
    import matplotlib.pyplot as plt

    env = data.get("environment", {})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    plot_table1({{"lamb": "LAMB", "adamw": "AdamW"}.get(k, k): v for k, v in data["table1"].items()},
                data["target_accuracy"], ax=axes[0, 0], title="Table 1 protocol")
    ladder0 = {int(b): r for b, r in data["ladder_seed0"]["lamb"].items()}
    plot_loss_vs_examples(ladder0, ax=axes[0, 1], smooth_examples=int(data["settings"]["smooth_examples"]),
                          title="LAMB: training loss against examples")
    plot_scaling_efficiency(data["scaling_model"], {k: tuple(v) for k, v in data["paper_points"].items()},
                            ax=axes[1, 0], title="Scaling efficiency (model)")
    with_trust = [b for b, r in ladder0.items() if r["trust_ratio"]]
    if with_trust:
        plot_trust_ratios(ladder0[max(with_trust)], ax=axes[1, 1], title=f"LAMB trust ratios, batch {max(with_trust)}")
    fig.suptitle(f"profile {data.get('profile')}: {env.get('device_count')} x {env.get('device_kind')}, "
                 f"{env.get('date')}, commit {env.get('commit')}")
    fig.tight_layout()
    return fig
