"""``python -m lamb train``: configuration (defaults, TOML, flags), clear errors, resume and its refusal, the
two-phase BERT schedule, dry runs, and the multi-process launch detection (in this process, one device)."""

from __future__ import annotations

import argparse
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


@pytest.mark.parametrize("argv0, prog", [("/home/u/.venv/bin/lamb", "lamb"),
                                         ("/home/u/lamb/lamb/__main__.py", "python -m lamb")])
def test_help_names_the_command_as_it_was_started(monkeypatch, capsys, argv0, prog):
    monkeypatch.setattr("sys.argv", [argv0, "train", "--help"])
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} train [-h]"), out[:80]
    assert "(default: None)" not in out and "the profile's default" in out


def test_torch_train_help_has_its_own_name_and_only_its_flags(capsys):
    from lamb import torch_train

    with pytest.raises(SystemExit) as e:
        torch_train.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lamb.torch_train [-h]") and " train " not in out.splitlines()[0]
    assert "--fsdp" in out and "--checkpoint-dir" in out and "{bert}" in out
    assert "--cpu-devices" not in out and "--widths" not in out and "--backend" not in out


def test_console_script_help(tmp_path):
    """`lamb train --help` through the installed console script (the entry point of pyproject.toml)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("lamb")
    if not script.is_file():
        script = shutil.which("lamb")
        if script is None:
            pytest.skip("the package's console script is not installed here")
    r = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: lamb train [-h]")


# ---------------------------------------------------------------------------------------------------------------
# The README's commands (section "Training beyond one machine"), parsed by the parsers that will run them

def _readme_commands() -> list[list[str]]:
    """Every command line of the section's bash blocks that runs the package (continuations joined; the
    command inside a `--command='...'` string; `$i` of a shell loop as 0), split like a shell does."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Training beyond one machine", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip().replace("$i", "0")
            for part in re.split(r"&&|;|\bdo\b|&\s|'", line):
                words = shlex.split(part.replace("--command=", ""))
                if "lamb" in " ".join(words) and ("python" in words or "torchrun" in words):
                    commands.append(words)
    return commands


def test_readme_commands_parse():
    from torch.distributed.run import get_args_parser

    from lamb import training_cli

    commands = _readme_commands()
    kinds = [w[0] for w in commands]
    assert kinds.count("torchrun") >= 2 and sum(w[:3] == ["python", "-m", "lamb"] for w in commands) >= 5, commands
    lamb_parser = argparse.ArgumentParser(prog="lamb")
    training_cli.add_parser(lamb_parser.add_subparsers(dest="command", required=True))
    for words in commands:
        if words[0] == "torchrun":
            launch = get_args_parser().parse_args(words[1:])      # torchrun's own flags
            assert launch.module and launch.training_script == "lamb.torch_train", words
            args = training_cli.torch_parser().parse_args(launch.training_script_args)
        else:
            start = words.index("lamb") + 1
            args = lamb_parser.parse_args(words[start:])
            assert args.command == "train", words
        cfg = training_cli.config_from_args(args)   # the configuration it asks for is valid too
        assert cfg["recipe"] == args.recipe
