r"""The book's two recipes as one call: BERT pre-training (two sequence-length phases) and ResNet training.

``python -m lamb train bert|resnet`` (:mod:`lamb.training_cli`) and the "Scaling out" chapter both call
:func:`run`; it builds the data, the model, the optimizer and the schedule from a flat configuration and trains
with :func:`lamb.experiments.train.fit` -- on one CPU, on every device of one host, or on the devices of many
processes after :func:`lamb.experiments.distributed.initialize`.

The configuration (:func:`make_config`) starts from the profile's defaults (:data:`DEFAULTS`), then a TOML
file's entries, then explicit overrides; every key is checked (unknown keys and bad values are errors that
name the value and what is allowed).

The learning rate
=================
``lr`` is the peak rate tuned at ``base_batch_size``; the run's peak is
:math:`\eta = \eta_0 \cdot f(B / B_0)` with ``lr_rule`` ``"sqrt"`` (:math:`f = \sqrt{\cdot}`, the rule the LAMB
paper uses for BERT), ``"linear"`` (Goyal et al.) or ``"none"``. The schedule is a linear warmup over
``warmup_fraction`` of the steps and then a linear decay to zero (``schedule="poly"``, BERT's), or Goyal et
al.'s step decay (``schedule="step"``).

BERT's two phases
=================
The paper trains the first 90% of the steps at sequence length 128 and the last 10% at 512, and in its
mixed-batch runs *re-warms* the rate in the second phase ("we ramp up the learning rate from zero again in the
second stage"). Here ``steps`` is split by :func:`lamb.experiments.text.two_phase_steps` (``long_fraction``)
at the profile's sequence lengths (:data:`lamb.experiments.text.MLM_SEQ_LENS`); one model (positions up to the
long length) and one optimizer state run through both phases, and the schedule restarts its warmup at the
phase boundary (``optax.join_schedules``). ``long_batch_size`` is the phase-2 batch (the paper: 64K then 32K).

Weight decay and layer adaptation skip biases and normalization parameters (every 1-D array), as BERT's LAMB
does; ``momentum``/``nesterov`` are SGD with heavy-ball or Nesterov momentum and the same decoupled decay.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lamb import profiles

__all__ = ["RECIPES", "OPTIMIZERS", "DEFAULTS", "defaults", "make_config", "load_config_file", "make_optimizer",
           "learning_rate_schedule", "run", "RecipeResult", "StopRequested"]

RECIPES = ("bert", "resnet")
#: Optimizer names: LAMB and its Nesterov variants (N-LAMB, NN-LAMB), LARS, AdamW, SGD with momentum.
OPTIMIZERS = ("lamb", "nlamb", "nnlamb", "lars", "adamw", "momentum", "nesterov")
LR_RULES = ("sqrt", "linear", "none")
SCHEDULES = ("poly", "step")
DATASETS = ("mnist1d", "digits", "cifar10", "cifar100")

_COMMON = {"optimizer": "lamb", "seed": 0, "accumulation_steps": 1, "lr_rule": "sqrt", "warmup_fraction": 0.1,
           "weight_decay": 0.01, "momentum": 0.9, "schedule": "poly", "eval_batches": 4, "checkpoint_every": 0}

#: The defaults of each recipe at each profile (``checkpoint_every = 0``: at every evaluation).
DEFAULTS = {
    "bert": {
        "smoke": {"vocab_size": 2048, "hidden": 32, "layers": 1, "heads": 2, "batch_size": 16, "steps": 10,
                  "lr": 0.005, "base_batch_size": 16, "eval_every": 5},
        "cpu": {"vocab_size": 8192, "hidden": 128, "layers": 2, "heads": 2, "batch_size": 64, "steps": 200,
                "lr": 0.005, "base_batch_size": 64, "eval_every": 50},
        "gpu": {"vocab_size": 8192, "hidden": 256, "layers": 4, "heads": 4, "batch_size": 1024, "steps": 2000,
                "lr": 0.005, "base_batch_size": 256, "eval_every": 200},
    },
    "resnet": {
        "smoke": {"dataset": "mnist1d", "num_samples": 4000, "widths": [8, 16], "batch_size": 64, "steps": 10,
                  "lr": 0.01, "base_batch_size": 64, "eval_every": 5},
        "cpu": {"dataset": "mnist1d", "num_samples": 20000, "widths": [16, 32, 64], "batch_size": 256,
                "steps": 300, "lr": 0.01, "base_batch_size": 256, "eval_every": 50},
        "gpu": {"dataset": "mnist1d", "num_samples": 400000, "widths": [64, 128, 256], "batch_size": 4096,
                "steps": 2000, "lr": 0.01, "base_batch_size": 1024, "eval_every": 200},
    },
}
DEFAULTS["bert"]["tpu"] = DEFAULTS["bert"]["gpu"]
DEFAULTS["resnet"]["tpu"] = DEFAULTS["resnet"]["gpu"]
_RECIPE_ONLY = {"bert": {"long_fraction": 0.1, "long_batch_size": 0, "seq_len": 0, "long_seq_len": 0},
                "resnet": {"data_dir": ""}}


def defaults(recipe: str, profile: str | None = None) -> dict:
    """The default configuration of ``recipe`` at ``profile`` (default: the current profile)."""
    _check_choice("recipe", recipe, RECIPES)
    profile = profiles.current_profile() if profile is None else profiles.check_profile(profile)
    cfg = {"recipe": recipe, "profile": profile, **_COMMON, **_RECIPE_ONLY[recipe], **DEFAULTS[recipe][profile]}
    if recipe == "bert":
        from lamb.experiments import text

        cfg["seq_len"], cfg["long_seq_len"] = text.MLM_SEQ_LENS[profile]
    return cfg


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def _check_float(name, value, low, high, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}]; got {value!r}")
    return float(value)


def load_config_file(path) -> dict:
    """The entries of a TOML configuration file: top-level keys, or the keys of a ``[train]`` table."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no configuration file at {path}")
    with path.open("rb") as f:
        try:
            entries = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from None
    if set(entries) == {"train"} and isinstance(entries["train"], dict):
        entries = entries["train"]
    return entries


