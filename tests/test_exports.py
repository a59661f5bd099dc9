"""Full-scale results as data: export a real run's results, check the schema, draw the figures from the export.

The run exported here is a real run of notebooks/training_harness.ipynb at the ``smoke`` profile, executed
into ``tmp_path`` by ``python -m lamb run``; its export is written to ``tmp_path`` too, never into the package
(only a real ``gpu``/``tpu`` run may ship). Every file that does ship, ``lamb/results/<profile>/<nb>.json``, is
checked against its notebook's settings schema and must carry a real environment.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from lamb import exports, notebook, profiles

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
NB = "training_harness"


@pytest.mark.parametrize("path", exports.shipped() or [None],
                         ids=lambda p: "no-file-ships-yet" if p is None else f"{p.parent.name}/{p.name}")
def test_every_shipped_result_is_a_real_runs_export(path):
    if path is None:
        assert exports.shipped() == []
        return
    exported = json.loads(path.read_text(encoding="utf-8"))
    exports.validate(exported, where=str(path))
    assert (path.parent.name, path.stem) == (exported["profile"], exported["notebook"])
    assert exported["profile"] in exports.PROFILE_BACKENDS, "only gpu/tpu runs ship"
    assert (ROOT / "notebooks" / f"{exported['notebook']}.ipynb").is_file()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A real run of the notebook at ``smoke``, by the command line, into a temporary results directory."""
    out = tmp_path_factory.mktemp("results")
    env = {k: v for k, v in os.environ.items() if k not in ("LAMB_PROFILE", "LAMB_RESULTS_DIR",
                                                             profiles.DRY_RUN_ENV)}
    done = subprocess.run([sys.executable, "-m", "lamb", "run", str(ROOT / "notebooks" / f"{NB}.ipynb"),
                           "--profile", "smoke", "--output-dir", str(out), "--no-plan"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return out / "smoke" / NB


def test_export_and_import_a_real_run(smoke_run, tmp_path):
    import matplotlib.pyplot as plt

    from lamb.notebooks import training_harness

    path = exports.export(NB, "smoke", source=smoke_run, destination=tmp_path)
    assert path == tmp_path / "smoke" / f"{NB}.json"
    exported = json.loads(path.read_text())
    exports.validate(exported)
    env = exported["environment"]
    assert env["notebook"] == NB and env["profile"] == "smoke" and "dry_run" not in env
    assert env["device_kind"] and env["jax"] and env["wall_time_s"] > 0
    assert env["git_commit"] is not None and len(env["git_commit"]) == 40
    assert dict(exported["settings"]) == dict(profiles.settings(NB, "smoke"))
    results = exported["results"]
    assert {"LAMB", "AdamW", "resnet", "bert", "sweep"} <= set(results)
    sizes = profiles.settings(NB, "smoke")["scaling_batch_sizes"]
    assert {f"scaling/B{b}" for b in sizes} <= set(results)

    # per evaluation: the compacted per-step series have one value per evaluation after step 0
    original = json.loads((smoke_run / "LAMB.json").read_text())["history"]
    compact = results["LAMB"]["history"]
    assert compact["step"] == original["eval_step"][1:] == compact["eval_step"][1:]
    assert len(compact["loss"]) == len(compact["step"])
    every = profiles.settings(NB, "smoke")["eval_every"]
    assert compact["loss"][0] == pytest.approx(sum(original["loss"][:every]) / every)
    layer = next(iter(compact["trust_ratio"]))
    assert len(compact["trust_ratio"][layer]) == len(compact["step"])
    assert compact["test_accuracy"] == original["test_accuracy"]

    # the import side: the notebook's figures from the export, labelled with where the run ran
    assert notebook.full_scale_results(NB, ("smoke",), root=tmp_path)["smoke"] == exported
    assert notebook.full_scale_results(NB, root=tmp_path) == {}    # no gpu/tpu file there
    shown = notebook.show_full_scale(NB, training_harness.full_scale_figures, profiles_=("smoke",), root=tmp_path)
    figures = shown["smoke"]
    assert len(figures) == 2
    label = notebook.provenance(exported)
    assert env["git_commit"][:10] in label and env["date"][:10] in label and "smoke run" in label
    for fig in figures:
        assert label in [t.get_text() for t in fig.texts]
    plt.close("all")


def test_show_full_scale_says_so_when_none_ships(tmp_path, capsys):
    assert notebook.show_full_scale(NB, lambda exported: pytest.fail("nothing to draw"), root=tmp_path) == {}
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "No full-scale" in out and "ships yet" in out


def test_the_package_refuses_to_ship_a_small_run(smoke_run):
    with pytest.raises(exports.ExportError, match="only full-scale runs ship"):
        exports.export(NB, "smoke", source=smoke_run)


def test_validate_rejects_what_a_real_run_did_not_write(smoke_run):
    good = exports.collect(smoke_run, NB, "smoke")

    def broken(change):
        bad = copy.deepcopy(good)
        change(bad)
        return bad

    cases = {
        "settings keys differ": broken(lambda e: e["settings"].pop("steps")),
        "unknown": broken(lambda e: e["settings"].update(extra=1)),
        "environment lacks": broken(lambda e: e["environment"].pop("device_kind")),
        "not a commit hash": broken(lambda e: e["environment"].update(git_commit="abc")),
        "not an ISO date": broken(lambda e: e["environment"].update(date="yesterday")),
        "a dry run's": broken(lambda e: e["environment"].update(dry_run=True)),
        "from a dry run": broken(lambda e: e["results"]["LAMB"]["environment"].update(dry_run=True)),
        "must run on a GPU": broken(lambda e: e.update(profile="gpu", settings=dict(profiles.settings(NB, "gpu")))
                                    or e["environment"].update(profile="gpu")),
        "top-level keys": broken(lambda e: e.pop("environment")),
    }
    for message, bad in cases.items():
        with pytest.raises(exports.ExportError, match=message):
            exports.validate(bad)


def test_export_refuses_a_directory_without_a_runs_environment(tmp_path):
    (tmp_path / "LAMB.json").write_text(json.dumps({"config": {}, "environment": {}, "history": {}}))
    with pytest.raises(exports.ExportError, match="no environment.json"):
        exports.export(NB, "gpu", source=tmp_path, destination=tmp_path / "out")


def test_export_command(smoke_run, tmp_path):
    done = subprocess.run([sys.executable, "-m", "lamb", "export", NB, "--profile", "smoke", "--output-dir",
                           str(smoke_run.parents[1]), "--destination", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {tmp_path / 'smoke' / (NB + '.json')}" in done.stdout
    refused = subprocess.run([sys.executable, "-m", "lamb", "run", "notebooks/training_harness.ipynb", "--profile",
                              "gpu", "--dry-run", "--export"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--export needs a real run" in refused.stderr
