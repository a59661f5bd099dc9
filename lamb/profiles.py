"""Profiles: the scale at which a notebook runs.

Every notebook, chapter or experiment, has one cell tagged ``parameters`` whose default profile is the
environment variable ``LAMB_PROFILE`` or ``"cpu"``; the next cell asks this module for its settings::

    PROFILE = os.environ.get("LAMB_PROFILE", "cpu")      # the `parameters` cell (papermill may override)
    settings = lamb.profiles.settings("01_why_large_batches", PROFILE)

=========  ==========================  ==================================================================
profile    where                       budget per notebook
=========  ==========================  ==================================================================
``smoke``  CI and nbval, 2 CPU cores   under a minute: every cell runs and every assertion holds
``cpu``    a laptop; the book build    a few minutes: the figures readers see
``gpu``    one GPU (H100)              at most 10 minutes: the paper's trends at a real scale
``tpu``    Colab TPU v5e chip (JAX)    as ``gpu``, sized for its 16 GB
=========  ==========================  ==================================================================

Each notebook's settings live in one TOML file, ``lamb/settings/<notebook>.toml`` (the notebook's file name
without ``.ipynb``), with a ``[common]`` table and one table per profile that overrides it::

    [common]
    seeds = 3
    [smoke]
    steps = 20
    [cpu]
    steps = 600
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from types import MappingProxyType

PROFILES = ("smoke", "cpu", "gpu", "tpu")
DEFAULT_PROFILE = "cpu"

#: Environment variable that asks for a dry run: a notebook executed at its (full-scale) settings with every
#: training loop cut to two steps and every sweep to one trial (``python -m lamb run ... --dry-run``).
DRY_RUN_ENV = "LAMB_DRY_RUN"
#: The number of steps every training loop runs in a dry run.
DRY_RUN_STEPS = 2


def dry_run() -> bool:
    """Whether this process is a dry run: ``LAMB_DRY_RUN`` set to anything but ``""``, ``"0"`` or ``"false"``.

    Training loops of :mod:`lamb.experiments` then stop after :data:`DRY_RUN_STEPS` steps and sweeps train one
    trial, so that full-scale shapes, data generation, result writing and plotting run for real on any device.
    """
    return os.environ.get(DRY_RUN_ENV, "").strip().lower() not in ("", "0", "false", "no")


def dry_run_steps(steps: int) -> int:
    """``steps`` in a normal run; at most :data:`DRY_RUN_STEPS` in a dry run. Every training loop of the package
    runs ``dry_run_steps(steps)`` steps; a loop written elsewhere should do the same."""
    return min(int(steps), DRY_RUN_STEPS) if dry_run() else int(steps)


def dry_run_grid(grid):
    """A sweep's grid in a normal run; in a dry run only its middle value (as a one-element list), so that a
    sweep trains one trial per optimizer and everything after it (best rate, plots) still runs."""
    grid = list(grid)
    return [grid[len(grid) // 2]] if dry_run() and grid else grid


def available_notebooks() -> list[str]:
    """The notebooks that have a settings file."""
    folder = resources.files("lamb") / "settings"
    return sorted(f.name.removesuffix(".toml") for f in folder.iterdir() if f.name.endswith(".toml"))


def current_profile() -> str:
    """The profile named by ``LAMB_PROFILE``, or ``"cpu"``; an unknown name is an error."""
    return check_profile(os.environ.get("LAMB_PROFILE", DEFAULT_PROFILE))


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: the profiles are {', '.join(PROFILES)}")
    return profile


def settings(notebook: str, profile: str | None = None) -> MappingProxyType:
    """The settings of ``notebook`` (file name without ``.ipynb``) at ``profile`` (default: the current one).

    The result is read-only, merged from the notebook's ``"common"`` entry and its profile's entry, with
    ``"profile"`` and ``"notebook"`` added.
    """
    profile = current_profile() if profile is None else check_profile(profile)
    notebook = notebook.removesuffix(".ipynb").rsplit("/", 1)[-1]
    path = resources.files("lamb") / "settings" / f"{notebook}.toml"
    if not path.is_file():
        raise KeyError(
            f"no settings for notebook {notebook!r}; known notebooks: {', '.join(available_notebooks()) or 'none'}"
        )
    entry = tomllib.loads(path.read_text(encoding="utf-8"))
    unknown = set(entry) - {"common", *PROFILES}
    if unknown:
        raise ValueError(f"{path}: unknown tables {sorted(unknown)}; allowed: common, {', '.join(PROFILES)}")
    merged = dict(entry.get("common", {}))
    merged.update(entry.get(profile, {}))
    merged["profile"] = profile
    merged["notebook"] = notebook
    return MappingProxyType(merged)
