"""``python -m lamb train``: configuration (defaults, TOML, flags), clear errors, resume and its refusal, the
two-phase BERT schedule, dry runs, and the multi-process launch detection (in this process, one device)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lamb import __main__ as cli
from lamb.experiments import distributed, recipes

FAST = ["resnet", "--profile", "smoke", "--steps", "4", "--eval-every", "2", "--num-samples", "1000",
        "--batch-size", "32", "--widths", "8", "--eval-batches", "1", "--no-progress"]


def test_bad_choice_names_value_and_allowed(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "bert", "--optimizer", "sgd"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'sgd'" in err and "lamb" in err and "nnlamb" in err and "nesterov" in err


def test_bad_values_are_errors_naming_them(capsys):
    assert cli.main(["train", *FAST, "--accumulation-steps", "3"]) == 2
    assert "batch_size=32 must be a multiple of accumulation_steps=3" in capsys.readouterr().err
    assert cli.main(["train", *FAST, "--lr", "-1"]) == 2
    assert "lr must be in (0.0, inf]; got -1.0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dataset 'cifar10' reads files you downloaded"):
        recipes.make_config("resnet", "smoke", dataset="cifar10")
    with pytest.raises(ValueError, match=r"widths must be a non-empty list of positive multiples of 8; got \[12\]"):
        recipes.make_config("resnet", "smoke", widths=[12])


def test_toml_config_between_defaults_and_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[train]\noptimizer = "lars"\nbatch_size = 64\nlr_rule = "linear"\n')
    cfg = recipes.make_config("bert", "smoke", path, batch_size=128)
    assert cfg["optimizer"] == "lars" and cfg["lr_rule"] == "linear" and cfg["batch_size"] == 128
    assert cfg["hidden"] == recipes.DEFAULTS["bert"]["smoke"]["hidden"]
    path.write_text('optimiser = "lamb"\n')
    with pytest.raises(ValueError, match=r"unknown configuration keys \['optimiser'\].*allowed: .*optimizer"):
        recipes.make_config("bert", "smoke", path)
    path.write_text('optimizer = \n')
    with pytest.raises(ValueError, match="is not valid TOML"):
        recipes.make_config("bert", "smoke", path)


def test_two_phase_schedule_rewarms_and_scales_each_phase():
    cfg = recipes.make_config("bert", "smoke", steps=100, batch_size=64, long_batch_size=16, base_batch_size=16,
                              lr=0.01, lr_rule="sqrt", warmup_fraction=0.1)
    s = recipes.learning_rate_schedule(cfg)
    assert [p["steps"] for p in recipes._phases(cfg)] == [90, 10]
    assert float(s(0)) == 0.0 and float(s(90)) == 0.0              # both phases start at zero (re-warm-up)
    np.testing.assert_allclose(float(s(9)), 0.01 * np.sqrt(64 / 16), rtol=1e-6)   # phase-1 peak, sqrt rule
    np.testing.assert_allclose(float(s(91)), 0.01, rtol=1e-6)                      # phase-2 peak at batch 16


def test_resume_and_refusal_of_another_configuration(tmp_path, capsys):
    common = [*FAST, "--checkpoint-dir", str(tmp_path / "ckpt"), "--results-dir", str(tmp_path / "res")]
    assert cli.main(["train", *common, "--stop-after", "2"]) == 0
    assert "stopped after step 2" in capsys.readouterr().out
    assert cli.main(["train", *common, "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "belongs to another configuration" in err and "'lr': (0.01, 0.02)" in err
    assert cli.main(["train", *common]) == 0
    log = [json.loads(line) for line in (tmp_path / "res" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resumed" and r["from_step"] == 2 for r in log)
    uninterrupted = tmp_path / "whole"
    assert cli.main(["train", *FAST, "--results-dir", str(uninterrupted)]) == 0
    a = json.loads((tmp_path / "res" / "train.json").read_text())["history"]
    b = json.loads((uninterrupted / "train.json").read_text())["history"]
    assert a["loss"] == b["loss"] and a["test_loss"] == b["test_loss"]   # bit for bit


def test_dry_run_cuts_every_phase_to_two_steps(tmp_path, monkeypatch):
    from lamb import profiles

    monkeypatch.setenv(profiles.DRY_RUN_ENV, "1")
    cfg = recipes.make_config("bert", "smoke", steps=40, vocab_size=2048, eval_every=10)
    result = recipes.run(cfg, progress=False)
    assert list(result.phases) == ["phase1", "phase2"]
    assert [len(r.history["step"]) for r in result.phases.values()] == [2, 2]
    assert all(np.isfinite(r.history["loss"]).all() for r in result.phases.values())


def test_multiprocess_launch_detection():
    assert not distributed.wants_initialize(env={})
    assert distributed.wants_initialize(env={"SLURM_NTASKS": "4"})
    assert not distributed.wants_initialize(env={"SLURM_NTASKS": "1"})
    assert distributed.wants_initialize(env={"OMPI_COMM_WORLD_SIZE": "2"})
    assert distributed.wants_initialize(env={"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert distributed.wants_initialize("127.0.0.1:1234", env={})
    with pytest.raises(ValueError, match="host:port"):
        distributed.initialize("127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 2"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
