r"""The training loop every experiment shares: any model, any optax transformation, any number of devices.

::

    from lamb import jax as lj
    from lamb.experiments import data, models, schedules, train

    ds = data.load("mnist1d", seed=0)
    model = models.mlp(40, [256, 256], ds.num_classes)
    lr = schedules.warmup_polynomial_decay(0.02, warmup_steps=50, total_steps=500)
    result = train.fit(model, lj.lamb(lr, weight_decay=0.01), ds, batch_size=1024, steps=500, eval_every=50,
                       learning_rate=lr, result_path="results/run.json", checkpoint_dir="ckpt/run")
    result.history["loss"], result.history["test_accuracy"], result.history["trust_ratio"]["dense_0/kernel"]

What one step computes
======================
For a global batch of :math:`B` examples with labels :math:`y_i` (positions with a label below zero are
ignored), the step minimises the mean cross-entropy over the labelled positions,

.. math:: g_t = \nabla_x \frac{1}{N} \sum_{i \in \text{batch}} \ell(x_t; \xi_i), \qquad N = \#\{i : y_i \ge 0\},

then ``updates, state = tx.update(g_t, state, x_t)``, ``x_{t+1} = x_t + updates`` (optax's convention).

- **Data parallelism.** With ``devices`` (default: all of ``jax.devices()``) the batch is split along its
  first axis over a 1-D mesh ``("data",)`` and the parameters and optimizer state are replicated
  (``jax.sharding.NamedSharding``); XLA inserts the all-reduce of the gradient sums. The same code runs on
  one CPU, one GPU, or the 8 cores of a Colab TPU, and computes the same function (the per-example
  computation does not depend on the split -- the models have no batch statistics); results agree to float
  rounding of the reduction order.
- **Many processes.** After ``jax.distributed.initialize`` (see :mod:`lamb.experiments.distributed`),
  ``jax.devices()`` lists the devices of every process, and the mesh spans them all. Every process computes the
  same global batch order (a function of ``(data_seed, step)``) and hands JAX only the rows its own devices
  hold (``jax.make_array_from_process_local_data``); parameters and metrics are replicated, so every process
  reads them back; process 0 alone writes checkpoints, result files and the progress bar, and on resume reads
  the checkpoint and broadcasts it (the hosts need no shared file system, only process 0's disk). A checkpoint
  holds whole arrays, so a run checkpointed by ``n`` processes resumes on any number.
- **Gradient accumulation.** ``accumulation_steps = A`` splits the global batch into ``A`` micro-batches
  (``lax.scan``), sums their gradient *sums* and divides once by the total count :math:`N`, so one optimizer
  step on ``A`` micro-batches is the step on the whole batch, to float rounding. This is how NVIDIA's LAMB
  recipe reaches a 64K batch on a few GPUs.
- **Metrics.** Every step records the training batch's ``loss`` and ``accuracy`` (before the update), the
  ``learning_rate`` of the update (from ``learning_rate=``, the schedule given to the optimizer, or from an
  ``optax.inject_hyperparams`` state), and the per-layer ``trust_ratio`` of LAMB/LARS (any state entry named
  ``trust_ratio``, as :mod:`lamb.jax` keeps, found with ``optax.tree_utils.tree_get_all_with_path``). Every
  ``eval_every`` steps (and at steps 0 and the last) the whole test split is evaluated: ``test_loss``,
  ``test_accuracy`` at ``eval_step``. Metrics are read back from the device only at evaluations and
  checkpoints, so steps are dispatched asynchronously.
- **Checkpoint and resume.** With ``checkpoint_dir``, every ``checkpoint_every`` steps the parameters,
  optimizer state, step, data position and history so far are written atomically to
  ``checkpoint_dir/checkpoint.npz``. A later call of :func:`fit` with the same arguments and the same
  ``checkpoint_dir`` continues from it (a closed Colab tab loses at most ``checkpoint_every`` steps) and ends
  with the same parameters and history as a run that never stopped: the data order is a function of
  ``(data_seed, step)`` only (:func:`lamb.experiments.data.batch_stream`), the models draw no random numbers
  after ``init``, and the step is the same compiled function. A checkpoint written by a run with a different
  configuration is refused with a ``ValueError``.
- **Result file.** ``result_path`` receives JSON with the configuration, the whole history, and the
  environment (device kind and count, backend, JAX/optax/NumPy versions, Python, date, wall time).
- **Dry run.** When :func:`lamb.profiles.dry_run` is on (``LAMB_DRY_RUN=1``, ``python -m lamb run ...
  --dry-run``), ``fit`` runs at most :data:`lamb.profiles.DRY_RUN_STEPS` steps and evaluates on at most that
  many evaluation batches, at the shapes it was given; the configuration and environment say
  ``"dry_run": true``, so such a run never resumes a real run's checkpoint and is never exported.

Data
====
``data`` is a :class:`lamb.experiments.data.Dataset` (classification: training batches of ``x_train, y_train``,
evaluation on ``x_test, y_test``) or a :class:`lamb.experiments.text.MLMData` (masked language modelling:
training batches from its ``stream``, evaluation on ``eval_batches`` batches of its validation split, the
masks drawn from a fixed seed so every evaluation sees the same positions).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamb import profiles
from lamb.experiments import models as _models

__all__ = ["TrainResult", "fit", "make_train_step", "make_eval_step", "environment", "load_result",
           "trust_ratios", "config_hash"]

CHECKPOINT_FILE = "checkpoint.npz"


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`fit` returns.

    ``history``: ``step`` (1..S, the step count after each update) with per-step ``loss``, ``accuracy``,
    ``learning_rate`` (NaN where unknown) and ``trust_ratio`` (``{layer name: array over steps}``, empty when
    the optimizer keeps none); ``eval_step`` with ``test_loss`` and ``test_accuracy``. All NumPy arrays.
    ``params`` and ``opt_state`` are the final values; ``config`` and ``environment`` as in the result file;
    ``resumed_from`` the step a checkpoint was loaded at (0 when the run started fresh).
    """

    params: object
    opt_state: object
    history: dict
    config: dict
    environment: dict = field(default_factory=dict)
    resumed_from: int = 0

    def final(self, metric: str) -> float:
        """The last recorded value of ``metric``."""
        return float(self.history[metric][-1])

    def to_json(self) -> dict:
        return {"config": self.config, "environment": self.environment, "history": _jsonable(self.history)}

    def save(self, path) -> Path:
        """Write :meth:`to_json` to ``path`` (parents created, written atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=1, allow_nan=True))
        os.replace(tmp, path)
        return path


def _jsonable(tree):
    if isinstance(tree, Mapping):
        return {str(k): _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (np.ndarray, jax.Array)):
        return np.asarray(tree).tolist()
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, (np.integer, np.floating)):
        return tree.item()
    return tree


def _arrays(history: Mapping) -> dict:
    out = {}
    for k, v in history.items():
        out[k] = _arrays(v) if isinstance(v, Mapping) else np.asarray(v)
    return out


def load_result(path) -> dict:
    """Read a result file: ``{"config", "environment", "history"}`` with the history as NumPy arrays."""
    raw = json.loads(Path(path).read_text())
    raw["history"] = _arrays(raw["history"])
    return raw


def environment(devices=None) -> dict:
    """Where a run ran: device kind and count, backend, library versions, Python, platform, UTC date (and
    ``"dry_run": True`` in a dry run)."""
    devices = list(jax.devices() if devices is None else devices)
    return {"device_kind": devices[0].device_kind, "device_count": len(devices), "backend": devices[0].platform,
            "process_count": jax.process_count(),
            "jax": jax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **({"dry_run": True} if profiles.dry_run() else {})}


def config_hash(config: Mapping) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``config`` (sorted keys)."""
    text = json.dumps(_jsonable(config), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Trust ratios in an optimizer state
# ---------------------------------------------------------------------------------------------------------------

def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def trust_ratios(opt_state) -> dict:
    """The per-layer trust ratios kept in ``opt_state`` (the first state entry named ``trust_ratio``, as
    :func:`lamb.jax.scale_by_trust_ratio` keeps them), as ``{layer name: 0-d array}``; ``{}`` when there is
    none (Adam, AdamW, ``optax.lamb``). Layers excluded by a ``layer_adaptation_mask`` do not appear."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "trust_ratio")
    if not found:
        return {}
    tree = found[0][1]
    return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _learning_rate_in_state(opt_state):
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate")
    return found[0][1] if found else None


# ---------------------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------------------

def _sums(model, params, batch):
    if getattr(model, "apply_masked", None) is not None:  # logits at the labelled positions only (BERT's MLM)
        return _models.loss_sums(*model.apply_masked(params, batch["inputs"], batch["labels"]))
    return _models.loss_sums(model.apply(params, batch["inputs"]), batch["labels"])


def make_train_step(model, tx: optax.GradientTransformation, accumulation_steps: int = 1) -> Callable:
    """``step(params, opt_state, batch) -> (params, opt_state, metrics)``, not yet jitted.

    ``batch`` is ``{"inputs", "labels"}`` (leading axis: the global batch). ``metrics`` holds ``loss``,
    ``accuracy``, ``learning_rate`` and ``trust_ratio`` (a 1-D array, one entry per layer of
    :func:`trust_ratios`, empty when the optimizer keeps none). With ``accumulation_steps = A`` the batch is
    split into ``A`` micro-batches: micro-batch ``a`` holds examples ``a, a + A, a + 2A, ...``, so that each
    device's contiguous shard contributes equally to every micro-batch.
    """

    def grad_sums(params, batch):
        def objective(p):
            s = _sums(model, p, batch)
            return s["loss"], s

        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, sums

    def step(params, opt_state, batch):
        if accumulation_steps == 1:
            grads, sums = grad_sums(params, batch)
        else:
            micro = jax.tree.map(
                lambda a: jnp.swapaxes(a.reshape(a.shape[0] // accumulation_steps, accumulation_steps,
                                                 *a.shape[1:]), 0, 1), batch)
            zeros = (jax.tree.map(jnp.zeros_like, params),
                     {k: jnp.zeros([], jnp.float32) for k in ("loss", "correct", "count")})

            def body(carry, mb):
                g, s = grad_sums(params, mb)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            (grads, sums), _ = jax.lax.scan(body, zeros, micro)
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # The rate of this update, where the state holds it (optax.inject_hyperparams); fit() overrides it
        # with learning_rate(step - 1) when given the rate or schedule.
        injected = _learning_rate_in_state(opt_state)
        lr = jnp.float32(jnp.nan) if injected is None else jnp.asarray(injected, jnp.float32)
        ratios = list(trust_ratios(opt_state).values())
        ratios = jnp.stack([jnp.asarray(r, jnp.float32) for r in ratios]) if ratios else jnp.zeros((0,), jnp.float32)
        metrics = {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count, "learning_rate": lr,
                   "trust_ratio": ratios}
        return params, opt_state, metrics

    return step


def make_eval_step(model) -> Callable:
    """``eval_step(params, batch) -> {"loss", "correct", "count"}`` sums (not yet jitted)."""
    return lambda params, batch: _sums(model, params, batch)


# ---------------------------------------------------------------------------------------------------------------
# Data adapters
# ---------------------------------------------------------------------------------------------------------------

class _ClassificationData:
    def __init__(self, ds):
        self.ds = ds
        self.name = ds.name
        self.num_train = ds.num_train

    def stream(self, batch_size, seed, start_step):
        from lamb.experiments import data

        for x, y in data.batch_stream(self.ds.x_train, self.ds.y_train, batch_size=batch_size, seed=seed,
                                      start_step=start_step):
            yield {"inputs": x, "labels": y.astype(np.int32)}

    def eval_batches(self, batch_size, max_batches):
        x, y = self.ds.x_test, self.ds.y_test
        n = len(y) if max_batches is None else min(len(y), batch_size * max_batches)
        for start in range(0, n, batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size].astype(np.int32)
            pad = batch_size - len(yb)
            if pad:  # pad to a fixed shape (one compiled program); padded labels -1 are ignored
                xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
                yb = np.concatenate([yb, np.full(pad, -1, np.int32)])
            yield {"inputs": xb, "labels": yb}


class _MLMData:
    EVAL_SEED = 12345  # a fixed masking of the validation split, the same at every evaluation

    def __init__(self, mlm):
        self.mlm = mlm
        self.name = f"mlm{mlm.seq_len}"
        self.num_train = int(mlm.train.shape[0])

    def stream(self, batch_size, seed, start_step):
        for b in self.mlm.stream(batch_size, seed=seed, start_step=start_step):
            yield {"inputs": b["input_ids"], "labels": b["labels"]}

    def eval_batches(self, batch_size, max_batches):
        batch_size = min(batch_size, int(self.mlm.validation.shape[0]))
        for i, b in enumerate(self.mlm.batches(batch_size, seed=self.EVAL_SEED, split="validation")):
            if max_batches is not None and i >= max_batches:
                break
            yield {"inputs": b["input_ids"], "labels": b["labels"]}


def _adapt(data):
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        return _ClassificationData(data)
    if hasattr(data, "stream") and hasattr(data, "validation") and hasattr(data, "seq_len"):
        return _MLMData(data)
    if hasattr(data, "stream") and hasattr(data, "eval_batches") and hasattr(data, "num_train"):
        return data  # a user-made source following the same protocol
    raise TypeError(f"data must be a lamb.experiments.data.Dataset or a lamb.experiments.text.MLMData, got "
                    f"{type(data).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

def _save_checkpoint(directory: Path, params, opt_state, meta: dict):
    directory.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree.leaves(jax.device_get((params, opt_state)))
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(_jsonable(meta), allow_nan=True).encode(), dtype=np.uint8)
    tmp = directory / f".{CHECKPOINT_FILE}.tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, directory / CHECKPOINT_FILE)  # atomic: a crash mid-write keeps the previous checkpoint


def _process_rows(sharding, num_rows: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a batch of ``num_rows`` that this process's devices hold under ``sharding``
    (a batch split along axis 0 over a mesh whose devices are ordered by process, as ``jax.devices()`` is)."""
    slices = [index[0] for index in sharding.addressable_devices_indices_map((num_rows,)).values()]
    starts = sorted({s.start or 0 for s in slices})
    stops = sorted({num_rows if s.stop is None else s.stop for s in slices})
    lo, hi = starts[0], stops[-1]
    if sum(b - a for a, b in zip(starts, stops)) != hi - lo:
        raise ValueError(f"this process's devices hold non-contiguous rows {list(zip(starts, stops))} of the batch; "
                         "order the mesh's devices by process")
    return lo, hi


def _put_batch(batch, sharding):
    """The global batch as arrays split along axis 0 by ``sharding``. With one process, ``jax.device_put``; with
    several, each process passes only its own rows (``jax.make_array_from_process_local_data``)."""
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)

    def put(a):
        a = np.asarray(a)
        lo, hi = _process_rows(sharding, a.shape[0])
        return jax.make_array_from_process_local_data(sharding, a[lo:hi], a.shape)

    return jax.tree.map(put, batch)