def make_config(recipe: str, profile: str | None = None, file=None, **overrides) -> dict:
    """The checked configuration: :func:`defaults`, then the TOML ``file``'s entries, then ``overrides``
    (entries that are ``None`` are left at the value below them)."""
    cfg = defaults(recipe, profile)
    layers = [load_config_file(file)] if file is not None else []
    layers.append({k: v for k, v in overrides.items() if v is not None})
    for entries in layers:
        if "recipe" in entries and entries["recipe"] != recipe:
            raise ValueError(f"the configuration is for recipe {entries['recipe']!r}, not {recipe!r}")
        if "profile" in entries and entries["profile"] != cfg["profile"]:
            cfg = {**defaults(recipe, entries["profile"]), **{k: v for k, v in cfg.items() if k != "profile"}}
        unknown = sorted(set(entries) - set(cfg))
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown} for recipe {recipe!r}; allowed: "
                             f"{', '.join(sorted(cfg))}")
        cfg.update(entries)
    return check_config(cfg)


def check_config(cfg: dict) -> dict:
    """Check every entry of a configuration; return it (a copy)."""
    cfg = dict(cfg)
    _check_choice("recipe", cfg["recipe"], RECIPES)
    profiles.check_profile(cfg["profile"])
    _check_choice("optimizer", cfg["optimizer"], OPTIMIZERS)
    _check_choice("lr_rule", cfg["lr_rule"], LR_RULES)
    _check_choice("schedule", cfg["schedule"], SCHEDULES)
    for name, minimum in [("batch_size", 1), ("base_batch_size", 1), ("steps", 1), ("accumulation_steps", 1),
                          ("seed", 0), ("eval_every", 1), ("eval_batches", 1), ("checkpoint_every", 0)]:
        _check_int(name, cfg[name], minimum)
    _check_float("lr", cfg["lr"], 0.0, math.inf, low_open=True)
    _check_float("warmup_fraction", cfg["warmup_fraction"], 0.0, 1.0)
    _check_float("weight_decay", cfg["weight_decay"], 0.0, math.inf)
    _check_float("momentum", cfg["momentum"], 0.0, 1.0)
    if cfg["batch_size"] % cfg["accumulation_steps"]:
        raise ValueError(f"batch_size={cfg['batch_size']} must be a multiple of "
                         f"accumulation_steps={cfg['accumulation_steps']}")
    if cfg["recipe"] == "bert":
        for name in ("vocab_size", "hidden", "layers", "heads", "seq_len", "long_seq_len"):
            _check_int(name, cfg[name], 1)
        _check_int("long_batch_size", cfg["long_batch_size"], 0)
        _check_float("long_fraction", cfg["long_fraction"], 0.0, 1.0)
        if cfg["long_seq_len"] < cfg["seq_len"]:
            raise ValueError(f"long_seq_len={cfg['long_seq_len']} must be >= seq_len={cfg['seq_len']}")
        if cfg["hidden"] % cfg["heads"]:
            raise ValueError(f"hidden={cfg['hidden']} must be divisible by heads={cfg['heads']}")
        if cfg["long_batch_size"] and cfg["long_batch_size"] % cfg["accumulation_steps"]:
            raise ValueError(f"long_batch_size={cfg['long_batch_size']} must be a multiple of "
                             f"accumulation_steps={cfg['accumulation_steps']}")
    else:
        _check_choice("dataset", cfg["dataset"], DATASETS)
        _check_int("num_samples", cfg["num_samples"], 10)
        widths = cfg["widths"]
        if (not isinstance(widths, (list, tuple)) or not widths
                or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 and w % 8 == 0 for w in widths)):
            raise ValueError(f"widths must be a non-empty list of positive multiples of 8; got {widths!r}")
        cfg["widths"] = list(widths)
        if cfg["dataset"].startswith("cifar") and not cfg["data_dir"]:
            raise ValueError(f"dataset {cfg['dataset']!r} reads files you downloaded: give data_dir "
                             "(--data-dir); the offline datasets are mnist1d and digits")
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------------------------

