r"""BERT at large batch on the harness: the paper's Table 1 protocol, the mixed-batch two-phase recipe, and the
summaries and figures of ``notebooks/bert_large_batch.ipynb`` (You et al. 2020, section 4.1, Figures 5-14).

- :func:`bank` -- the engine: many runs (:class:`Trial`: optimizer, seed, learning-rate schedule) trained at
  once through the same :class:`Phase` sequence (a sequence length, a batch, a number of steps each), in one
  compiled program per phase shape. The runs are ``jax.vmap``-ed; the batch is a sum of fixed-size
  micro-batches whose count is traced, and the rates, the schedule's lengths, the seeds and the optimizer
  (LAMB, :func:`lamb.jax.lamb`, or AdamW, ``optax.adamw``, both with BERT's exclusions) are traced too, so a
  whole batch ladder of both optimizers compiles once. Parameters and optimizer state carry from phase to
  phase (the two-phase recipe). Every step is timed.
- :func:`ladder` and :func:`grid` -- the sweeps: a batch ladder at a fixed budget of examples (the paper's
  fixed epochs) and a learning-rate grid, each a :func:`bank` per batch. In a dry run
  (:func:`lamb.profiles.dry_run`) every phase stops after :data:`lamb.profiles.DRY_RUN_STEPS` steps of at most
  as many micro-batches of at most :data:`DRY_RUN_MICRO_BATCH` sequences, at the full model and sequence
  shapes.
- :func:`frequency_baseline` -- what predicting from token frequencies alone scores on the validation
  positions: the floor a run must clear before its quality means anything.
- Summaries (:func:`summarize`, :func:`table1`, :func:`ranking_disagreements`, :func:`scaling_model`) and
  figures (``plot_*``) take the JSON-able run records, not notebook globals, so a shipped full-scale result
  file redraws them.
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

__all__ = ["OPTIMIZERS", "LAYER_TYPES", "EXCLUDED", "DRY_RUN_MICRO_BATCH", "Phase", "Trial", "adaptation_mask",
           "layer_type", "optimizer", "mixed_precision", "enable_compilation_cache", "batch_ladder", "bank",
           "bank_step_flops", "clear_bank_programs", "validation_batches", "frequency_baseline", "ladder", "grid",
           "summarize", "table1", "base_target", "largest_reaching", "ranking_disagreements", "scaling_model",
           "markdown_table", "plot_loss_vs_examples", "plot_table1", "plot_trust_ratios", "plot_validation_ranking",
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


# ---------------------------------------------------------------------------------------------------------------
# The trial bank: many runs of one phase shape in one compiled program
# ---------------------------------------------------------------------------------------------------------------

#: In a dry run every bank step is cut to at most this many sequences per micro-batch (and
#: :data:`lamb.profiles.DRY_RUN_STEPS` micro-batches per step): a micro-batch at ``gpu`` shapes (1024 sequences
#: of 128 tokens through a 4-layer BERT, about 3 TFLOP) takes minutes on a CPU. The cap is recorded in every
#: record's phases (``dry_run_cap``).
DRY_RUN_MICRO_BATCH = 1      # (and evaluations on at most this many validation sequences)
#: The fixed masking of the validation sequences (every run is evaluated on the same masked positions).
EVAL_MASK_SEED = 12345


@dataclass(frozen=True)
class Trial:
    """One run of a :func:`bank`: the optimizer (``"lamb"`` or ``"adamw"``), the seed (initial weights, batch
    order, masks) and the learning-rate schedule :func:`lamb.experiments.schedules.two_phase_rate` (warmup to
    ``peak_1`` over ``warmup_1`` updates, linear decay to 0 at ``steps_1``; then, for a two-phase run, re-warmed
    from 0 to ``peak_2`` over ``warmup_2`` and decayed to 0 over ``steps_2``)."""

    optimizer: str
    seed: int
    peak_1: float
    warmup_1: int
    steps_1: int
    peak_2: float = 0.0
    warmup_2: int = 0
    steps_2: int = 1
    label: str = ""

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be an int in [0, 2**31), got {self.seed!r}")
        schedules.two_phase_warmup_polynomial_decay(self.peak_1, self.warmup_1, self.steps_1, self.peak_2,
                                                    self.warmup_2, self.steps_2)

    @property
    def schedule(self) -> dict:
        return {k: float(getattr(self, k)) for k in ("peak_1", "warmup_1", "steps_1", "peak_2", "warmup_2",
                                                     "steps_2")}


_BANK_PROGRAMS: dict = {}


def _bank_program(model, vocab_size: int, seq_len: int, micro: int, n_trials: int, weight_decay: float):
    """The jitted ``init``, ``step`` and ``evaluate`` of a bank of ``n_trials`` runs of ``model`` on sequences of
    ``seq_len`` in micro-batches of ``micro``, cached. The rate schedule, the optimizer (LAMB or AdamW: both
    updates are computed, one applied), the seed, the step index and the accumulation (so the batch size) are
    traced, so one compiled program serves every batch of a ladder, every rate and both optimizers."""
    key = (id(model), vocab_size, seq_len, micro, n_trials, float(weight_decay))
    if key in _BANK_PROGRAMS:
        return _BANK_PROGRAMS[key]
    from lamb import jax as lj
    from lamb.experiments import vectorized
    from lamb.experiments.models import loss_sums

    def txs(hp):
        def rate(count):
            return schedules.two_phase_rate(count, hp["peak_1"], hp["warmup_1"], hp["steps_1"], hp["peak_2"],
                                            hp["warmup_2"], hp["steps_2"])
        return (lj.lamb(rate, b1=0.9, b2=0.999, eps=1e-6, weight_decay=weight_decay, mask=adaptation_mask,
                        layer_adaptation_mask=adaptation_mask),
                optax.adamw(rate, b1=0.9, b2=0.999, eps=1e-6, weight_decay=weight_decay, mask=adaptation_mask))

    def sums_of(params, inputs, labels):
        if model.apply_masked is not None:
            return loss_sums(*model.apply_masked(params, inputs, labels))
        return loss_sums(model.apply(params, inputs), labels)

    def init(seed, hp):
        params = model.init(jax.random.fold_in(jax.random.PRNGKey(seed), 0))
        lamb_tx, adamw_tx = txs(hp)
        return params, lamb_tx.init(params), adamw_tx.init(params)

    def step(state, hp, seed, order, tokens, step_index, accumulation):
        params, lamb_state, adamw_state = state
        mask_key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)

        def micro_grads(m, carry):
            grads, sums = carry
            pos = (step_index * accumulation + m) * micro      # the micro-batch's first example in the phase
            idx = jax.lax.dynamic_slice(order, (pos,), (micro,))
            # each sequence masked with a key of its place in the stream: the same masks whatever the split
            # into micro-batches, so accumulation changes only the summation order
            keys = jax.vmap(lambda j: jax.random.fold_in(mask_key, pos + j))(jnp.arange(micro))
            inputs, labels = jax.vmap(lambda k, row: vectorized.mask_tokens_on_device(
                k, row[None], vocab_size=vocab_size))(keys, tokens[idx])
            inputs, labels = inputs[:, 0], labels[:, 0]

            def objective(p):
                s = sums_of(p, inputs, labels)
                return s["loss"], s

            (_, s), g = jax.value_and_grad(objective, has_aux=True)(params)
            return jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, s)

        zero = {k: jnp.zeros([], jnp.float32) for k in ("loss", "correct", "count")}
        grads, sums = jax.lax.fori_loop(0, accumulation, micro_grads,
                                        (jax.tree.map(jnp.zeros_like, params), zero))
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)   # the mean over the batch's masked positions
        lamb_tx, adamw_tx = txs(hp)
        lamb_updates, lamb_state = lamb_tx.update(grads, lamb_state, params)
        adamw_updates, adamw_state = adamw_tx.update(grads, adamw_state, params)
        updates = jax.tree.map(lambda a, b: jnp.where(hp["lamb"] > 0, a, b), lamb_updates, adamw_updates)
        params = optax.apply_updates(params, updates)
        ratios = list(train.trust_ratios(lamb_state).values())
        metrics = {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count,
                   "trust_ratio": jnp.stack(ratios) if ratios else jnp.zeros((0,), jnp.float32)}
        return (params, lamb_state, adamw_state), metrics

    def evaluate(params, inputs, labels):
        def body(carry, xy):
            return jax.tree.map(jnp.add, carry, sums_of(params, *xy)), None

        zero = {k: jnp.zeros([], jnp.float32) for k in ("loss", "correct", "count")}
        s, _ = jax.lax.scan(body, zero, (inputs, labels))
        count = jnp.maximum(s["count"], 1.0)
        return {"test_loss": s["loss"] / count, "test_accuracy": s["correct"] / count}

    programs = {"init": jax.jit(jax.vmap(init)),
                "step": jax.jit(jax.vmap(step, in_axes=(0, 0, 0, 0, None, None, None)), donate_argnums=(0,)),
                "evaluate": jax.jit(jax.vmap(evaluate, in_axes=(0, None, None)))}
    _BANK_PROGRAMS[key] = programs
    return programs


def clear_bank_programs() -> None:
    """Forget the compiled bank programs."""
    _BANK_PROGRAMS.clear()


def validation_batches(mlm, eval_batch_size: int = 128, eval_sequences: int | None = None):
    """The validation sequences of ``mlm`` masked once by BERT's rule with a fixed seed
    (:data:`EVAL_MASK_SEED`), in ``(batches, eval_batch_size, seq_len)`` arrays, the last batch padded with
    unlabelled rows: ``(inputs, labels)``, the same positions for every run."""
    from lamb.experiments import data as _data
    from lamb.experiments import text

    validation = np.asarray(mlm.validation)
    n = len(validation) if eval_sequences is None else int(eval_sequences)
    if not 1 <= n <= len(validation):
        raise ValueError(f"eval_sequences must be in [1, {len(validation)}], got {eval_sequences!r}")
    if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be an int >= 1, got {eval_batch_size!r}")
    inputs, labels = text.mask_tokens(validation[:n], _data.rng(EVAL_MASK_SEED), vocab_size=mlm.vocab_size)
    size = min(eval_batch_size, n)
    pad = -n % size
    inputs = np.concatenate([inputs, np.zeros((pad, inputs.shape[1]), inputs.dtype)])
    labels = np.concatenate([labels, np.full((pad, labels.shape[1]), text.IGNORE_INDEX, labels.dtype)])
    shape = (-1, size, inputs.shape[1])
    return inputs.reshape(shape).astype(np.int32), labels.reshape(shape).astype(np.int32)


def frequency_baseline(mlm, eval_batch_size: int = 128, eval_sequences: int | None = None) -> dict:
    """What a model that ignores the context scores on the validation positions of :func:`validation_batches`:
    ``accuracy`` of always predicting the training split's most frequent ordinary token, ``loss`` the
    cross-entropy of the training split's unigram frequencies (add-one smoothed over the vocabulary). A model
    that learned anything from context beats both."""
    train_tokens = np.asarray(mlm.train).ravel()
    counts = np.bincount(train_tokens[train_tokens >= len(mlm.special_ids)], minlength=mlm.vocab_size)
    counts = counts.astype(np.float64)
    counts[:len(mlm.special_ids)] = 0.0
    top = int(np.argmax(counts))
    probs = (counts + 1.0) / (counts.sum() + mlm.vocab_size)
    _, labels = validation_batches(mlm, eval_batch_size, eval_sequences)
    labels = labels[labels >= 0]
    return {"accuracy": float(np.mean(labels == top)), "loss": float(-np.mean(np.log(probs[labels]))),
            "token": mlm.decode([top]), "positions": int(labels.size)}


def _example_order(seed: int, phase: int, num_train: int, count: int) -> np.ndarray:
    """The first ``count`` training examples a run sees in a phase: a fresh permutation per epoch."""
    from lamb.experiments import data as _data

    rng = _data.rng(seed, phase)
    epochs = -(-count // num_train)
    return np.concatenate([rng.permutation(num_train) for _ in range(epochs)])[:count].astype(np.int32)


def bank(model, trials: Sequence[Trial], phases: Sequence[Phase], *, evaluations: int = 2,
         eval_batch_size: int = 128, eval_sequences: int | None = None, weight_decay: float = 0.01,
         results_dir=None, progress: bool = False) -> list[dict]:
    r"""Train every :class:`Trial` through ``phases`` (each :class:`Phase` a sequence length -- its ``data`` --,
    a batch size, a number of steps and the accumulation: ``batch_size / accumulation_steps`` sequences per
    forward-backward pass) at once: ``jax.vmap`` over the trials, one compiled program per phase shape (the
    batch, the rates, the schedules, the seeds and the optimizer are traced, so calls that differ only in them
    share it). Parameters and optimizer state carry from phase to phase. Returns one record per trial.

    A step of batch :math:`B` averages the gradient over all the masked positions of its :math:`B` sequences
    (summed over micro-batches), then applies LAMB (:func:`lamb.jax.lamb`) or AdamW (``optax.adamw``), both
    with BERT's exclusions (:func:`adaptation_mask`), :math:`\beta = (0.9, 0.999)`, :math:`\epsilon = 10^{-6}`.
    After ``evaluations + 1`` evenly spaced steps of each phase (the last among them) every trial is evaluated
    on the phase's fixed masked validation positions (:func:`validation_batches`) of its first
    ``eval_sequences`` validation sequences (all of them where the phase has fewer; default all).

    Records (:func:`run_record`'s form): per-step training loss, accuracy, learning rate and (LAMB) per-layer
    trust ratios on a global step and examples-seen axis; evaluations; per phase the measured median time of a
    bank step (all trials; the first step, which compiles, left out), and ``median_step_s`` per trial, that
    time divided by the number of trials.

    In a dry run each phase takes :data:`lamb.profiles.DRY_RUN_STEPS` steps of at most that many micro-batches
    of at most :data:`DRY_RUN_MICRO_BATCH` sequences, and evaluates on at most that many validation sequences
    (the planned numbers recorded as ``dry_run_cap``).
    """
    trials = list(trials)
    if not trials or not all(isinstance(t, Trial) for t in trials):
        raise ValueError(f"trials must be a non-empty sequence of Trial, got {trials!r}")
    if not phases or not all(isinstance(p, Phase) for p in phases):
        raise ValueError(f"phases must be a non-empty sequence of Phase, got {phases!r}")
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 0:
        raise ValueError(f"evaluations must be an int >= 0, got {evaluations!r}")
    hp = {k: jnp.asarray([t.schedule[k] for t in trials], jnp.float32) for k in trials[0].schedule}
    hp["lamb"] = jnp.asarray([t.optimizer == "lamb" for t in trials], jnp.float32)
    seeds = jnp.asarray([t.seed for t in trials], jnp.uint32)
    state, parts, offset, examples = None, [], 0, 0
    for index, phase in enumerate(phases):
        if phase.batch_size % phase.accumulation_steps:
            raise ValueError(f"phase {index}: batch_size {phase.batch_size} is not a multiple of accumulation_steps "
                             f"{phase.accumulation_steps}")
        micro, accumulation, steps = phase.batch_size // phase.accumulation_steps, phase.accumulation_steps, phase.steps
        cap = None
        if profiles.dry_run():
            cap = {"steps": steps, "accumulation_steps": accumulation, "micro_batch": micro}
            steps = min(steps, profiles.DRY_RUN_STEPS)
            accumulation = min(accumulation, profiles.DRY_RUN_STEPS)
            micro = min(micro, DRY_RUN_MICRO_BATCH)
        batch = micro * accumulation
        data_ = phase.data
        tokens = jnp.asarray(data_.train, jnp.int32)
        if batch * steps > 0 and micro > tokens.shape[0]:
            raise ValueError(f"phase {index}: micro-batch {micro} exceeds the {tokens.shape[0]} training sequences")
        programs = _bank_program(model, int(data_.vocab_size), int(data_.seq_len), micro, len(trials),
                                 weight_decay)
        if state is None:
            state = programs["init"](seeds, hp)
        count = steps * batch
        if cap:  # one length for every dry-run bank, so that (as in a real run, where every bank of a ladder sees
            # the same examples) banks that differ only in batch size share their compiled program
            count = max(count, profiles.DRY_RUN_STEPS ** 2 * DRY_RUN_MICRO_BATCH)
        order = jnp.asarray(np.stack([_example_order(int(t.seed), index, tokens.shape[0], count) for t in trials]))
        n_eval = len(data_.validation) if eval_sequences is None else min(int(eval_sequences), len(data_.validation))
        if cap:
            cap["eval_sequences"] = n_eval
            n_eval = min(n_eval, DRY_RUN_MICRO_BATCH)
        eval_x, eval_y = validation_batches(data_, eval_batch_size, n_eval)
        eval_x, eval_y = jnp.asarray(eval_x), jnp.asarray(eval_y)
        eval_at = sorted({max(1, round(steps * k / (evaluations + 1))) for k in range(1, evaluations + 2)})
        per_step = {"loss": [], "accuracy": [], "trust_ratio": []}
        evals = {"eval_step": [], "test_loss": [], "test_accuracy": []}
        times = []
        for t in range(steps):
            t0 = time.perf_counter()
            state, m = programs["step"](state, hp, seeds, order, tokens, jnp.int32(t), jnp.int32(accumulation))
            m = jax.device_get(m)
            times.append(time.perf_counter() - t0)
            for k in per_step:
                per_step[k].append(np.asarray(m[k], np.float64))
            if t + 1 in eval_at:
                e = jax.device_get(programs["evaluate"](state[0], eval_x, eval_y))
                evals["eval_step"].append(t + 1)
                evals["test_loss"].append(np.asarray(e["test_loss"], np.float64))
                evals["test_accuracy"].append(np.asarray(e["test_accuracy"], np.float64))
                if progress:
                    print(f"phase {index} step {t + 1}/{steps}: loss {np.median(m['loss']):.4g}, validation "
                          f"accuracy {np.median(e['test_accuracy']):.4g}")
        steady = np.asarray(times[1:] if len(times) > 1 else times)
        parts.append({"phase": phase, "steps": steps, "batch": batch, "micro": micro, "accumulation": accumulation,
                      "cap": cap, "offset": offset, "examples": examples, "per_step": per_step, "evals": evals,
                      "bank_step_s": float(np.median(steady)), "first_step_s": float(times[0])})
        offset += steps
        examples += steps * batch
    records = [_bank_record(model, trial, i, parts, state, len(trials)) for i, trial in enumerate(trials)]
    if results_dir is not None:
        import json
        from pathlib import Path

        for r in records:
            path = Path(results_dir) / f"{r['label']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(r, allow_nan=True))
    return records


_STEP_FLOPS: dict = {}


def bank_step_flops(model, trials: Sequence[Trial], phases: Sequence[Phase], *,
                    weight_decay: float = 0.01) -> list[dict]:
    """What one :func:`bank` step of each phase costs, without running it: the bank's step program at the
    phase's full shapes (``len(trials)`` runs, micro-batches of ``batch_size / accumulation_steps`` sequences)
    traced from abstract shapes and costed by XLA (``lower(...).cost_analysis()``; nothing is compiled or
    allocated). XLA counts the accumulation loop's body once, so ``micro_batch_flops`` is one micro-batch of
    every run plus one optimizer update, and ``step_flops`` that times ``accumulation_steps``. One dict per
    phase: ``seq_len``, ``batch_size``, ``micro_batch``, ``accumulation_steps``, ``steps``, ``runs``, the FLOPs.
    A dry run prints these for a part too costly to train on a small CPU."""
    from lamb.plan import _flops

    trials = list(trials)
    if not trials or not all(isinstance(t, Trial) for t in trials):
        raise ValueError(f"trials must be a non-empty sequence of Trial, got {trials!r}")
    if not phases or not all(isinstance(p, Phase) for p in phases):
        raise ValueError(f"phases must be a non-empty sequence of Phase, got {phases!r}")
    hp = {k: jax.ShapeDtypeStruct((len(trials),), jnp.float32) for k in trials[0].schedule}
    hp["lamb"] = jax.ShapeDtypeStruct((len(trials),), jnp.float32)
    seeds = jax.ShapeDtypeStruct((len(trials),), jnp.uint32)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    state, out = None, []
    for index, phase in enumerate(phases):
        if phase.batch_size % phase.accumulation_steps:
            raise ValueError(f"phase {index}: batch_size {phase.batch_size} is not a multiple of accumulation_steps "
                             f"{phase.accumulation_steps}")
        micro = phase.batch_size // phase.accumulation_steps
        data_ = phase.data
        programs = _bank_program(model, int(data_.vocab_size), int(data_.seq_len), micro, len(trials),
                                 weight_decay)
        if state is None:
            state = jax.eval_shape(programs["init"], seeds, hp)
        key = (id(programs["step"]), np.shape(data_.train))
        if key not in _STEP_FLOPS:  # (a micro-batch's FLOPs do not depend on the batch: one count per program)
            tokens = jax.ShapeDtypeStruct(np.shape(data_.train), jnp.int32)
            order = jax.ShapeDtypeStruct((len(trials), phase.batch_size), jnp.int32)
            _STEP_FLOPS[key] = _flops(programs["step"].lower(state, hp, seeds, order, tokens, scalar, scalar))
        flops = _STEP_FLOPS[key]
        out.append({"seq_len": int(data_.seq_len), "batch_size": int(phase.batch_size), "micro_batch": micro,
                    "accumulation_steps": int(phase.accumulation_steps), "steps": int(phase.steps),
                    "runs": len(trials), "micro_batch_flops": flops,
                    "step_flops": flops * phase.accumulation_steps})
    return out


def _bank_record(model, trial: Trial, i: int, parts, state, n_trials: int) -> dict:
    from lamb.experiments.models import count_params, layer_names

    h = {k: [] for k in ("step", "examples", "loss", "accuracy", "learning_rate", "eval_step", "eval_examples",
                         "test_loss", "test_accuracy", "eval_phase")}
    params = jax.tree.map(lambda a: a[i], state[0])
    # the layers of the trust ratios the bank step stacks, in its order
    adapted = list(train.trust_ratios(jax.tree.map(lambda a: a[i], state[1])))
    trust = {n: [] for n in adapted} if trial.optimizer == "lamb" else {}
    phases = []
    for k, p in enumerate(parts):
        steps = np.arange(1, p["steps"] + 1)
        h["step"] += (steps + p["offset"]).tolist()
        h["examples"] += (p["examples"] + steps * p["batch"]).tolist()
        h["loss"] += [float(v[i]) for v in p["per_step"]["loss"]]
        h["accuracy"] += [float(v[i]) for v in p["per_step"]["accuracy"]]
        counts = steps - 1 + p["offset"]      # the update count each step's rate is read at
        h["learning_rate"] += np.asarray(schedules.two_phase_rate(counts, *trial.schedule.values()),
                                         np.float64).tolist()
        ev = p["evals"]
        h["eval_step"] += [s + p["offset"] for s in ev["eval_step"]]
        h["eval_examples"] += [p["examples"] + s * p["batch"] for s in ev["eval_step"]]
        h["test_loss"] += [float(v[i]) for v in ev["test_loss"]]
        h["test_accuracy"] += [float(v[i]) for v in ev["test_accuracy"]]
        h["eval_phase"] += [k] * len(ev["eval_step"])
        for j, name in enumerate(trust):
            trust[name] += [float(v[i][j]) for v in p["per_step"]["trust_ratio"]]
        phase = p["phase"]
        phases.append({"seq_len": int(phase.data.seq_len), "batch_size": int(p["batch"]), "steps": int(p["steps"]),
                       "planned_batch_size": int(phase.batch_size), "planned_steps": int(phase.steps),
                       "micro_batch": int(p["micro"]), "accumulation_steps": int(p["accumulation"]),
                       "bank_trials": n_trials, "bank_step_s": p["bank_step_s"],
                       "compile_and_first_step_s": p["first_step_s"],
                       "median_step_s": p["bank_step_s"] / n_trials,
                       "train_time_s": p["bank_step_s"] / n_trials * p["steps"],
                       **({"dry_run_cap": p["cap"]} if p["cap"] else {})})
    return {"label": trial.label or f"{trial.optimizer}-seed{trial.seed}", "optimizer": trial.optimizer,
            "seed": int(trial.seed), "schedule": trial.schedule, "model": dict(model.config),
            "num_params": int(count_params(params)),
            "excluded_parameters": [n for n in layer_names(params) if layer_type(n) == EXCLUDED],
            "phases": phases, "history": h, "trust_ratio": trust,
            "environment": train.environment(), "dry_run": profiles.dry_run()}


def ladder(model, data, batch_sizes: Sequence[int], peak_lrs: Mapping[str, float], *, total_examples: int,
           base_batch_size: int, warmup_steps: int, seeds: Sequence[int] = (0,), base_seeds: Sequence[int] | None = None,
           rule: str = "sqrt", micro_batch: int | None = None, done: Mapping | None = None, label: str = "",
           **kwargs) -> dict:
    r"""Table 1's protocol for each optimizer of ``peak_lrs`` (``{name: rate tuned at base_batch_size}``): at
    every batch :math:`B` of ``batch_sizes``, ``total_examples / B`` steps (a fixed budget of examples, the
    paper's fixed epochs), the peak rate scaled from ``base_batch_size`` by ``rule`` (the square root) and
    ``warmup_steps`` steps of warmup at every batch (the linear-epoch rule: warmup epochs grow with :math:`B`,
    so warmup steps stay put); nothing retuned. One :func:`bank` per batch, every optimizer and seed in it, in
    micro-batches of ``micro_batch`` (default: the whole batch), so with a fixed micro-batch the whole ladder
    runs one compiled program.

    ``base_seeds``: the seeds trained at ``base_batch_size`` (default ``seeds``); ``done``:
    ``{(name, B, seed): record}`` of runs already trained (e.g. the tuning run of the chosen rate), included
    and not trained again. Returns
    ``{name: {(B, seed): record}}``.
    """
    done = dict(done or {})
    out = {name: {} for name in peak_lrs}
    for b in batch_sizes:
        steps = total_examples // b
        if steps <= warmup_steps:
            raise ValueError(f"batch {b}: {total_examples} examples give {steps} steps, not more than the "
                             f"{warmup_steps} warmup steps; raise total_examples or lower the batch")
        micro = b if micro_batch is None else int(micro_batch)
        if micro < 1 or b % micro:
            raise ValueError(f"batch {b} is not a multiple of micro_batch={micro_batch!r}")
        trials = []
        for name, lr in peak_lrs.items():
            peak = schedules.scale_learning_rate(lr, b, base_batch_size, rule)
            out[name].update({(b, s): r for (n, bb, s), r in done.items() if n == name and bb == b})
            for s in (base_seeds if b == base_batch_size and base_seeds is not None else seeds):
                if (b, s) not in out[name]:
                    trials.append(Trial(name, int(s), peak, warmup_steps, steps,
                                        label=f"{label}{name}-B{b}-lr{peak:.3g}-seed{s}"))
        for t, r in zip(trials, bank(model, trials, [Phase(data, b, steps, b // micro)], **kwargs)):
            out[t.optimizer][(b, t.seed)] = r
    return out


def grid(model, data, batch_size: int, peak_lrs: Mapping[str, Sequence[float]], *, total_examples: int,
         warmup_steps: int, seed: int = 0, micro_batch: int | None = None, label: str = "", **kwargs) -> dict:
    """One run per optimizer and peak rate of ``peak_lrs`` (``{name: [rates]}``) at ``batch_size``
    (``total_examples / batch_size`` steps, ``warmup_steps`` of warmup), all in one :func:`bank`:
    ``{name: {peak_lr: record}}``."""
    steps = total_examples // batch_size
    micro = batch_size if micro_batch is None else int(micro_batch)
    if micro < 1 or batch_size % micro:
        raise ValueError(f"batch {batch_size} is not a multiple of micro_batch={micro_batch!r}")
    trials = [Trial(name, int(seed), float(lr), warmup_steps, steps,
                    label=f"{label}{name}-B{batch_size}-lr{lr:.3g}-seed{seed}")
              for name, lrs in peak_lrs.items() for lr in lrs]
    out = {name: {} for name in peak_lrs}
    for t, r in zip(trials, bank(model, trials, [Phase(data, batch_size, steps, batch_size // micro)], **kwargs)):
        out[t.optimizer][t.peak_1] = r
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


def base_target(base_records: Sequence[Mapping]) -> float:
    """"B0's quality": the lowest final masked-token accuracy among the seeds of the base batch, so the bottom of
    B0's own seed range. A batch reaches it when its seed-mean accuracy is at least this (:func:`table1`)."""
    if not base_records:
        raise ValueError("base_target needs the records of at least one base-batch run")
    return float(min(_final(r, "test_accuracy") for r in base_records))


def table1(ladder_records: Mapping, target_accuracy: float, floor: float = -math.inf) -> list[dict]:
    """Rows of our Table 1 from ``{(B, seed): record}``: per batch, :func:`summarize` plus ``reaches``, whether
    the seed-mean final masked-token accuracy is at least ``target_accuracy`` and above ``floor`` (the
    :func:`frequency_baseline`: a run at the floor learned nothing, whatever the target)."""
    rows = []
    for b in sorted({b for b, _ in ladder_records}):
        row = {"batch_size": b, **summarize([r for (bb, _), r in sorted(ladder_records.items()) if bb == b])}
        row["reaches"] = bool(row["acc_mean"] >= target_accuracy and row["acc_mean"] > floor)
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


def _finish(ax, xlabel, ylabel, title=None, *, fontsize=8, ncol=1, xlog2=False, ylog=False):
    """The axis-finishing lines every figure of this module shares: labels, scales, legend, title."""
    if xlog2:
        ax.set_xscale("log", base=2)
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=fontsize, ncol=ncol)
    if title:
        ax.set_title(title)
    return ax


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
    return _finish(ax, "examples seen", "training MLM loss", title, ncol=2)


def plot_table1(rows_by_optimizer: Mapping[str, Sequence[Mapping]], target, *, ax=None, floor: float | None = None,
                title=None):
    """Final validation masked-token accuracy against batch size (seed range as error bars); the target (one
    number, or ``{optimizer label: number}``, drawn in the optimizer's colour) and the frequency ``floor``."""
    ax = _ax(ax)
    for i, (name, rows) in enumerate(rows_by_optimizer.items()):
        b = np.array([r["batch_size"] for r in rows])
        m = np.array([r["acc_mean"] for r in rows])
        err = np.array([[r["acc_mean"] - r["acc_min"] for r in rows], [r["acc_max"] - r["acc_mean"] for r in rows]])
        ax.errorbar(b, m, yerr=err, marker="o", capsize=3, color=f"C{i}", label=name)
        if isinstance(target, Mapping):
            ax.axhline(target[name], color=f"C{i}", ls="--", lw=0.9, label=f"{name.split()[0]}: $B_0$'s quality")
    if not isinstance(target, Mapping):
        ax.axhline(target, color="0.4", ls="--", lw=0.9, label="target ($B_0$'s quality)")
    if floor is not None:
        ax.axhline(floor, color="0.2", ls=":", lw=1.0, label="frequency floor")
    return _finish(ax, "batch size", "final validation masked-token accuracy", title, xlog2=True)


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
    return _finish(ax, "fraction of training", r"trust ratio $\|x\| / \|r + \lambda x\|$", title, fontsize=7,
                   ylog=True)


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
    return _finish(ax, "final validation MLM loss", "final validation masked-token accuracy", title)


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
    return _finish(ax, "workers (chips) relative to the base", "scaling efficiency (%)", title, xlog2=True)


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
    return _finish(ax, "optimizer steps", "validation MLM loss (at the phase's length)", title, fontsize=7)


def draw_summary(data: Mapping):
    """The notebook's main figures from its result file (the JSON it writes, or a shipped full-scale export):
    Table 1's accuracies, LAMB's loss against examples, the scaling model and the trust ratios at the largest
    batch; titled with the device, date and commit of the run. Returns the figure."""
    import matplotlib.pyplot as plt

    env = data.get("environment", {})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = {"lamb": "LAMB", "adamw": "AdamW"}
    plot_table1({names.get(k, k): v for k, v in data["table1"].items()},
                {names.get(k, k): v for k, v in data["targets"].items()}, ax=axes[0, 0],
                floor=data["frequency_baseline"]["accuracy"], title="Table 1 protocol")
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
