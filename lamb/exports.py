"""Full-scale results as data: export a run's result files into one compact JSON that ships with the package.

A Part II notebook writes its result files under ``results/<profile>/<notebook>/``
(:func:`lamb.notebook.results_dir`); its set-up cell records there, in ``environment.json``, where the run ran
(device, versions, date, git commit; :func:`lamb.notebook.run_environment`). After a ``gpu`` or ``tpu`` run,

    python -m lamb run notebooks/NOTEBOOK.ipynb --profile gpu --export      # or, after the run:
    python -m lamb export NOTEBOOK --profile gpu

writes ``lamb/results/<profile>/<notebook>.json``::

    {"format": 1, "notebook": ..., "profile": ...,
     "settings": {...},           # the notebook's settings at the profile, as the run read them
     "environment": {...},        # environment.json of the run, plus the run's wall time
     "results": {"LAMB": {"config": ..., "environment": ..., "history": ...}, ...}}

``results`` holds every other JSON file of the results directory, keyed by its path without ``.json``.
Histories of :func:`lamb.experiments.train.fit` are made compact: the per-step series (``step``, ``loss``,
``accuracy``, ``learning_rate``, ``trust_ratio``) are averaged over each evaluation interval (the steps after
one evaluation up to and including the next), so every metric is kept once per evaluation.

:func:`validate` is the schema check a test applies to every shipped file: the settings' keys are those of the
notebook's settings file, the environment is a real one (device kind and backend matching the profile, date,
versions, a git commit) and no part of it comes from a dry run.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lamb import profiles

__all__ = ["FORMAT", "export", "compact_history", "validate", "package_results_dir", "ExportError"]

FORMAT = 1
#: Files of a results directory that are not results.
_NOT_RESULTS = {"environment.json", "run.json", "dry_run_skipped.json"}
#: What an exported environment must name.
REQUIRED_ENVIRONMENT = ("device_kind", "device_count", "backend", "jax", "numpy", "python", "date", "lamb",
                        "git_commit")
#: The JAX backend a full-scale profile must have run on.
PROFILE_BACKENDS = {"gpu": ("gpu", "cuda", "rocm"), "tpu": ("tpu",)}


class ExportError(ValueError):
    """A results directory or an exported file that must not ship."""


def package_results_dir() -> Path:
    """``lamb/results`` of the package's source tree (where exports are written and shipped from)."""
    return Path(__file__).resolve().parent / "results"


def compact_history(history: Mapping) -> dict:
    """A :func:`lamb.experiments.train.fit` history with its per-step series averaged over each evaluation
    interval (see the module docstring); any other mapping is returned unchanged."""
    if not ("step" in history and "eval_step" in history):
        return dict(history)
    steps = np.asarray(history["step"], dtype=np.int64)
    evals = [int(e) for e in history["eval_step"] if int(e) > 0]
    n = len(steps)
    bounds, lo = [], 0
    for e in evals:
        hi = int(np.searchsorted(steps, e, side="right"))
        if hi > lo:
            bounds.append((lo, hi))
            lo = hi

    def reduce(values):
        a = np.asarray(values, dtype=np.float64)
        return [float(np.mean(a[lo:hi])) for lo, hi in bounds]

    out = {}
    for key, value in history.items():
        if key == "step":
            out[key] = [int(steps[hi - 1]) for _, hi in bounds]
        elif isinstance(value, Mapping):  # trust_ratio: {layer: per-step series}
            out[key] = {k: reduce(v) if len(v) == n else list(v) for k, v in value.items()}
        elif key not in ("eval_step",) and not key.startswith("test_") and np.ndim(value) == 1 and len(value) == n:
            out[key] = reduce(value)
        else:
            out[key] = value
    out["compacted"] = "per-step series averaged over each evaluation interval"
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not JSON: {e}") from e


def _is_dry(entry) -> bool:
    if isinstance(entry, Mapping):
        if entry.get("dry_run") is True:
            return True
        return any(_is_dry(entry.get(k)) for k in ("config", "environment"))
    return False


def collect(source: str | os.PathLike, notebook: str, profile: str) -> dict:
    """The export of the results directory ``source`` (``results/<profile>/<notebook>/``), not yet written."""
    profiles.check_profile(profile)
    source = Path(source)
    env_path = source / "environment.json"
    if not env_path.is_file():
        raise ExportError(f"{source} has no environment.json: was it written by a run of {notebook} (its set-up "
                          "cell, lamb.notebook.setup, records it)?")
    environment = _read_json(env_path)
    if environment.get("notebook") != notebook or environment.get("profile") != profile:
        raise ExportError(f"{env_path} records notebook {environment.get('notebook')!r} at profile "
                          f"{environment.get('profile')!r}, not {notebook!r} at {profile!r}")
    run_path = source / "run.json"
    if run_path.is_file():
        run = _read_json(run_path)
        if run.get("dry_run"):
            raise ExportError(f"{source} holds a dry run: its numbers are not results")
        environment["wall_time_s"] = run.get("wall_time_s")
    results = {}
    for path in sorted(source.rglob("*.json")):
        rel = path.relative_to(source).as_posix()
        if rel in _NOT_RESULTS:
            continue
        entry = _read_json(path)
        if _is_dry(entry):
            raise ExportError(f"{path} comes from a dry run: its numbers are not results")
        if isinstance(entry, Mapping) and isinstance(entry.get("history"), Mapping):
            entry = {**entry, "history": compact_history(entry["history"])}
        results[rel.removesuffix(".json")] = entry
    if not results:
        raise ExportError(f"{source} holds no result files")
    exported = {"format": FORMAT, "notebook": notebook, "profile": profile,
                "settings": dict(profiles.settings(notebook, profile)), "environment": environment,
                "results": results}
    validate(exported)
    return exported


