r"""The vectorized runner: many short training runs of one model at once, stopped at a target.

Part II's sweeps train the same model on the same data for many *trials* -- learning rates x seeds -- at each
batch size of a ladder. One trial at a time would compile and dispatch the same program over and over; this
module trains all trials of one batch size in **one compiled program**:

- ``jax.vmap`` over trials: each trial has its own peak learning rate :math:`\eta` and seed (initial weights,
  batch order, BERT masks); the rate is a *traced* value, so a whole grid of rates x seeds shares one program;
- ``jax.lax.fori_loop`` over the steps of a chunk of ``eval_every`` steps, then an evaluation on the held-out
  split; the batch size, the chunk's length and the schedule's lengths are traced too (a batch is a sum of
  fixed-size micro-batches), so one compiled program serves a whole ladder of batch sizes;
- early stop on the host after each chunk, once every trial has reached ``target`` or diverged
  (``stop="all"``), or once any trial has reached it (``stop="any"``: the first trial to reach the target is
  the best of the sweep, so a tuning sweep need not train the others further);
- optional *variants*: an integer per trial, traced like the rate, passed to ``make_tx`` as a second argument,
  so that one program can train several optimizers side by side (:func:`lamb.experiments.scaling.optimizer_bank`);
  ``stop="any"`` then waits for a trial of every variant.

The optimizer is given as a *factory* of the learning rate, ``make_tx(learning_rate) -> GradientTransformation``,
called with the schedule :math:`t \mapsto \eta\, s(t)`: the trial's peak rate times the shape :math:`s`
(:data:`SCHEDULES`: linear warmup, then linear decay to zero)::

    from lamb import jax as lj
    from lamb.experiments import data, models, vectorized

    task = vectorized.image_task(models.mlp(40, [256, 256], 10), data.load("mnist1d"))
    make_tx = lambda lr: lj.lamb(lr, weight_decay=0.01)
    result = vectorized.run(task, make_tx, [1e-3, 3e-3, 1e-2], seeds=[0, 1], batch_size=256, steps=400,
                            eval_every=20, warmup_steps=20, micro_batch=64, target=0.7)
    result.steps_to_target()          # one entry per trial (inf where never reached)
    result.ablation()                 # an ablation.AblationResult, one configuration per learning rate

Tasks (:class:`Task`) hold a :class:`~lamb.experiments.models.Model` and its data on the device:
:func:`image_task` (a :class:`~lamb.experiments.data.Dataset`, e.g. MNIST-1D, with the MLP or the small
ResNet) and :func:`mlm_task` (:class:`~lamb.experiments.text.MLMData` with :func:`models.bert`; BERT's masking
is drawn on the device, the rule of :func:`lamb.experiments.text.mask_tokens`).

What one step computes is :func:`lamb.experiments.train.make_train_step`'s: the mean cross-entropy over the
labelled positions of the batch, its gradient, ``tx.update``. Batches are drawn without replacement within an
epoch (a fresh permutation per epoch and trial seed; a batch may straddle two epochs). Every history records,
at each evaluation step, ``train_loss`` (mean over the chunk's steps), ``test_loss`` and ``test_accuracy`` on
the held-out split, and ``epoch`` (examples seen / training-set size); with ``noise_scale_trials`` also
McCandlish et al.'s simple gradient noise scale :math:`B_\text{simple} = \operatorname{tr}\Sigma / \|G\|^2`
(see :mod:`lamb.experiments.gradient_noise`), estimated from per-example gradients on a fixed sample of
training examples.

A dry run (:func:`lamb.profiles.dry_run`) trains one trial for :data:`lamb.profiles.DRY_RUN_STEPS` steps at the
full-scale shapes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb import profiles
from lamb.experiments import models as _models

__all__ = ["Task", "image_task", "mlm_task", "task_for", "run", "run_trials", "VectorizedResult",
           "mask_tokens_on_device", "schedule_shape", "clear_programs", "SCHEDULES", "STOP_RULES"]

STOP_RULES = ("all", "any", None)
_SPECIAL_IDS = 5  # [PAD], [UNK], [CLS], [SEP], [MASK] are ids 0..4 (lamb.experiments.text.SPECIAL_TOKENS)
_EVAL_MASK_SEED = 12345  # the fixed masking of the MLM validation sequences (as train.fit's evaluation)


# ---------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Task:
    """A model and its data, held as device arrays for the runner.

    ``kind`` is ``"classification"`` (``train_inputs``, ``train_labels``) or ``"mlm"`` (``train_inputs`` are
    token sequences, masked on the device at every step). ``eval_inputs``/``eval_labels`` are the fixed
    held-out examples (for MLM: validation sequences masked once with a fixed seed). ``config`` describes the
    task completely (model configuration, data source and sizes), for result files and cache keys.
    """

    model: _models.Model
    kind: str
    train_inputs: jax.Array
    train_labels: jax.Array | None
    eval_inputs: jax.Array
    eval_labels: jax.Array
    config: dict
    vocab_size: int | None = None
    eval_batch_size: int = 1024
    mask_kwargs: dict = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return int(self.train_inputs.shape[0])

    @property
    def num_eval(self) -> int:
        return int(self.eval_inputs.shape[0])


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def image_task(model: _models.Model, dataset, *, eval_examples: int | None = None,
               eval_batch_size: int = 1024) -> Task:
    """A classification task: ``model`` (e.g. :func:`models.mlp`, :func:`models.resnet`) on ``dataset``
    (a :class:`lamb.experiments.data.Dataset`), evaluated on the first ``eval_examples`` test examples
    (default: all of them)."""
    if not (hasattr(dataset, "x_train") and hasattr(dataset, "y_test")):
        raise TypeError(f"dataset must be a lamb.experiments.data.Dataset, got {type(dataset).__name__}")
    n_eval = len(dataset.y_test) if eval_examples is None else _check_int("eval_examples", eval_examples)
    if n_eval > len(dataset.y_test):
        raise ValueError(f"eval_examples={n_eval} exceeds the {len(dataset.y_test)} test examples")
    config = {"task": "classification", "data": getattr(dataset, "name", "dataset"),
              "data_info": {k: v for k, v in getattr(dataset, "info", {}).items() if k != "cache_file"},
              "num_train": int(len(dataset.y_train)), "num_eval": n_eval, "model": dict(model.config)}
    return Task(model, "classification", jnp.asarray(dataset.x_train, jnp.float32),
                jnp.asarray(dataset.y_train, jnp.int32), jnp.asarray(dataset.x_test[:n_eval], jnp.float32),
                jnp.asarray(dataset.y_test[:n_eval], jnp.int32), config,
                eval_batch_size=_check_int("eval_batch_size", eval_batch_size))


def mlm_task(model: _models.Model, mlm, *, eval_sequences: int | None = None, eval_batch_size: int = 256,
             mask_prob: float = 0.15) -> Task:
    """A masked-language-model task: ``model`` (:func:`models.bert`) on ``mlm`` (a
    :class:`lamb.experiments.text.MLMData`). Training batches are masked on the device by BERT's rule
    (:func:`mask_tokens_on_device`); the first ``eval_sequences`` validation sequences (default: all) are
    masked once, with a fixed seed, by :func:`lamb.experiments.text.mask_tokens`."""
    from lamb.experiments import data as _data
    from lamb.experiments import text as _text

    if not (hasattr(mlm, "train") and hasattr(mlm, "validation") and hasattr(mlm, "seq_len")):
        raise TypeError(f"mlm must be a lamb.experiments.text.MLMData, got {type(mlm).__name__}")
    validation = np.asarray(mlm.validation)
    n_eval = len(validation) if eval_sequences is None else _check_int("eval_sequences", eval_sequences)
    if n_eval > len(validation):
        raise ValueError(f"eval_sequences={n_eval} exceeds the {len(validation)} validation sequences")
    inputs, labels = _text.mask_tokens(validation[:n_eval], _data.rng(_EVAL_MASK_SEED), vocab_size=mlm.vocab_size,
                                       mask_prob=mask_prob)
    config = {"task": "mlm", "data": f"mlm{mlm.seq_len}",
              "data_info": {k: v for k, v in getattr(mlm, "info", {}).items()},
              "num_train": int(len(mlm.train)), "num_eval": n_eval, "mask_prob": mask_prob,
              "model": dict(model.config)}
    return Task(model, "mlm", jnp.asarray(mlm.train, jnp.int32), None, jnp.asarray(inputs, jnp.int32),
                jnp.asarray(labels, jnp.int32), config, vocab_size=int(mlm.vocab_size),
                eval_batch_size=_check_int("eval_batch_size", eval_batch_size), mask_kwargs={"mask_prob": mask_prob})


def task_for(model: _models.Model, data, **kwargs) -> Task:
    """:func:`image_task` for a ``Dataset``, :func:`mlm_task` for ``MLMData``."""
    if hasattr(data, "x_train"):
        return image_task(model, data, **kwargs)
    if hasattr(data, "seq_len"):
        return mlm_task(model, data, **kwargs)
    raise TypeError(f"data must be a lamb.experiments.data.Dataset or a lamb.experiments.text.MLMData, got "
                    f"{type(data).__name__}")


def mask_tokens_on_device(key, tokens, *, vocab_size: int, mask_prob: float = 0.15, mask_token_prob: float = 0.8,
                          random_token_prob: float = 0.1):
    """BERT's masking, as :func:`lamb.experiments.text.mask_tokens`, in JAX (jittable): in each row, of the
    ``n`` ordinary tokens (ids >= 5; never ``[PAD]``, ``[CLS]``, ``[SEP]``, ...) ``k = max(1, round(mask_prob n))``
    are chosen uniformly without replacement; each chosen token becomes ``[MASK]`` with probability 0.8, a
    uniformly drawn ordinary token with probability 0.1, itself otherwise. Returns ``(inputs, labels)`` with
    label -100 at the positions not chosen. Same distribution as the NumPy version, other random numbers."""
    k_rank, k_action, k_replace = jax.random.split(key, 3)
    maskable = tokens >= _SPECIAL_IDS
    n = jnp.sum(maskable, axis=1)
    k = jnp.where(n > 0, jnp.maximum(1, jnp.round(mask_prob * n)), 0)
    scores = jnp.where(maskable, jax.random.uniform(k_rank, tokens.shape), jnp.inf)
    ranks = jnp.argsort(jnp.argsort(scores, axis=1, stable=True), axis=1, stable=True)
    chosen = ranks < k[:, None]
    action = jax.random.uniform(k_action, tokens.shape)
    replacement = jax.random.randint(k_replace, tokens.shape, _SPECIAL_IDS, vocab_size)
    inputs = jnp.where(chosen & (action < mask_token_prob), 4, tokens)
    inputs = jnp.where(chosen & (action >= mask_token_prob) & (action < mask_token_prob + random_token_prob),
                       replacement, inputs)
    labels = jnp.where(chosen, tokens, -100)
    return inputs.astype(jnp.int32), labels.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class VectorizedResult:
    """The histories of every trial of one :func:`run_trials` call.

    ``trials[i] = (learning_rate, seed)``; ``histories[i]`` maps metric names to arrays over the evaluation
    steps ``steps`` (shared by every trial: ``step`` and ``eval_step`` hold them, so that
    :func:`lamb.experiments.metrics.steps_to_target` and :mod:`lamb.experiments.ablation` read them as they
    read :func:`train.fit`'s histories). ``stopped_early``: the run ended before ``steps`` because of the stop
    rule; ``compile_seconds``, ``run_seconds``: wall time of the first chunk (compilation included) and of
    the whole run; ``params``: the trials' final parameters, stacked.
    """

    trials: list[tuple[float, int]]
    steps: np.ndarray
    histories: list[dict[str, np.ndarray]]
    config: dict
    stopped_early: bool = False
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    #: The final parameters of every trial (a pytree with a leading trial axis; not saved by :meth:`to_json`).
    params: object = field(default=None, repr=False)
    #: The variant of every trial (``run_trials(variants=...)``), or ``None``.
    variants: list | None = None

    def history(self, learning_rate: float, seed: int) -> dict[str, np.ndarray]:
        for (lr, s), h in zip(self.trials, self.histories):
            if s == seed and math.isclose(lr, learning_rate, rel_tol=1e-9):
                return h
        raise KeyError(f"no trial with learning_rate={learning_rate!r}, seed={seed!r}; trials: {self.trials}")

    def steps_to_target(self, target: float | None = None, metric: str | None = None,
                        higher_is_better: bool | None = None) -> np.ndarray:
        """Steps to ``target`` in ``metric`` for every trial (``inf`` where never reached), by
        :func:`lamb.experiments.metrics.steps_to_target`; defaults: the run's own target and metric."""
        from lamb.experiments import metrics

        target = self.config.get("target") if target is None else target
        metric = self.config.get("metric") if metric is None else metric
        if target is None or metric is None:
            raise ValueError("steps_to_target needs a target and a metric (the run was given none)")
        hib = metrics._higher_is_better(metric, higher_is_better)
        return np.array([metrics.steps_to_target(h[metrics.step_key(metric)], h[metric], float(target), hib)
                         for h in self.histories])

    def ablation(self):
        """The histories as an :class:`lamb.experiments.ablation.AblationResult`: one configuration per
        learning rate (named ``"lr=<value>"``), one run per seed; every rate must have the same seeds."""
        from lamb.experiments.ablation import AblationResult

        lrs = list(dict.fromkeys(lr for lr, _ in self.trials))
        seeds = list(dict.fromkeys(s for _, s in self.trials))
        names = [f"lr={lr:g}" for lr in lrs]
        histories = {}
        for name, lr in zip(names, lrs):
            runs = {s: h for (l_, s), h in zip(self.trials, self.histories) if l_ == lr}
            if sorted(runs) != sorted(seeds):
                raise ValueError(f"learning rate {lr} has seeds {sorted(runs)}, not {sorted(seeds)}: an ablation "
                                 "needs every rate with every seed")
            histories[name] = [runs[s] for s in seeds]
        return AblationResult(names=names, seeds=seeds, steps=self.steps, histories=histories)

    def to_json(self) -> dict:
        from lamb.experiments.train import _jsonable

        return _jsonable({"trials": [list(t) for t in self.trials], "steps": self.steps,
                          "histories": self.histories, "config": self.config, "stopped_early": self.stopped_early,
                          "compile_seconds": self.compile_seconds, "run_seconds": self.run_seconds,
                          "variants": self.variants})

    @classmethod
    def from_json(cls, payload: Mapping) -> "VectorizedResult":
        return cls(trials=[(float(lr), int(s)) for lr, s in payload["trials"]],
                   steps=np.asarray(payload["steps"]),
                   histories=[{k: np.asarray(v, dtype=np.float64) for k, v in h.items()}
                              for h in payload["histories"]],
                   config=dict(payload["config"]), stopped_early=bool(payload["stopped_early"]),
                   compile_seconds=float(payload["compile_seconds"]), run_seconds=float(payload["run_seconds"]),
                   variants=None if payload.get("variants") is None else [int(v) for v in payload["variants"]])


# ---------------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------------

#: Schedule shapes :math:`s(t)`: trial ``i`` uses the learning rate :math:`\eta_i s(t)` at step ``t``.
#: ``"warmup_linear_decay"``: :math:`t/w` for :math:`t < w`, then :math:`(D - t)/(D - w)` down to 0 at the decay
#: end :math:`D` (BERT's and the paper's schedule; :func:`lamb.experiments.schedules.warmup_polynomial_decay`
#: with power 1 and peak 1); ``"constant"``: 1.
SCHEDULES = ("warmup_linear_decay", "constant")


def schedule_shape(name: str, count, warmup_steps, decay_steps):
    """The multiplier :math:`s(t)` of :data:`SCHEDULES` at step ``count`` (all arguments may be traced)."""
    t = jnp.asarray(count, jnp.float32)
    if name == "constant":
        return jnp.ones_like(t)
    w = jnp.asarray(warmup_steps, jnp.float32)
    d = jnp.asarray(decay_steps, jnp.float32)
    warm = t / jnp.maximum(w, 1.0)
    decay = jnp.clip((d - t) / jnp.maximum(d - w, 1.0), 0.0, 1.0)
    return jnp.where(t < w, warm, decay)


def _loss_sums(model, params, inputs, labels):
    if model.apply_masked is not None:  # BERT: the output projection at the masked positions only
        return _models.loss_sums(*model.apply_masked(params, inputs, labels))
    return _models.loss_sums(model.apply(params, inputs), labels)


def _padded_eval(task: Task):
    """The evaluation examples in ``(chunks, eval_batch_size, ...)``, padded with ignored labels (-1)."""
    n, size = task.num_eval, min(task.eval_batch_size, task.num_eval)
    chunks = -(-n // size)
    pad = chunks * size - n
    x, y = task.eval_inputs, task.eval_labels
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
        y = jnp.concatenate([y, jnp.full((pad, *y.shape[1:]), -1, y.dtype)])
    return x.reshape(chunks, size, *x.shape[1:]), y.reshape(chunks, size, *y.shape[1:])


_PROGRAMS: dict = {}


def clear_programs() -> None:
    """Forget the compiled programs (and the tasks they hold)."""
    _PROGRAMS.clear()


def _program(task: Task, make_tx, schedule: str, micro_batch: int, noise_examples: int, variants: bool = False):
    programs = dict(_chunk_program(task, make_tx, schedule, micro_batch, variants))
    programs["noise"] = None
    if noise_examples:
        key = ("noise", id(task), noise_examples)
        if key not in _PROGRAMS:
            _PROGRAMS[key] = jax.jit(_noise_scale_fn(task, noise_examples))
        programs["noise"] = _PROGRAMS[key]
    return programs


def _chunk_program(task: Task, make_tx, schedule: str, micro_batch: int, variants: bool = False):
    """The jitted ``init``, ``chunk`` (and ``noise``) functions, cached: calls with the same task, optimizer
    factory, schedule and micro-batch reuse one compiled program whatever the batch size (a multiple of the
    micro-batch), the chunk length, the schedule's lengths and the trials' rates and seeds (all traced; only
    the number of trials is a shape)."""
    key = (id(task), make_tx, schedule, micro_batch) + (("variants",) if variants else ())
    if key in _PROGRAMS:
        return _PROGRAMS[key]
    model, n_train, micro = task.model, task.num_train, micro_batch

    def tx_for(lr, warmup_steps, decay_steps, variant):
        rate = lambda count: lr * schedule_shape(schedule, count, warmup_steps, decay_steps)  # noqa: E731
        return make_tx(rate, variant) if variants else make_tx(rate)

    def permutation(seed, epoch):
        data_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
        return jax.random.permutation(jax.random.fold_in(data_key, epoch), n_train).astype(jnp.int32)

    def init(seed, lr, variant):
        params = model.init(jax.random.fold_in(jax.random.PRNGKey(seed), 0))
        # The batch order of epochs 0 and 1; the chunks shift it at every epoch boundary.
        return params, tx_for(lr, 1, 2, variant).init(params), (permutation(seed, 0), permutation(seed, 1))

    def chunk(params, opt_state, perms0, lr, seed, variant, start_step, num_steps, accumulation, warmup_steps,
              decay_steps, train_inputs, train_labels, eval_x, eval_y):
        """``num_steps`` steps from ``start_step`` of batch ``accumulation * micro``, then an evaluation.
        ``perms0`` holds the batch order of the epoch of the chunk's first example and of the next one."""
        tx = tx_for(lr, warmup_steps, decay_steps, variant)
        mask_key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
        batch_size = accumulation * micro

        def micro_grads(m, carry):
            # Micro-batch m of the step: examples pos ... pos + micro - 1 of the stream, where epoch e visits
            # the training set in the order permutation(seed, e); perms holds epochs e and e + 1.
            params, grads, sums, perms, t = carry
            pos = (start_step + t) * batch_size + m * micro
            e = pos // n_train
            entered = e > (pos - micro) // n_train  # the first micro-batch of a new epoch: shift the orders
            perms = jax.lax.cond(entered & (pos > 0),
                                 lambda p: (p[1], permutation(seed, e + 1)), lambda p: p, perms)
            offset = pos - e * n_train + jnp.arange(micro)
            idx = jnp.where(offset < n_train, perms[0][jnp.minimum(offset, n_train - 1)],
                            perms[1][jnp.maximum(offset - n_train, 0)])
            inputs = train_inputs[idx]
            if task.kind == "mlm":
                inputs, labels = mask_tokens_on_device(jax.random.fold_in(mask_key, pos), inputs,
                                                       vocab_size=task.vocab_size, **task.mask_kwargs)
            else:
                labels = train_labels[idx]

            def objective(p):
                s = _loss_sums(model, p, inputs, labels)
                return s["loss"], s

            (_, s), g = jax.value_and_grad(objective, has_aux=True)(params)
            return (params, jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, s), perms, t)

        def step(t, carry):
            params, opt_state, perms, loss_total = carry
            zero_sums = {k: jnp.zeros([], jnp.float32) for k in ("loss", "correct", "count")}
            init = (params, jax.tree.map(jnp.zeros_like, params), zero_sums, perms, t)
            _, grads, sums, perms, _ = jax.lax.fori_loop(0, accumulation, micro_grads, init)
            count = jnp.maximum(sums["count"], 1.0)
            grads = jax.tree.map(lambda g: g / count, grads)  # the mean over the labelled positions of the batch
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, perms, loss_total + sums["loss"] / count

        params, opt_state, perms, loss_total = jax.lax.fori_loop(
            0, num_steps, step, (params, opt_state, perms0, jnp.zeros([], jnp.float32)))

        def eval_chunk(carry, xy):
            s = _loss_sums(model, params, xy[0], xy[1])
            return jax.tree.map(jnp.add, carry, s), None

        zero = {k: jnp.zeros([], jnp.float32) for k in ("loss", "correct", "count")}
        sums, _ = jax.lax.scan(eval_chunk, zero, (eval_x, eval_y))
        count = jnp.maximum(sums["count"], 1.0)
        return params, opt_state, perms, {"train_loss": loss_total / jnp.maximum(num_steps, 1),
                                   "test_loss": sums["loss"] / count, "test_accuracy": sums["correct"] / count}

    trial_axes = (0, 0, 0, 0, 0, 0) + (None,) * 9
    programs = {"init": jax.jit(jax.vmap(init)), "chunk": jax.jit(jax.vmap(chunk, in_axes=trial_axes))}
    _PROGRAMS[key] = programs
    return programs


def _noise_sample(task: Task, n: int):
    """A fixed sample of ``n`` training examples (for MLM: masked once) for the gradient noise scale."""
    key = jax.random.PRNGKey(_EVAL_MASK_SEED)
    idx = jax.random.permutation(key, task.num_train)[:n]
    x = task.train_inputs[idx]
    if task.kind == "mlm":
        return mask_tokens_on_device(jax.random.fold_in(key, 1), x, vocab_size=task.vocab_size, **task.mask_kwargs)
    return x, task.train_labels[idx]


def _noise_scale_fn(task: Task, n: int, micro: int = 16):
    r"""``noise(params, x, y) -> (B_simple, |G|^2, tr Sigma)`` from the per-example gradients :math:`g_n` of
    the ``n`` examples (the mean loss of each example, or of each sequence's masked tokens), accumulated over
    micro-batches: with :math:`\hat G = \frac1n\sum g_n`, the unbiased estimates
    :math:`\widehat{\operatorname{tr}\Sigma} = \frac{1}{n-1}\sum_n\|g_n - \hat G\|^2` and
    :math:`\widehat{\|G\|^2} = \|\hat G\|^2 - \widehat{\operatorname{tr}\Sigma}/n`, and their ratio."""
    model = task.model
    micro = math.gcd(n, micro)

    def example_loss(params, x, y):
        s = _loss_sums(model, params, x[None], y[None])
        return s["loss"] / jnp.maximum(s["count"], 1.0)

    def noise(params, x, y):
        per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))
        xs = x.reshape(n // micro, micro, *x.shape[1:])
        ys = y.reshape(n // micro, micro, *y.shape[1:])

        def body(carry, xy):
            total, sq = carry
            g = per_example(params, *xy)
            total = jax.tree.map(lambda a, b: a + jnp.sum(b, axis=0), total, g)
            sq = sq + sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(g))
            return (total, sq), None

        zero = (jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.float32))
        (total, sq), _ = jax.lax.scan(body, zero, (xs, ys))
        mean_sq = sum(jnp.sum(jnp.square(leaf / n)) for leaf in jax.tree.leaves(total))
        trace = (sq - n * mean_sq) / (n - 1)
        signal = mean_sq - trace / n
        return trace / signal, signal, trace

    return noise


