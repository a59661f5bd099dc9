"""What the first cells of every notebook share: the profile, the device report, the figure style.

A notebook starts with a ``parameters`` cell and this set-up cell::

    # parameters (papermill overrides these)
    import os
    PROFILE = os.environ.get("LAMB_PROFILE", "cpu")

    # set-up: install the package where it is missing (Colab), never reinstalling torch, jax or numpy
    import importlib.util, subprocess, sys
    if importlib.util.find_spec("lamb") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", INSTALL_SPEC], check=True)
    import lamb.notebook
    settings = lamb.notebook.setup("04_lamb", PROFILE)
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

from lamb import profiles

#: What the set-up cell of a notebook installs on Colab (lower bounds only: Colab's torch/jax stay).
INSTALL_SPEC = "lamb[torch,experiments] @ git+https://github.com/large-batch/lamb-book"


def device_report() -> dict:
    """The accelerators that JAX and PyTorch see, where each is installed (nothing is imported otherwise)."""
    import importlib.util

    report = {"python": platform.python_version()}
    if importlib.util.find_spec("jax") is not None:
        import jax

        devices = jax.devices()
        report["jax"] = jax.__version__
        report["jax_backend"] = jax.default_backend()
        report["jax_devices"] = f"{len(devices)} x {devices[0].device_kind}"
    if importlib.util.find_spec("torch") is not None:
        import torch

        report["torch"] = torch.__version__.split("+")[0]
        report["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return report


def setup(notebook: str, profile: str | None = None, *, quiet: bool = False):
    """Check the profile, report the device, set the figure style; return the notebook's settings.

    The ``tpu`` profile fails loudly when JAX finds no TPU (a Colab runtime without one silently falls back
    to the CPU, which would make a full-scale run take days); ``gpu`` likewise without a GPU.
    """
    profile = profiles.current_profile() if profile is None else profiles.check_profile(profile)
    settings = profiles.settings(notebook, profile)
    report = device_report()
    backend = report.get("jax_backend")
    dry = profiles.dry_run()
    problem = None
    if profile == "tpu" and backend != "tpu":
        problem = (f"profile 'tpu' needs a TPU, but JAX runs on {backend!r}: on Colab choose Runtime > Change "
                   "runtime type > TPU, or run with PROFILE = 'cpu'")
    if profile == "gpu" and backend != "gpu" and report.get("torch_device", "cpu") == "cpu":
        problem = (f"profile 'gpu' needs a GPU, but JAX runs on {backend!r} and torch sees none: choose a GPU "
                   "runtime, or run with PROFILE = 'cpu'")
    if problem and not dry:
        raise RuntimeError(problem)
    if problem:  # a dry run proves the full-scale shapes run, on whatever device is present
        warnings.warn(f"dry run, so continuing: {problem}", RuntimeWarning, stacklevel=2)
    _write_environment(notebook, profile, report)
    try:
        from lamb.experiments import plotting

        plotting.use_style()
    except ImportError:  # the experiments extra is not installed: plots keep matplotlib's defaults
        pass
    if not quiet:
        print(f"profile: {profile}")
        print("  ".join(f"{k}: {v}" for k, v in report.items()))
        if dry:
            print(f"DRY RUN: every training loop stops after {profiles.DRY_RUN_STEPS} steps and every sweep "
                  "trains one rate per optimizer, at this profile's shapes; no number below is a result")
    return settings


def git_commit() -> dict:
    """``{"git_commit": hash or None, "git_dirty": bool or None}`` of the checkout the package runs from
    (``None`` where it is not a git checkout, e.g. a pip install on Colab)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit or None, "git_dirty": dirty}


#: The file in a notebook's results directory where :func:`setup` records where the run ran.
ENVIRONMENT_FILE = "environment.json"