def _not_a_vector(params):
    """True for matrices and kernels: weight decay and the trust ratio skip biases and norm parameters."""
    import jax

    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(name: str, learning_rate, weight_decay: float = 0.01, momentum: float = 0.9):
    """The optax transformation ``name`` (one of :data:`OPTIMIZERS`) with rate or schedule ``learning_rate``.

    LAMB, N-LAMB, NN-LAMB and LARS are :mod:`lamb.jax`'s; AdamW is ``optax.adamw``; ``momentum`` and
    ``nesterov`` are ``optax.sgd`` after decoupled weight decay. Biases and normalization parameters get neither
    weight decay nor layer adaptation."""
    import optax

    from lamb import jax as lj

    _check_choice("optimizer", name, OPTIMIZERS)
    mask = _not_a_vector
    if name in ("lamb", "nlamb", "nnlamb"):
        nesterov = {"lamb": None, "nlamb": "n", "nnlamb": "nn"}[name]
        return lj.lamb(learning_rate, weight_decay=weight_decay, nesterov=nesterov, mask=mask,
                       layer_adaptation_mask=mask)
    if name == "lars":
        return lj.lars(learning_rate, momentum=momentum, weight_decay=weight_decay, mask=mask,
                       layer_adaptation_mask=mask)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask)
    return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                       optax.sgd(learning_rate, momentum=momentum, nesterov=name == "nesterov"))


def _peak(cfg: dict, batch_size: int) -> float:
    if cfg["lr_rule"] == "none":
        return float(cfg["lr"])
    from lamb.experiments import schedules

    return schedules.scale_learning_rate(cfg["lr"], batch_size, cfg["base_batch_size"], cfg["lr_rule"])


def _phase_schedule(cfg: dict, peak: float, steps: int):
    from lamb.experiments import schedules

    warmup = min(int(round(cfg["warmup_fraction"] * steps)), steps - 1) if steps > 1 else 0
    if cfg["schedule"] == "step":
        return schedules.warmup_step_decay(peak, steps, warmup_steps=warmup)
    return schedules.warmup_polynomial_decay(peak, max(warmup, 0), steps)


