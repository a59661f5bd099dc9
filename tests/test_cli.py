"""`python -m lamb run` (papermill underneath), lamb.profiles and lamb.notebook.setup, end to end.

The notebook run here is written by the test: a parameters cell exactly as the chapters have it, and a
cell that records what the kernel saw (PROFILE after papermill's injection, LAMB_PROFILE and
LAMB_RESULTS_DIR in its environment) into the results directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lamb import profiles
from lamb.__main__ import run_notebook

ROOT = Path(__file__).resolve().parents[1]


def _write_notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A test notebook"),
        nbformat.v4.new_code_cell('import os\nPROFILE = os.environ.get("LAMB_PROFILE", "cpu")',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    nbformat.write(nb, path)
    return path


RECORD = """
import json, os, pathlib
seen = {"PROFILE": PROFILE, "LAMB_PROFILE": os.environ.get("LAMB_PROFILE"), "cwd": os.getcwd()}
out = pathlib.Path(os.environ["LAMB_RESULTS_DIR"]) / "seen.json"
out.write_text(json.dumps(seen))
print("recorded", PROFILE)
"""


def _cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("LAMB_PROFILE", "LAMB_RESULTS_DIR")}
    return subprocess.run([sys.executable, "-m", "lamb", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_run_writes_executed_notebook_and_results_under_profile(tmp_path):
    nb = _write_notebook(tmp_path / "tiny.ipynb", RECORD)
    out_root = tmp_path / "results"
    done = _cli("run", str(nb), "--profile", "smoke", "--output-dir", str(out_root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    executed = out_root / "smoke" / "tiny.ipynb"
    assert executed.is_file()
    assert f"wrote {executed}" in done.stdout
    # What the kernel saw: papermill's injected PROFILE and the environment agree on the profile.
    seen = json.loads((out_root / "smoke" / "seen.json").read_text())
    assert seen["PROFILE"] == "smoke" and seen["LAMB_PROFILE"] == "smoke"
    assert Path(seen["cwd"]).resolve() == tmp_path.resolve()          # the notebook's own folder
    cells = nbformat.read(executed, as_version=4).cells
    injected = [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "PROFILE = \"smoke\"" in injected[0].source
    printed = "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)
    assert "recorded smoke" in printed
    assert json.loads(nb.read_text())["cells"][2].get("outputs") == []   # the source is left untouched


def test_run_fails_when_a_cell_fails(tmp_path):
    nb = _write_notebook(tmp_path / "broken.ipynb", "assert PROFILE == 'gpu', 'wrong profile'")
    done = _cli("run", str(nb), "--profile", "smoke", "--output-dir", str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode != 0
    assert "wrong profile" in done.stderr


def test_unknown_profile_is_a_clear_error(tmp_path):
    nb = _write_notebook(tmp_path / "tiny.ipynb", "pass")
    done = _cli("run", str(nb), "--profile", "huge", cwd=tmp_path)
    assert done.returncode == 2
    assert "huge" in done.stderr and all(p in done.stderr for p in profiles.PROFILES)
    assert not (tmp_path / "results").exists()
    with pytest.raises(ValueError, match=r"unknown profile 'huge'.*smoke, cpu, gpu, tpu"):
        run_notebook(nb, "huge", tmp_path / "results")


def test_missing_notebook_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ipynb"):
        run_notebook(tmp_path / "nope.ipynb", "smoke", tmp_path / "results")


def test_run_notebook_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMB_PROFILE", "cpu")
    monkeypatch.delenv("LAMB_RESULTS_DIR", raising=False)
    nb = _write_notebook(tmp_path / "tiny.ipynb", RECORD)
    output = run_notebook(nb, "smoke", tmp_path / "results")
    assert output == tmp_path / "results" / "smoke" / "tiny.ipynb"
    assert os.environ["LAMB_PROFILE"] == "cpu" and "LAMB_RESULTS_DIR" not in os.environ


# --------------------------------------------------------------------------------------------------
# lamb.profiles: settings files are read from the package's settings/ folder; point it at a temporary one.

@pytest.fixture
def settings_dir(tmp_path, monkeypatch):
    folder = tmp_path / "settings"
    folder.mkdir()
    monkeypatch.setattr(profiles.resources, "files", lambda package: tmp_path)
    return folder


def test_settings_merge_common_and_profile(settings_dir):
    (settings_dir / "demo.toml").write_text(
        "[common]\nseeds = 3\nlr = 0.1\n[smoke]\nsteps = 5\nseeds = 1\n[cpu]\nsteps = 600\n")
    smoke = profiles.settings("demo", "smoke")
    assert dict(smoke) == {"seeds": 1, "lr": 0.1, "steps": 5, "profile": "smoke", "notebook": "demo"}
    assert dict(profiles.settings("demo", "cpu")) == {"seeds": 3, "lr": 0.1, "steps": 600, "profile": "cpu",
                                                      "notebook": "demo"}
    assert dict(profiles.settings("demo", "gpu")) == {"seeds": 3, "lr": 0.1, "profile": "gpu",  # no [gpu] table
                                                      "notebook": "demo"}
    # A notebook path or file name selects the same settings.
    assert profiles.settings("book/demo.ipynb", "smoke") == smoke
    with pytest.raises(TypeError):
        smoke["steps"] = 10                                     # read-only
    assert profiles.available_notebooks() == ["demo"]


def test_settings_default_profile_comes_from_the_environment(settings_dir, monkeypatch):
    (settings_dir / "demo.toml").write_text("[smoke]\nsteps = 5\n[cpu]\nsteps = 600\n")
    monkeypatch.delenv("LAMB_PROFILE", raising=False)
    assert profiles.settings("demo")["steps"] == 600            # default: cpu
    monkeypatch.setenv("LAMB_PROFILE", "smoke")
    assert profiles.settings("demo")["steps"] == 5
    monkeypatch.setenv("LAMB_PROFILE", "laptop")
    with pytest.raises(ValueError, match="unknown profile 'laptop'"):
        profiles.settings("demo")


def test_settings_errors(settings_dir):
    (settings_dir / "typo.toml").write_text("[common]\nsteps = 1\n[smok]\nsteps = 2\n")
    with pytest.raises(ValueError, match=r"unknown tables \['smok'\]"):
        profiles.settings("typo", "smoke")
    with pytest.raises(ValueError, match=r"unknown profile 'huge': the profiles are smoke, cpu, gpu, tpu"):
        profiles.settings("typo", "huge")
    with pytest.raises(KeyError, match="no settings for notebook 'absent'"):
        profiles.settings("absent", "smoke")


# --------------------------------------------------------------------------------------------------
# lamb.notebook.setup: the set-up cell of every notebook.

def test_setup_returns_settings_and_reports_the_device(settings_dir, capsys):
    import lamb.notebook

    (settings_dir / "demo.toml").write_text("[common]\nsteps = 1\n")
    settings = lamb.notebook.setup("demo", "smoke")
    assert settings["steps"] == 1 and settings["profile"] == "smoke"
    printed = capsys.readouterr().out
    assert "profile: smoke" in printed and "python:" in printed


@pytest.mark.parametrize("profile", ["tpu", "gpu"])
def test_setup_refuses_an_accelerator_profile_without_the_accelerator(settings_dir, profile):
    import jax
    import torch

    import lamb.notebook

    if profile == "tpu" and jax.default_backend() == "tpu":
        pytest.skip("a TPU is present")
    if profile == "gpu" and (jax.default_backend() == "gpu" or torch.cuda.is_available()):
        pytest.skip("a GPU is present")
    (settings_dir / "demo.toml").write_text("[common]\nsteps = 1\n")
    with pytest.raises(RuntimeError, match=f"profile '{profile}' needs a {profile.upper()}"):
        lamb.notebook.setup("demo", profile)


def test_dry_run_flag_reads_the_environment(monkeypatch):
    from lamb import profiles

    for value, expected in [("", False), ("0", False), ("false", False), ("1", True), ("yes", True)]:
        monkeypatch.setenv(profiles.DRY_RUN_ENV, value)
        assert profiles.dry_run() is expected
    monkeypatch.delenv(profiles.DRY_RUN_ENV)
    assert profiles.dry_run() is False


def test_results_dir_under_profile_or_environment(tmp_path, monkeypatch):
    from lamb.notebook import results_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAMB_RESULTS_DIR", raising=False)
    assert results_dir("batch_size_scaling.ipynb", "smoke") == Path("results/smoke/batch_size_scaling")
    assert (tmp_path / "results/smoke/batch_size_scaling").is_dir()
    monkeypatch.setenv("LAMB_RESULTS_DIR", str(tmp_path / "out" / "gpu"))
    assert results_dir("bert_large_batch", "gpu") == tmp_path / "out" / "gpu" / "bert_large_batch"
    with pytest.raises(ValueError, match="unknown profile"):
        results_dir("x", "huge")


def test_full_scale_results_empty_when_none_ships():
    from lamb.notebook import full_scale_results

    assert full_scale_results("no_such_notebook") == {}
    with pytest.raises(ValueError, match="unknown profile"):
        full_scale_results("x", ("huge",))