def _put_replicated(tree, sharding):
    """``tree`` replicated on every device of ``sharding`` (host values first when several processes share it:
    every process holds the same values, so each places its own copy)."""
    if jax.process_count() > 1:
        tree = jax.device_get(tree)
    return jax.device_put(tree, sharding)


def _load_checkpoint_on_all(directory: Path, template):
    """:func:`_load_checkpoint` for every process: process 0 reads the file and broadcasts what it read, so
    the other hosts need no shared file system (the file is written by process 0 alone, too)."""
    if jax.process_count() == 1:
        return _load_checkpoint(directory, template)
    from jax.experimental import multihost_utils

    first = jax.process_index() == 0
    loaded = _load_checkpoint(directory, template) if first else None
    if not int(multihost_utils.broadcast_one_to_all(np.int32(loaded is not None))):
        return None
    if first:
        tree, meta = loaded
        text = np.frombuffer(json.dumps(meta, allow_nan=True).encode(), dtype=np.uint8)
    else:
        tree, text = jax.device_get(template), None
    size = int(multihost_utils.broadcast_one_to_all(np.int32(0 if text is None else text.size)))
    text = multihost_utils.broadcast_one_to_all(np.zeros(size, np.uint8) if text is None else text)
    tree = multihost_utils.broadcast_one_to_all(jax.tree.map(np.asarray, tree))
    return jax.tree.map(np.asarray, tree), json.loads(np.asarray(text, np.uint8).tobytes().decode())