def _phases(cfg: dict) -> list[dict]:
    """The phases of the run: ``{"name", "steps", "batch_size", "seq_len"}`` (one phase for ResNet)."""
    if cfg["recipe"] == "resnet":
        return [{"name": "train", "steps": cfg["steps"], "batch_size": cfg["batch_size"]}]
    from lamb.experiments import text

    short, long_ = text.two_phase_steps(cfg["steps"], cfg["long_fraction"])
    phases = [{"name": "phase1", "steps": short, "batch_size": cfg["batch_size"], "seq_len": cfg["seq_len"]},
              {"name": "phase2", "steps": long_, "batch_size": cfg["long_batch_size"] or cfg["batch_size"],
               "seq_len": cfg["long_seq_len"]}]
    return [p for p in phases if p["steps"] > 0]


def learning_rate_schedule(cfg: dict):
    """The whole run's schedule over the optimizer's step count: one warmup-then-decay per phase, the rate of
    each phase scaled by ``lr_rule`` from its own batch size (``optax.join_schedules``)."""
    import optax

    phases = _phases(cfg)
    parts = [_phase_schedule(cfg, _peak(cfg, p["batch_size"]), p["steps"]) for p in phases]
    if len(parts) == 1:
        return parts[0]
    boundaries = [sum(p["steps"] for p in phases[:i + 1]) for i in range(len(phases) - 1)]
    return optax.join_schedules(parts, boundaries)


# ---------------------------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------------------------

class StopRequested(Exception):
    """Raised inside :func:`run` when ``stop_after`` steps are done (after their checkpoint)."""


@dataclass
class RecipeResult:
    """What :func:`run` returns: the final ``params``, the checked ``config``, one
    :class:`lamb.experiments.train.TrainResult` per phase (``phases``), and ``stopped_at`` (the global step a
    ``stop_after`` stopped at, else ``None``)."""

    params: object
    config: dict
    phases: dict = field(default_factory=dict)
    stopped_at: int | None = None

    def history(self, metric: str):
        """``metric`` over the whole run (phases concatenated; steps numbered globally for ``"step"`` and
        ``"eval_step"``)."""
        import numpy as np

        out, offset = [], 0
        for r in self.phases.values():
            values = np.asarray(r.history[metric])
            out.append(values + offset if metric in ("step", "eval_step") else values)
            offset += r.config["steps"]
        return np.concatenate(out) if out else np.zeros(0)


def _build(cfg: dict, phase: dict):
    from lamb.experiments import data, models, text

    if cfg["recipe"] == "bert":
        mlm = text.load_mlm(seq_len=phase["seq_len"], vocab_size=cfg["vocab_size"])
        model = models.bert(mlm.vocab_size, cfg["long_seq_len"], hidden=cfg["hidden"], layers=cfg["layers"],
                            heads=cfg["heads"])
        return model, mlm
    kwargs = {"seed": cfg["seed"]}
    if cfg["dataset"] == "mnist1d":
        kwargs["num_samples"] = cfg["num_samples"]
    if cfg["dataset"].startswith("cifar"):
        kwargs = {"root": cfg["data_dir"]}
    name = cfg["dataset"]
    ds = data.load_cifar(name, **kwargs) if name.startswith("cifar") else data.load(name, **kwargs)
    return models.resnet(ds.input_shape, ds.num_classes, widths=tuple(cfg["widths"])), ds


def _identity(cfg: dict) -> dict:
    """The entries that define the run's results, which a checkpoint must match: the whole configuration
    but ``checkpoint_every`` (where files go, the process count and the progress bar are arguments of
    :func:`run`, not entries)."""
    return json.loads(json.dumps({k: v for k, v in cfg.items() if k != "checkpoint_every"}))


def _log(log_path, record: dict):
    if log_path is None:
        return
    import jax

    if jax.process_index() != 0:
        return
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=True) + "\n")


