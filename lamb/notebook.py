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
    if profile == "tpu" and backend != "tpu":
        raise RuntimeError(
            f"profile 'tpu' needs a TPU, but JAX runs on {backend!r}: on Colab choose Runtime > Change "
            "runtime type > TPU, or run with PROFILE = 'cpu'"
        )
    if profile == "gpu" and backend != "gpu" and report.get("torch_device", "cpu") == "cpu":
        raise RuntimeError(
            f"profile 'gpu' needs a GPU, but JAX runs on {backend!r} and torch sees none: choose a GPU "
            "runtime, or run with PROFILE = 'cpu'"
        )
    try:
        from lamb.experiments import plotting

        plotting.use_style()
    except ImportError:  # the experiments extra is not installed: plots keep matplotlib's defaults
        pass
    if not quiet:
        print(f"profile: {profile}")
        print("  ".join(f"{k}: {v}" for k, v in report.items()))
    return settings


def results_dir(notebook: str, profile: str | None = None, *, create: bool = True) -> Path:
    """Where ``notebook`` writes its result files at ``profile``: ``$LAMB_RESULTS_DIR/<notebook>/`` when
    ``python -m lamb run`` set that variable (it points at ``results/<profile>/``), else
    ``results/<profile>/<notebook>/`` under the working directory."""
    profile = profiles.current_profile() if profile is None else profiles.check_profile(profile)
    notebook = notebook.removesuffix(".ipynb").rsplit("/", 1)[-1]
    root = os.environ.get("LAMB_RESULTS_DIR")
    path = (Path(root) if root else Path("results") / profile) / notebook
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def full_scale_results(notebook: str, profiles_: tuple[str, ...] = ("gpu", "tpu")) -> dict[str, dict]:
    """The exported results of full-scale runs of ``notebook`` that ship with the package,
    ``lamb/results/<profile>/<notebook>.json``, as ``{profile: parsed JSON}`` (empty when none ships).

    Only a real run writes such a file (``python -m lamb run NOTEBOOK --profile gpu --export``); its
    ``environment`` entry names the device, versions, date and commit, for the figures' labels."""
    import json
    from importlib import resources

    notebook = notebook.removesuffix(".ipynb").rsplit("/", 1)[-1]
    found = {}
    for profile in profiles_:
        profiles.check_profile(profile)
        path = resources.files("lamb") / "results" / profile / f"{notebook}.json"
        if path.is_file():
            found[profile] = json.loads(path.read_text(encoding="utf-8"))
    return found