def _sync(name: str):
    """A barrier across processes (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _load_checkpoint(directory: Path, template):
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        return None
    with np.load(path) as f:
        meta = json.loads(f["meta"].tobytes().decode())
        leaves = [f[f"leaf_{i:05d}"] for i in range(len(f.files) - 1)]
    treedef = jax.tree.structure(template)
    if treedef.num_leaves != len(leaves):
        raise ValueError(f"checkpoint {path} holds {len(leaves)} arrays but this model and optimizer have "
                         f"{treedef.num_leaves}; use another checkpoint_dir")
    return jax.tree.unflatten(treedef, leaves), meta


# ---------------------------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------------------------

def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _devices(devices):
    if devices is None:
        return list(jax.devices())
    if isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices} but JAX sees {len(available)} device(s)")
        return list(available[:devices])
    devices = list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    return devices


def fit(model, tx: optax.GradientTransformation, data, *, batch_size: int, steps: int | None = None,
        epochs: int | None = None, eval_every: int | None = None, seed: int = 0, data_seed: int | None = None,
        params=None, opt_state=None, accumulation_steps: int = 1, learning_rate=None, devices=None,
        eval_batch_size: int | None = None, eval_batches: int | None = None, progress=True,
        checkpoint_dir=None, checkpoint_every: int | None = None, result_path=None, config: Mapping | None = None,
        callback: Callable | None = None) -> TrainResult:
    """Train ``model`` with ``tx`` on ``data`` for ``steps`` optimizer steps (or ``epochs`` epochs) of
    ``batch_size`` examples; return a :class:`TrainResult`.

    Arguments (see the module docstring for what each does):

    - ``model``: a :class:`lamb.experiments.models.Model`; ``params``: initial parameters (default
      ``model.init(jax.random.key(seed))``); ``opt_state``: initial optimizer state (default
      ``tx.init(params)``; given to carry moments from one phase of a recipe into the next).
    - ``tx``: any ``optax.GradientTransformation``; ``learning_rate``: its rate or schedule, recorded per step
      (optional; when missing, an ``inject_hyperparams`` state's rate is recorded, else NaN).
    - ``steps`` or ``epochs`` (exactly one): ``epochs`` means ``epochs * floor(num_train / batch_size)`` steps.
    - ``eval_every``: evaluate every so many steps (default: only at step 0 and at the end);
      ``eval_batch_size`` (default ``min(batch_size, 1024)`` rounded up to the device count),
      ``eval_batches``: at most this many evaluation batches (default: the whole split).
    - ``seed``: initial weights; ``data_seed`` (default ``seed``): data order (and MLM masks).
    - ``accumulation_steps``: micro-batches per step; ``batch_size`` must be divisible by
      ``accumulation_steps * number of devices``.
    - ``devices``: a device list, a count (the first ``n`` of ``jax.devices()``) or ``None`` for all.
    - ``progress``: True for a tqdm progress bar on stderr, a text stream (e.g. ``sys.stdout``, which a built
      book keeps in its pages) for the bar there, False for none; ``checkpoint_dir``/``checkpoint_every`` (default ``eval_every`` or
      every 100 steps): checkpoint and resume; ``result_path``: the JSON result file;
      ``config``: extra JSON-able entries for the configuration (the optimizer's name and hyperparameters:
      a transformation cannot describe itself).
    - ``callback(step, params, opt_state)``: called after every step (after any checkpoint of that step).
    """
    source = _adapt(data)
    batch_size = _check_int("batch_size", batch_size, 1)
    accumulation_steps = _check_int("accumulation_steps", accumulation_steps, 1)
    if not isinstance(progress, bool) and not callable(getattr(progress, "write", None)):
        raise TypeError(f"progress must be True, False or a text stream (with .write), got {progress!r}")
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of steps and epochs, got steps={steps!r}, epochs={epochs!r}")
    if batch_size > source.num_train:
        raise ValueError(f"batch_size={batch_size} exceeds the {source.num_train} training examples")
    if steps is None:
        steps = _check_int("epochs", epochs, 1) * (source.num_train // batch_size)
    steps = _check_int("steps", steps, 1)
    if eval_every is not None:
        eval_every = _check_int("eval_every", eval_every, 1)
    if eval_batches is not None:
        eval_batches = _check_int("eval_batches", eval_batches, 1)
    dry = profiles.dry_run()
    if dry:  # full-scale shapes, two steps, two evaluation batches (see lamb.profiles.dry_run)
        steps = profiles.dry_run_steps(steps)
        eval_batches = min(eval_batches or profiles.DRY_RUN_STEPS, profiles.DRY_RUN_STEPS)
    seed = _check_int("seed", seed, 0)
    data_seed = seed if data_seed is None else _check_int("data_seed", data_seed, 0)
    devices = _devices(devices)
    n_dev = len(devices)
    if batch_size % (accumulation_steps * n_dev):
        raise ValueError(f"batch_size={batch_size} must be divisible by accumulation_steps * devices = "
                         f"{accumulation_steps} * {n_dev}")
    if eval_batch_size is None:
        eval_batch_size = -(-min(batch_size, 1024) // n_dev) * n_dev
    eval_batch_size = _check_int("eval_batch_size", eval_batch_size, 1)
    if eval_batch_size % n_dev:
        raise ValueError(f"eval_batch_size={eval_batch_size} must be divisible by the {n_dev} devices")
    if checkpoint_every is None:
        checkpoint_every = eval_every or 100
    checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)

    run_config = {"model": dict(model.config), "data": source.name, "batch_size": batch_size, "steps": steps,
                  "eval_every": eval_every, "seed": seed, "data_seed": data_seed,
                  "accumulation_steps": accumulation_steps, "eval_batch_size": eval_batch_size,
                  "eval_batches": eval_batches, **(dict(config) if config else {})}
    if dry:  # a dry run never resumes a real run's checkpoint, nor a real run a dry run's
        run_config["dry_run"] = True

    # Placement: a 1-D mesh over the devices; batch split along axis 0, everything else replicated.
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    if params is None:
        params = model.init(jax.random.key(seed))
    if opt_state is None:
        opt_state = tx.init(params)
    layer_names = list(trust_ratios(opt_state))
    history = {"step": [], "loss": [], "accuracy": [], "learning_rate": [], "trust_ratio": [], "eval_step": [],
               "test_loss": [], "test_accuracy": []}

    start = 0
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if checkpoint_dir is not None:
        loaded = _load_checkpoint_on_all(checkpoint_dir, (params, opt_state))
        if loaded is not None:
            (params, opt_state), meta = loaded
            if meta["config_hash"] != config_hash(run_config):
                raise ValueError(f"the checkpoint in {checkpoint_dir} belongs to a run with another configuration "
                                 f"({meta['config']}); use another checkpoint_dir or delete it")
            start = int(meta["step"])
            history = {k: list(v) for k, v in meta["history"].items()}

    params = _put_replicated(params, replicated)
    opt_state = _put_replicated(opt_state, replicated)
    train_step = jax.jit(make_train_step(model, tx, accumulation_steps),
                         in_shardings=(replicated, replicated, batch_sharding),
                         out_shardings=(replicated, replicated, replicated))
    eval_step = jax.jit(make_eval_step(model), in_shardings=(replicated, batch_sharding), out_shardings=replicated)
    eval_data = [_put_batch(b, batch_sharding) for b in source.eval_batches(eval_batch_size, eval_batches)]

    def evaluate(step):
        totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
        for s in jax.device_get([eval_step(params, b) for b in eval_data]):
            for k in totals:
                totals[k] += float(s[k])
        count = max(totals["count"], 1.0)
        history["eval_step"].append(step)
        history["test_loss"].append(totals["loss"] / count)
        history["test_accuracy"].append(totals["correct"] / count)

    pending = []  # per-step metrics still on the device

    def flush():
        for step, m in jax.device_get(pending):
            history["step"].append(step)
            for k in ("loss", "accuracy", "learning_rate"):
                history[k].append(float(m[k]))
            history["trust_ratio"].append([float(r) for r in m["trust_ratio"]])
        pending.clear()

    from tqdm import tqdm

    env = environment(devices)
    t0 = time.perf_counter()
    if start == 0 and not history["eval_step"]:
        evaluate(0)
    stream = source.stream(batch_size, data_seed, start)
    writer = jax.process_index() == 0  # one process writes files and draws the bar
    bar = tqdm(total=steps, initial=start, disable=not progress or not writer, desc=f"{model.name} B={batch_size}",
               file=None if isinstance(progress, bool) else progress,
               unit="step", dynamic_ncols=True)
    try:
        for step in range(start + 1, steps + 1):
            batch = _put_batch(next(stream), batch_sharding)
            params, opt_state, metrics = train_step(params, opt_state, batch)
            pending.append((step, metrics))
            bar.update(1)
            is_eval = (eval_every is not None and step % eval_every == 0) or step == steps
            if is_eval:
                flush()
                evaluate(step)
                bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", test_acc=f"{history['test_accuracy'][-1]:.4f}",
                                refresh=False)
            if checkpoint_dir is not None and (step % checkpoint_every == 0 or step == steps):
                flush()
                epoch, position = divmod(step, max(source.num_train // batch_size, 1))
                if writer:
                    _save_checkpoint(checkpoint_dir, params, opt_state,
                                     {"step": step, "epoch": epoch, "batch_in_epoch": position,
                                      "data_seed": data_seed, "seed": seed, "config": run_config,
                                      "config_hash": config_hash(run_config), "history": history})
                _sync(f"checkpoint {checkpoint_dir} {step}")
            if callback is not None:
                callback(step, params, opt_state)
    finally:
        bar.close()
    flush()
    wall = time.perf_counter() - t0
    env.update({"wall_time_s": wall, "steps_run": steps - start,
                "steps_per_second": (steps - start) / wall if wall > 0 else math.nan})

    ratios = np.asarray(history.pop("trust_ratio"), dtype=np.float64).reshape(len(history["step"]), -1)
    out = {k: np.asarray(v) for k, v in history.items()}
    if learning_rate is not None:  # the rate of update s is the schedule at count s - 1 (optax's convention)
        counts = out["step"] - 1
        out["learning_rate"] = (np.asarray(jax.device_get(jax.vmap(learning_rate)(jnp.asarray(counts))), np.float64)
                                if callable(learning_rate) else np.full(len(counts), float(learning_rate)))
    out["trust_ratio"] = {name: ratios[:, i] for i, name in enumerate(layer_names)}
    result = TrainResult(jax.device_get(params), jax.device_get(opt_state), out, run_config, env, start)
    if result_path is not None and writer:
        result.save(result_path)
    return result