def run(cfg: Mapping, *, checkpoint_dir=None, results_dir=None, progress=True, devices=None,
        stop_after: int | None = None) -> RecipeResult:
    """Train the recipe ``cfg`` (from :func:`make_config`); return a :class:`RecipeResult`.

    - ``checkpoint_dir``: checkpoints (one subfolder per phase) plus ``recipe.json``, the configuration; a
      later call with the same directory resumes, and refuses a directory written for another configuration.
    - ``results_dir``: one result file per phase (``<phase>.json``, :meth:`TrainResult.save`), the
      configuration (``config.json``) and a JSON-lines log ``log.jsonl`` (one line per event, step and
      evaluation).
    - ``devices``: as in :func:`lamb.experiments.train.fit` (default: all devices of all processes).
    - ``stop_after``: stop once this many steps of the whole run are done and checkpointed (a job with a time
      limit; the next call resumes), by raising :class:`StopRequested` inside and returning with
      ``stopped_at`` set.
    - In a dry run (:func:`lamb.profiles.dry_run`) every phase stops after
      :data:`lamb.profiles.DRY_RUN_STEPS` steps.
    """
    import jax

    from lamb.experiments import train

    cfg = check_config(dict(cfg))
    dry = profiles.dry_run()
    phases = _phases(cfg)
    schedule = learning_rate_schedule(cfg)
    tx = make_optimizer(cfg["optimizer"], schedule, cfg["weight_decay"], cfg["momentum"])
    writer = jax.process_index() == 0

    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckpt is not None:
        saved = ckpt / "recipe.json"
        if saved.is_file():
            before = json.loads(saved.read_text())
            if before != _identity(cfg):
                diff = {k: (before.get(k), cfg.get(k)) for k in sorted(set(before) | set(cfg))
                        if before.get(k) != cfg.get(k)}
                raise ValueError(f"the checkpoint in {ckpt} belongs to another configuration; differing entries "
                                 f"(checkpoint, now): {diff}. Use another --checkpoint-dir, or delete it to start "
                                 "afresh")
        elif writer:
            ckpt.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(_identity(cfg), indent=1))
    out = None if results_dir is None else Path(results_dir)
    log_path = None
    if out is not None and writer:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=1))
        log_path = out / "log.jsonl"
    _log(log_path, {"event": "start", "time": time.time(), "dry_run": dry, "processes": jax.process_count(),
                    "devices": jax.device_count() if devices is None else len(train._devices(devices)),
                    "config": cfg})

    result = RecipeResult(params=None, config=cfg)
    params = opt_state = None
    offset = 0
    for phase in phases:
        model, source = _build(cfg, phase)
        steps = min(phase["steps"], profiles.DRY_RUN_STEPS) if dry else phase["steps"]
        micro = phase["batch_size"] // cfg["accumulation_steps"]
        start = offset
        lr_phase = (lambda count, start=start: schedule(count + start))

        def stop_callback(step, params_, opt_state_, start=start):
            if stop_after is not None and start + step >= stop_after:
                raise StopRequested(start + step)

        every = cfg["checkpoint_every"] or cfg["eval_every"]
        try:
            r = train.fit(model, tx, source, batch_size=phase["batch_size"], steps=steps,
                          eval_every=min(cfg["eval_every"], steps), seed=cfg["seed"], params=params,
                          opt_state=opt_state, accumulation_steps=cfg["accumulation_steps"], learning_rate=lr_phase,
                          devices=devices, eval_batch_size=micro, eval_batches=cfg["eval_batches"],
                          progress=progress, checkpoint_dir=None if ckpt is None else ckpt / phase["name"],
                          checkpoint_every=every,
                          result_path=None if out is None else out / f"{phase['name']}.json",
                          config={"recipe": _identity(cfg), "phase": phase, "dry_run": dry},
                          callback=stop_callback if stop_after is not None else None)
        except StopRequested as e:
            result.stopped_at = int(e.args[0])
            _log(log_path, {"event": "stopped", "step": result.stopped_at, "time": time.time()})
            return result
        if r.resumed_from:
            _log(log_path, {"event": "resumed", "phase": phase["name"], "from_step": start + r.resumed_from})
        for i, s in enumerate(r.history["step"]):
            _log(log_path, {"phase": phase["name"], "step": int(start + s), "loss": float(r.history["loss"][i]),
                            "accuracy": float(r.history["accuracy"][i]),
                            "learning_rate": float(r.history["learning_rate"][i])})
        for i, s in enumerate(r.history["eval_step"]):
            _log(log_path, {"phase": phase["name"], "eval_step": int(start + s),
                            "test_loss": float(r.history["test_loss"][i]),
                            "test_accuracy": float(r.history["test_accuracy"][i])})
        result.phases[phase["name"]] = r
        params, opt_state = r.params, r.opt_state
        offset += phase["steps"]
    result.params = params
    _log(log_path, {"event": "done", "time": time.time(),
                    "final_test_loss": float(r.history["test_loss"][-1]) if phases else None})
    return result
