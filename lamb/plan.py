r"""What a notebook launches at a profile: training runs, steps, examples, FLOPs and a time estimate.

::

    python -m lamb plan training_harness --profile gpu          # or: python -m lamb run NB --profile gpu --plan

Each Part II notebook declares its plan in the package, in ``lamb/notebooks/<notebook>.py``, as a function
``plan(settings) -> list[Stage]`` that mirrors its training cells: one :class:`Stage` per group of
:func:`lamb.experiments.train.fit` calls of one shape (model, batch size, steps, how many runs, evaluations).
:func:`build` reads the notebook's settings at a profile and calls it.

FLOPs are XLA's count (``jax.jit(...).lower(...).cost_analysis()``) of the compiled program of one training step
(:func:`lamb.experiments.train.make_train_step` with LAMB) and of one evaluation batch, at the stage's shapes,
from abstract shapes only: nothing is allocated. With ``measure=True`` each stage's step is compiled and timed
on the present device (the median of a few steps after a warm-up; compile time is not counted): the stage's
time is ``runs x steps x step time``, plus its evaluations at the FLOP rate the step reached. The plan is an
estimate: input pipelines, checkpoints and plotting are not counted.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lamb import profiles

__all__ = ["Stage", "Plan", "build", "NoPlan"]


class NoPlan(LookupError):
    """The notebook declares no plan (no ``lamb/notebooks/<notebook>.py`` with ``plan(settings)``)."""


@dataclass
class Stage:
    """One group of identical training runs.

    ``model``: a :class:`lamb.experiments.models.Model` or a function making one (called once);
    ``example_shape``/``example_dtype``: one example's input (e.g. ``(40,)``, ``"float32"``; ``(128,)``,
    ``"int32"`` for token ids); ``label_shape``: one example's labels (``()`` for a class, ``(seq_len,)`` for
    masked tokens, of which ``masked_fraction`` are labelled); ``evaluations``: per run, each over
    ``eval_examples`` examples in batches of ``eval_batch_size``.
    """

    name: str
    model: object
    batch_size: int
    steps: int
    example_shape: tuple
    runs: int = 1
    example_dtype: str = "float32"
    label_shape: tuple = ()
    masked_fraction: float = 0.15
    accumulation_steps: int = 1
    evaluations: int = 0
    eval_examples: int = 0
    eval_batch_size: int = 1024
    tokens_per_example: int = 1
    # filled by Plan.count / Plan.measure
    params: int | None = None
    step_flops: float | None = None
    eval_batch_flops: float | None = None
    step_time_s: float | None = None

    def __post_init__(self):
        for name in ("batch_size", "steps", "runs", "accumulation_steps", "eval_batch_size", "tokens_per_example"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"stage {self.name!r}: {name} must be an int >= 1, got {value!r}")
        for name in ("evaluations", "eval_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"stage {self.name!r}: {name} must be an int >= 0, got {value!r}")
        if self.batch_size % self.accumulation_steps:
            raise ValueError(f"stage {self.name!r}: batch_size {self.batch_size} is not divisible by "
                             f"accumulation_steps {self.accumulation_steps}")

    @property
    def examples(self) -> int:
        """Training examples over all runs (tokens: times ``tokens_per_example``)."""
        return self.runs * self.steps * self.batch_size

    @property
    def eval_batches(self) -> int:
        return self.runs * self.evaluations * -(-self.eval_examples // self.eval_batch_size)

    @property
    def train_flops(self) -> float:
        return self.runs * self.steps * self.step_flops if self.step_flops is not None else math.nan

    @property
    def eval_flops(self) -> float:
        return self.eval_batches * self.eval_batch_flops if self.eval_batch_flops is not None else math.nan

    @property
    def time_s(self) -> float:
        """Estimated seconds: the timed step times the steps, plus evaluations at the step's FLOP rate."""
        if self.step_time_s is None:
            return math.nan
        rate = self.step_flops / self.step_time_s if self.step_flops else math.nan
        return self.runs * self.steps * self.step_time_s + (self.eval_flops / rate if self.eval_batches else 0.0)

    # -- the programs ---------------------------------------------------------------------------------------
    def _model(self):
        if callable(self.model) and not hasattr(self.model, "init"):
            self.model = self.model()
        return self.model

    def _batch(self, batch_size, concrete=False):
        import jax
        import jax.numpy as jnp
        import numpy as np

        shape_x = (batch_size, *self.example_shape)
        shape_y = (batch_size, *self.label_shape)
        if not concrete:
            return {"inputs": jax.ShapeDtypeStruct(shape_x, jnp.dtype(self.example_dtype)),
                    "labels": jax.ShapeDtypeStruct(shape_y, jnp.int32)}
        labels = np.zeros(shape_y, np.int32)
        if self.label_shape:  # masked tokens: the first masked_fraction of each sequence labelled, the rest -1
            labels[..., max(1, int(self.masked_fraction * self.label_shape[-1])):] = -1
        return {"inputs": jnp.zeros(shape_x, jnp.dtype(self.example_dtype)), "labels": jnp.asarray(labels)}

    def shape_key(self) -> str:
        """Stages with the same key run the same compiled step (same model, batch and accumulation)."""
        import json

        return json.dumps([self._model().config, self.batch_size, self.accumulation_steps, list(self.example_shape),
                           self.example_dtype, list(self.label_shape)], sort_keys=True, default=repr)

    def _programs(self):
        if getattr(self, "_cached_programs", None) is None:
            import jax

            from lamb import jax as lj
            from lamb.experiments import models, train

            model = self._model()
            params = jax.eval_shape(model.init, jax.random.key(0))
            tx = lj.lamb(1e-3, weight_decay=0.01)
            opt_state = jax.eval_shape(tx.init, params)
            step = jax.jit(train.make_train_step(model, tx, self.accumulation_steps))
            evaluate = jax.jit(train.make_eval_step(model))
            self.params = models.count_params(params)
            self._cached_programs = (step, evaluate, params, opt_state)
        return self._cached_programs

    def count(self) -> None:
        """Fill ``params``, ``step_flops`` and ``eval_batch_flops`` from XLA's cost analysis."""
        step, evaluate, params, opt_state = self._programs()
        if self.accumulation_steps > 1:  # XLA counts a loop's body once: count the same step unrolled (A = 1)
            import jax

            from lamb import jax as lj
            from lamb.experiments import train

            step = jax.jit(train.make_train_step(self._model(), lj.lamb(1e-3, weight_decay=0.01), 1))
        self.step_flops = _flops(step.lower(params, opt_state, self._batch(self.batch_size)))
        if self.evaluations and self.eval_examples:
            self.eval_batch_flops = _flops(evaluate.lower(params, self._batch(self.eval_batch_size)))

    def measure(self, repeats: int = 3) -> None:
        """Fill ``step_time_s``: compile one training step at this stage's shapes, run it once to warm up,
        then take the median of ``repeats`` timed steps."""
        import jax

        step, _, _, _ = self._programs()
        model = self._model()
        params = model.init(jax.random.key(0))
        from lamb import jax as lj

        opt_state = lj.lamb(1e-3, weight_decay=0.01).init(params)
        batch = self._batch(self.batch_size, concrete=True)
        params, opt_state, m = step(params, opt_state, batch)
        jax.block_until_ready(m)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            params, opt_state, m = step(params, opt_state, batch)
            jax.block_until_ready((params, m))
            times.append(time.perf_counter() - t0)
        self.step_time_s = sorted(times)[len(times) // 2]


def _flops(lowered) -> float:
    analysis = lowered.cost_analysis()
    if isinstance(analysis, Sequence):  # older JAX: one dict per program
        analysis = analysis[0]
    return float(analysis.get("flops", math.nan)) if analysis else math.nan


@dataclass
class Plan:
    """A notebook's stages at one profile."""

    notebook: str
    profile: str
    stages: list[Stage]
    device: str | None = None
    notes: list[str] = field(default_factory=list)

    def count(self) -> "Plan":
        for s in self.stages:
            s.count()
        return self

    def measure(self, repeats: int = 3) -> "Plan":
        """Time each distinct step (stages of one :meth:`Stage.shape_key` share one timing)."""
        import jax

        d = jax.devices()[0]
        self.device = f"{len(jax.devices())} x {d.device_kind}"
        timed = {}
        for s in self.stages:
            if s.step_flops is None:
                s.count()
            key = s.shape_key()
            if key not in timed:
                s.measure(repeats)
                timed[key] = s.step_time_s
            s.step_time_s = timed[key]
        return self

    @property
    def totals(self) -> dict:
        return {"runs": sum(s.runs for s in self.stages), "steps": sum(s.runs * s.steps for s in self.stages),
                "examples": sum(s.examples for s in self.stages),
                "train_flops": sum(s.train_flops for s in self.stages),
                "eval_flops": sum(s.eval_flops for s in self.stages if s.eval_batches),
                "time_s": sum(s.time_s for s in self.stages)}

    def format(self, measure: bool = False) -> str:
        """The plan as a table (counting FLOPs, and timing steps with ``measure``, where not done yet)."""
        if any(s.step_flops is None for s in self.stages):
            self.count()
        if measure and any(s.step_time_s is None for s in self.stages):
            self.measure()
        head = (f"plan of {self.notebook} at profile {self.profile!r} (lamb/settings/{self.notebook}.toml)"
                + (f", steps timed on {self.device}" if self.device else ""))
        rows = [("stage", "runs", "steps/run", "batch", "examples", "params", "train FLOPs", "eval FLOPs",
                 "step", "time")]
        for s in self.stages:
            rows.append((s.name, f"{s.runs}", f"{s.steps:,}", f"{s.batch_size:,}", f"{s.examples:,}",
                         f"{s.params:,}", _eng(s.train_flops), _eng(s.eval_flops) if s.eval_batches else "-",
                         _seconds(s.step_time_s, 3), _seconds(s.time_s)))
        t = self.totals
        rows.append(("total", f"{t['runs']}", f"{t['steps']:,}", "", f"{t['examples']:,}", "",
                     _eng(t["train_flops"]), _eng(t["eval_flops"]), "", _seconds(t["time_s"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                          for r in rows]
        if not any(s.step_time_s is not None for s in self.stages):
            lines.append("(no step timed: `python -m lamb plan NOTEBOOK --profile P` on the target device times them)")
        else:
            lines.append("(time: timed step x steps, evaluations at the step's FLOP rate; compile, input "
                         "pipeline and plotting not counted)")
        if profiles.dry_run():
            lines.append(f"(this is a dry run: it runs {profiles.DRY_RUN_STEPS} steps per run, not the above)")
        lines.extend(self.notes)
        return "\n".join(lines)


def _eng(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "?"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def _seconds(x: float | None, digits: int = 0) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x < 1:
        return f"{x * 1e3:.{max(digits - 2, 0)}f} ms" if digits else f"{x:.1f} s"
    if x < 120:
        return f"{x:.{1 if digits else 0}f} s"
    return f"{x / 60:.1f} min"


def build(notebook: str, profile: str) -> Plan:
    """The plan of ``notebook`` at ``profile``: ``lamb.notebooks.<notebook>.plan(settings)``."""
    notebook = notebook.removesuffix(".ipynb").rsplit("/", 1)[-1]
    try:
        settings = profiles.settings(notebook, profile)
    except KeyError as e:
        raise NoPlan(e.args[0]) from None
    try:
        module = importlib.import_module(f"lamb.notebooks.{notebook}")
    except ModuleNotFoundError as e:
        if e.name != f"lamb.notebooks.{notebook}":
            raise
        raise NoPlan(f"{notebook} declares no plan: add lamb/notebooks/{notebook}.py with plan(settings) -> "
                     "list[lamb.plan.Stage] (see lamb.plan)") from None
    if not hasattr(module, "plan"):
        raise NoPlan(f"lamb/notebooks/{notebook}.py has no plan(settings)")
    stages = list(module.plan(settings))
    if not stages or not all(isinstance(s, Stage) for s in stages):
        raise TypeError(f"lamb.notebooks.{notebook}.plan must return a non-empty list of lamb.plan.Stage")
    return Plan(notebook, settings["profile"], stages)
