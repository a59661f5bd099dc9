"""lamb.plan: what a notebook launches at a profile (runs, steps, examples, FLOPs, a time from a timed step)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lamb import plan, profiles
from lamb.experiments import models

ROOT = Path(__file__).resolve().parents[1]


def test_training_harness_plan_follows_its_settings():
    s = profiles.settings("training_harness", "gpu")
    p = plan.build("training_harness", "gpu").count()
    by_name = {st.name: st for st in p.stages}
    main = by_name["LAMB and AdamW"]
    assert (main.runs, main.steps, main.batch_size) == (2, s["steps"], s["batch_size"])
    assert by_name["learning-rate sweep"].runs == len(s["lr_grid"])
    scaling = [st for st in p.stages if st.name.startswith("steps to target")]
    assert [st.batch_size for st in scaling] == s["scaling_batch_sizes"]
    assert p.totals["examples"] == sum(st.runs * st.steps * st.batch_size for st in p.stages)
    # XLA's count of an MLP step is 6 x parameters x examples (forward 2, backward 4) plus small terms
    params = models.count_params(models.mlp(40, s["hidden"], 10).init(__import__("jax").random.key(0)))
    assert main.params == params
    assert main.step_flops == pytest.approx(6 * params * s["batch_size"], rel=0.05)
    # accumulation changes memory, not arithmetic: the same count as the whole batch
    acc = next(st for st in p.stages if st.accumulation_steps > 1)
    assert acc.step_flops == pytest.approx(by_name["accumulation check: whole batch"].step_flops, rel=1e-6)
    text = p.format()
    assert "plan of training_harness at profile 'gpu'" in text and "total" in text and "no step timed" in text


def test_a_measured_plan_gives_a_time_per_stage():
    mlp = lambda: models.mlp(40, [32, 32], 10)  # noqa: E731
    stages = [plan.Stage("a", mlp, 64, 100, example_shape=(40,), runs=3, evaluations=5, eval_examples=500),
              plan.Stage("b", mlp, 64, 10, example_shape=(40,)),                       # the same step as "a"
              plan.Stage("c", mlp, 64, 10, example_shape=(40,), accumulation_steps=4)]
    p = plan.Plan("demo", "smoke", stages).measure(repeats=1)
    assert p.device
    for st in p.stages:
        assert st.step_time_s > 0
        assert st.time_s >= st.runs * st.steps * st.step_time_s
    assert stages[1].step_time_s == stages[0].step_time_s          # timed once
    assert stages[0].time_s > stages[0].runs * stages[0].steps * stages[0].step_time_s   # plus evaluations
    assert p.totals["time_s"] == pytest.approx(sum(st.time_s for st in p.stages))
    assert "steps timed on" in p.format()


def test_stage_validation_names_the_bad_value():
    mlp = models.mlp(4, [2], 2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        plan.Stage("x", mlp, 0, 10, example_shape=(4,))
    with pytest.raises(ValueError, match="not divisible by accumulation_steps 3"):
        plan.Stage("x", mlp, 8, 10, example_shape=(4,), accumulation_steps=3)


def test_a_notebook_without_a_plan_says_how_to_add_one():
    with pytest.raises(plan.NoPlan, match="lamb/notebooks/01_why_large_batches.py"):
        plan.build("01_why_large_batches", "gpu")
    with pytest.raises(plan.NoPlan, match="no settings for notebook 'absent'"):
        plan.build("absent", "gpu")


def test_plan_command():
    done = subprocess.run([sys.executable, "-m", "lamb", "plan", "training_harness", "--profile", "smoke",
                           "--profile", "tpu", "--no-measure"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "at profile 'smoke'" in done.stdout and "at profile 'tpu'" in done.stdout