def export(notebook: str, profile: str, *, source: str | os.PathLike | None = None,
           destination: str | os.PathLike | None = None) -> Path:
    """Export the run of ``notebook`` at ``profile`` from ``source`` (default
    ``results/<profile>/<notebook>/``) to ``<destination>/<profile>/<notebook>.json`` (default destination:
    :func:`package_results_dir`, which ships); return the written path. Refuses a dry run, a run without an
    environment, and (into the package) any profile but ``gpu`` and ``tpu``."""
    notebook = notebook.removesuffix(".ipynb").rsplit("/", 1)[-1]
    profiles.check_profile(profile)
    if destination is None and profile not in PROFILE_BACKENDS:
        raise ExportError(f"only full-scale runs ship with the package (profiles {', '.join(PROFILE_BACKENDS)}), "
                          f"not profile {profile!r}; give a destination to export it elsewhere")
    source = Path(source) if source is not None else Path("results") / profile / notebook
    exported = collect(source, notebook, profile)
    out = Path(destination if destination is not None else package_results_dir()) / profile / f"{notebook}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(exported, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, out)
    return out


def validate(exported: Mapping, *, where: str = "export") -> None:
    """Raise :class:`ExportError` unless ``exported`` is a real run's export (see the module docstring)."""
    expected = {"format", "notebook", "profile", "settings", "environment", "results"}
    if not isinstance(exported, Mapping) or set(exported) != expected:
        got = sorted(exported) if isinstance(exported, Mapping) else type(exported).__name__
        raise ExportError(f"{where}: top-level keys must be {sorted(expected)}, got {got}")
    if exported["format"] != FORMAT:
        raise ExportError(f"{where}: format {exported['format']!r}, this package reads format {FORMAT}")
    notebook, profile = exported["notebook"], exported["profile"]
    if profile not in profiles.PROFILES:
        raise ExportError(f"{where}: unknown profile {profile!r}; the profiles are {', '.join(profiles.PROFILES)}")
    try:
        schema = set(profiles.settings(notebook, profile))
    except KeyError as e:
        raise ExportError(f"{where}: {e.args[0]}") from None
    got = set(exported["settings"])
    if got != schema:
        raise ExportError(f"{where}: settings keys differ from lamb/settings/{notebook}.toml at {profile!r}: "
                          f"missing {sorted(schema - got)}, unknown {sorted(got - schema)} (rerun and re-export)")
    env = exported["environment"]
    missing = [k for k in REQUIRED_ENVIRONMENT if not isinstance(env, Mapping) or env.get(k) in (None, "")]
    if missing:
        raise ExportError(f"{where}: the environment lacks {missing}: only a real run's environment ships")
    if env.get("dry_run") or _is_dry(exported["settings"]):
        raise ExportError(f"{where}: the environment is a dry run's")
    if env.get("notebook") != notebook or env.get("profile") != profile:
        raise ExportError(f"{where}: the environment was recorded by {env.get('notebook')!r} at "
                          f"{env.get('profile')!r}, not {notebook!r} at {profile!r}")
    if not re.fullmatch(r"[0-9a-f]{40}", str(env["git_commit"])):
        raise ExportError(f"{where}: git_commit {env['git_commit']!r} is not a commit hash")
    try:
        datetime.datetime.fromisoformat(str(env["date"]))
    except ValueError:
        raise ExportError(f"{where}: date {env['date']!r} is not an ISO date") from None
    if profile in PROFILE_BACKENDS and str(env["backend"]).lower() not in PROFILE_BACKENDS[profile]:
        raise ExportError(f"{where}: a {profile!r} run must run on a {profile.upper()}, but its backend is "
                          f"{env['backend']!r} ({env['device_kind']})")
    if not isinstance(exported["results"], Mapping) or not exported["results"]:
        raise ExportError(f"{where}: no results")
    dry = [k for k, v in exported["results"].items() if _is_dry(v)]
    if dry:
        raise ExportError(f"{where}: results {dry} come from a dry run")


def shipped() -> list[Path]:
    """Every exported file shipped in the package: ``lamb/results/<profile>/<notebook>.json``."""
    root = package_results_dir()
    return sorted(root.glob("*/*.json")) if root.is_dir() else []