def run(task: Task, make_tx: Callable, learning_rates: Sequence[float], seeds: Sequence[int], **kwargs
        ) -> VectorizedResult:
    """Train every ``(learning rate, seed)`` of ``learning_rates x seeds`` at once; see :func:`run_trials`."""
    lrs = [float(v) for v in learning_rates]
    seeds = [int(s) for s in seeds]
    if not lrs or not seeds:
        raise ValueError(f"learning_rates and seeds must be non-empty, got {learning_rates!r} and {seeds!r}")
    return run_trials(task, make_tx, [(lr, s) for lr in lrs for s in seeds], **kwargs)


def run_trials(task: Task, make_tx: Callable, trials: Sequence[tuple[float, int]], *, batch_size: int, steps: int,
               eval_every: int, schedule: str = "warmup_linear_decay", warmup_steps: int = 0,
               decay_steps: int | None = None, micro_batch: int | None = None, target: float | None = None,
               metric: str | None = None, higher_is_better: bool | None = None, stop: str | None = "all",
               noise_scale_trials: int = 0, noise_scale_examples: int = 256, verbose: bool = False,
               variants: Sequence[int] | None = None) -> VectorizedResult:
    """Train the ``trials`` (pairs ``(peak learning rate, seed)``) of ``task`` in one vectorized program.

    Args:
      task: a :class:`Task` (:func:`image_task`, :func:`mlm_task`).
      make_tx: ``make_tx(learning_rate) -> optax.GradientTransformation``, called with each trial's schedule
        ``count -> lr * s(count)`` (traced: one compiled program serves every rate). Pass the *same* function
        object to calls that should share a compiled program.
      trials: ``(learning_rate, seed)`` pairs; the seed sets the initial weights, the batch order and the
        masks. Trials with the same seed and different rates see the same data (common random numbers).
      batch_size, steps, eval_every: the step budget is ``steps``; the held-out split is evaluated after every
        ``eval_every`` steps and after the last.
      schedule, warmup_steps, decay_steps: the shape :math:`s(t)` (:data:`SCHEDULES`): linear warmup over
        ``warmup_steps``, then linear decay to zero at ``decay_steps`` (default ``steps``).
      micro_batch: examples per forward/backward pass (default ``batch_size``); a batch is the sum of
        ``batch_size / micro_batch`` micro-batches, one optimizer step (gradient accumulation, the same step
        to float rounding). Calls with the same micro-batch share one compiled program across batch sizes.
      target, metric, higher_is_better: the target of the stop rule (``metric`` default ``"test_accuracy"``
        for classification, ``"test_loss"`` for MLM; the direction by the metric's name).
      stop: ``"all"``: stop once every trial has reached the target or diverged (a non-finite loss);
        ``"any"``: once any trial has reached it (a tuning sweep: the first to reach it is the best), or with
        ``variants`` once some trial of every variant has reached it (or every trial of the variant diverged);
        ``None``: train the whole budget. Without a target only the divergence of every trial stops a run.
      noise_scale_trials: for the first this many trials, record ``noise_scale`` (:math:`B_\\text{simple}`),
        ``gradient_sq_norm`` and ``trace_covariance`` at every evaluation, from per-example gradients on a
        fixed sample of ``noise_scale_examples`` training examples.
      variants: an int >= 0 per trial (default: none). ``make_tx`` is then called as ``make_tx(schedule,
        variant)`` with the trial's variant as a traced int32 scalar, so trials of different variants (e.g.
        optimizers, :func:`lamb.experiments.scaling.optimizer_bank`) share one compiled program.

    In a dry run (:func:`lamb.profiles.dry_run`) only the first trial trains, for ``DRY_RUN_STEPS`` steps.
    """
    from lamb.experiments import metrics

    if not isinstance(task, Task):
        raise TypeError(f"task must be a vectorized.Task (image_task, mlm_task), got {type(task).__name__}")
    if not callable(make_tx):
        raise TypeError(f"make_tx must be a function of the learning rate returning an optax transformation, got "
                        f"{make_tx!r}")
    batch_size = _check_int("batch_size", batch_size)
    steps = _check_int("steps", steps)
    eval_every = _check_int("eval_every", eval_every)
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    decay_steps = steps if decay_steps is None else _check_int("decay_steps", decay_steps)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "warmup_linear_decay" and warmup_steps >= decay_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be smaller than decay_steps={decay_steps}")
    micro = batch_size if micro_batch is None else _check_int("micro_batch", micro_batch)
    if micro > batch_size or batch_size % micro:
        raise ValueError(f"batch_size={batch_size} must be a multiple of micro_batch={micro}")
    if stop not in STOP_RULES:
        raise ValueError(f"stop must be one of {STOP_RULES}, got {stop!r}")
    trials = [(float(lr), int(s)) for lr, s in trials]
    if not trials:
        raise ValueError("trials must hold at least one (learning_rate, seed) pair")
    for lr, s in trials:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rates must be finite and > 0, got {lr!r}")
        if not 0 <= s < 2**32:
            raise ValueError(f"seeds must be in [0, 2**32), got {s!r}")
    if batch_size > task.num_train:
        raise ValueError(f"batch_size={batch_size} exceeds the {task.num_train} training examples of the task")
    if metric is None:
        metric = "test_loss" if task.kind == "mlm" else "test_accuracy"
    if metric not in ("test_loss", "test_accuracy", "train_loss"):
        raise ValueError(f"metric must be 'test_loss', 'test_accuracy' or 'train_loss', got {metric!r}")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float, np.floating))
                               or not math.isfinite(target)):
        raise ValueError(f"target must be a finite number or None, got {target!r}")
    hib = metrics._higher_is_better(metric, higher_is_better)
    noise_trials = _check_int("noise_scale_trials", noise_scale_trials, 0)
    noise_n = 0
    if noise_trials:
        noise_n = _check_int("noise_scale_examples", noise_scale_examples, 2)
        if noise_n > task.num_train:
            raise ValueError(f"noise_scale_examples={noise_n} exceeds the {task.num_train} training examples")
    if variants is not None:
        variants = [_check_int("variants[i]", v, 0) for v in variants]
        if len(variants) != len(trials):
            raise ValueError(f"variants must hold one int per trial ({len(trials)}), got {len(variants)}")
    if profiles.dry_run():
        trials, steps = trials[:1], profiles.DRY_RUN_STEPS
        variants = None if variants is None else variants[:1]
        eval_every = min(eval_every, steps)
    noise_trials = min(noise_trials, len(trials))
    config = {"task": task.config, "batch_size": batch_size, "micro_batch": micro, "steps": steps,
              "eval_every": eval_every, "schedule": schedule, "warmup_steps": warmup_steps,
              "decay_steps": decay_steps, "target": target, "metric": metric, "higher_is_better": hib, "stop": stop,
              "trials": [list(t) for t in trials], "noise_scale_trials": noise_trials,
              "noise_scale_examples": noise_n if noise_trials else 0, "variants": variants}

    programs = _program(task, make_tx, schedule, micro, noise_n if noise_trials else 0, variants is not None)
    t0 = time.perf_counter()
    lrs = jnp.asarray([lr for lr, _ in trials], jnp.float32)
    seeds = jnp.asarray([s for _, s in trials], jnp.uint32)
    variant_ids = jnp.asarray(variants if variants is not None else [0] * len(trials), jnp.int32)
    groups = np.asarray(variants if variants is not None else [0] * len(trials))
    params, opt_state, perms = programs["init"](seeds, lrs, variant_ids)
    eval_x, eval_y = _padded_eval(task)
    train_labels = task.train_labels if task.train_labels is not None else jnp.zeros((), jnp.int32)
    noise_sample = _noise_sample(task, noise_n) if noise_trials else None
    static = (jnp.int32(batch_size // micro), jnp.int32(warmup_steps), jnp.int32(decay_steps))
    records, noise_records, eval_steps = [], [], []
    compile_seconds, stopped_early = 0.0, False
    reached = np.zeros(len(trials), bool)
    start = 0
    while start < steps:
        n = min(eval_every, steps - start)
        params, opt_state, perms, m = programs["chunk"](params, opt_state, perms, lrs, seeds, variant_ids,
                                                        jnp.int32(start), jnp.int32(n), *static, task.train_inputs,
                                                        train_labels, eval_x, eval_y)
        m = {k: np.asarray(v, np.float64) for k, v in m.items()}
        if start == 0:
            compile_seconds = time.perf_counter() - t0
        start += n
        records.append(m)
        eval_steps.append(start)
        if noise_trials:
            noise_records.append([np.asarray(programs["noise"](jax.tree.map(lambda a: a[i], params), *noise_sample),
                                             np.float64) for i in range(noise_trials)])
        diverged = ~(np.isfinite(m["train_loss"]) & np.isfinite(m["test_loss"]))
        if target is not None:
            with np.errstate(invalid="ignore"):
                reached |= (m[metric] >= target) if hib else (m[metric] <= target)
        if verbose:
            print(f"step {start:6d}: " + ", ".join(f"{k} {np.nanmedian(v):.4g}" for k, v in m.items()))
        if start < steps and stop is not None:
            any_done = all(np.any(reached[groups == g]) or np.all(diverged[groups == g]) for g in np.unique(groups))
            done = (target is not None and ((stop == "all" and np.all(reached | diverged))
                                            or (stop == "any" and np.any(reached) and any_done)))
            if done or np.all(diverged):
                stopped_early = True
                break
    eval_steps = np.asarray(eval_steps)
    histories = []
    for i in range(len(trials)):
        h = {"step": eval_steps, "eval_step": eval_steps, "epoch": eval_steps * batch_size / task.num_train}
        for k in records[0]:
            h[k] = np.array([r[k][i] for r in records])
        if i < noise_trials:
            for j, name in enumerate(("noise_scale", "gradient_sq_norm", "trace_covariance")):
                h[name] = np.array([r[i][j] for r in noise_records])
        histories.append(h)
    return VectorizedResult(trials=trials, steps=eval_steps, histories=histories, config=config,
                            stopped_early=stopped_early, compile_seconds=compile_seconds,
                            run_seconds=time.perf_counter() - t0, params=params, variants=variants)