def run_environment(report: dict | None = None) -> dict:
    """Where this process runs: :func:`lamb.experiments.train.environment` (device kind and count, backend,
    JAX/optax/NumPy versions, Python, platform, UTC date; ``dry_run``), the torch device of
    :func:`device_report`, the package's version and the git commit (:func:`git_commit`)."""
    from importlib import metadata
    import datetime

    env = {}
    try:
        from lamb.experiments import train

        env.update(train.environment())
    except ImportError:  # no JAX: the date and Python at least
        env["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        env["python"] = platform.python_version()
    report = device_report() if report is None else report
    for key in ("torch", "torch_device"):
        if key in report:
            env[key] = report[key]
    try:
        env["lamb"] = metadata.version("lamb")
    except metadata.PackageNotFoundError:
        env["lamb"] = "unknown"
    env.update(git_commit())
    if profiles.dry_run():
        env["dry_run"] = True
    return env


def _write_environment(notebook: str, profile: str, report: dict) -> None:
    """Record the run's environment in its results directory (what ``--export`` ships beside the results)."""
    import json

    env = {"notebook": notebook.removesuffix(".ipynb").rsplit("/", 1)[-1], "profile": profile,
           **run_environment(report)}
    path = results_dir(notebook, profile) / ENVIRONMENT_FILE
    path.write_text(json.dumps(env, indent=1))


#: The file in a notebook's results directory that lists the cells a dry run skipped.
DRY_RUN_SKIPPED_FILE = "dry_run_skipped.json"


def declared_dry_run_skips(settings) -> dict[str, str]:
    """``{name: reason}`` of the parts a dry run of these settings skips: the settings' ``dry_run_skip`` table
    (empty when there is none)."""
    declared = settings.get("dry_run_skip", {})
    if not isinstance(declared, dict) or not all(isinstance(v, str) and v for v in declared.values()):
        raise ValueError(f"dry_run_skip must be a table of name = \"reason\" strings, got {declared!r}")
    return dict(declared)


def skip_in_dry_run(settings, name: str) -> bool:
    """Whether to skip the part ``name`` of a notebook: true only in a dry run whose settings declare ``name``
    in their ``dry_run_skip`` table, for a part that cannot run at full-scale shapes on a small CPU (the
    table's value says why). The skip is printed and recorded in :data:`DRY_RUN_SKIPPED_FILE` of the results
    directory, so a test can check that a dry run skipped exactly what the settings declare::

        if not lamb.notebook.skip_in_dry_run(settings, "generate"):
            ds = data.load("mnist1d", num_samples=settings["num_samples"])
    """
    import json

    declared = declared_dry_run_skips(settings)
    if not profiles.dry_run() or name not in declared:
        return False
    notebook = settings.get("notebook")
    if notebook is None:
        raise ValueError("skip_in_dry_run needs settings from lamb.profiles.settings (they name the notebook)")
    path = results_dir(notebook, settings["profile"]) / DRY_RUN_SKIPPED_FILE
    skipped = json.loads(path.read_text()) if path.exists() else {}
    skipped[name] = declared[name]
    path.write_text(json.dumps(skipped, indent=1))
    print(f"dry run: skipped {name!r}: {declared[name]}")
    return True


def results_dir(notebook: str, profile: str | None = None, *, create: bool = True) -> Path:
    """Where ``notebook`` writes its result files at ``profile``: ``$LAMB_RESULTS_DIR/<notebook>/`` when
    ``python -m lamb run`` set that variable (it points at ``results/<profile>/``, or
    ``results/dry-run/<profile>/`` for a dry run), else ``results/<profile>/<notebook>/`` under the working
    directory (``results/dry-run/<profile>/<notebook>/`` in a dry run: its files are never results)."""
    profile = profiles.current_profile() if profile is None else profiles.check_profile(profile)
    notebook = notebook.removesuffix(".ipynb").rsplit("/", 1)[-1]
    root = os.environ.get("LAMB_RESULTS_DIR")
    default = Path("results") / "dry-run" / profile if profiles.dry_run() else Path("results") / profile
    path = (Path(root) if root else default) / notebook
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


#: Environment variable naming another directory to read exported results from (``<dir>/<profile>/<nb>.json``),
#: e.g. to preview an export before it is committed; default: the package's ``lamb/results``.
FULL_SCALE_DIR_ENV = "LAMB_FULL_SCALE_DIR"


def full_scale_results(notebook: str, profiles_: tuple[str, ...] = ("gpu", "tpu"), *,
                       root: str | os.PathLike | None = None) -> dict[str, dict]:
    """The exported results of full-scale runs of ``notebook`` that ship with the package,
    ``lamb/results/<profile>/<notebook>.json``, as ``{profile: parsed JSON}`` (empty when none ships).

    Only a real run writes such a file (``python -m lamb run NOTEBOOK --profile gpu --export``, see
    :mod:`lamb.exports`); its ``environment`` entry names the device, versions, date and commit, for the
    figures' labels. ``root`` (or ``$LAMB_FULL_SCALE_DIR``) reads another directory of the same layout."""
    import json
    from importlib import resources

    notebook = notebook.removesuffix(".ipynb").rsplit("/", 1)[-1]
    root = root if root is not None else os.environ.get(FULL_SCALE_DIR_ENV)
    base = Path(root) if root else resources.files("lamb") / "results"
    found = {}
    for profile in profiles_:
        profiles.check_profile(profile)
        path = base / profile / f"{notebook}.json"
        if path.is_file():
            found[profile] = json.loads(path.read_text(encoding="utf-8"))
    return found


def provenance(exported: dict) -> str:
    """One line naming where an exported run ran: profile, device, date and commit, for a figure's label."""
    env = exported.get("environment", {})
    device = f"{env.get('device_count', '?')} x {env.get('device_kind', 'unknown device')}"
    commit = env.get("git_commit") or "unknown commit"
    dirty = " (uncommitted changes)" if env.get("git_dirty") else ""
    return (f"{exported.get('profile', '?')} run of {exported.get('notebook', '?')}: {device}, "
            f"{str(env.get('date', 'unknown date'))[:10]}, commit {commit[:10]}{dirty}")


def label_figure(fig, exported: dict) -> None:
    """Write :func:`provenance` above ``fig``'s axes (inline figures are saved with a tight box, which keeps it)."""
    fig.text(0.5, 1.0, provenance(exported), ha="center", va="bottom", fontsize=9, color="0.3")


def show_full_scale(notebook: str, draw, *, profiles_: tuple[str, ...] = ("gpu", "tpu"),
                    root: str | os.PathLike | None = None) -> dict[str, list]:
    """The last section of a Part II notebook: for each shipped full-scale run of ``notebook``
    (:func:`full_scale_results`), ``draw(exported)`` makes its figures (a figure or a list of figures, from the
    exported data alone), each labelled with :func:`provenance` and shown; returns ``{profile: figures}``.
    Where no run ships, prints one line saying so and returns ``{}``."""
    found = full_scale_results(notebook, profiles_, root=root)
    name = notebook.removesuffix(".ipynb").rsplit("/", 1)[-1]
    if not found:
        print(f"No full-scale ({' or '.join(profiles_)}) run of {name} ships yet; "
              f"`python -m lamb run notebooks/{name}.ipynb --profile gpu --export` on a GPU makes one.")
        return {}
    import matplotlib.pyplot as plt

    shown = {}
    for profile, exported in found.items():
        print(provenance(exported))
        figures = draw(exported)
        figures = list(figures) if isinstance(figures, (list, tuple)) else [figures]
        for fig in figures:
            label_figure(fig, exported)
        plt.show()
        shown[profile] = figures
    return shown
