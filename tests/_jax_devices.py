"""Runs a test file as a script on simulated CPU devices: XLA_FLAGS must be set before JAX starts, so the
checks that need several devices run in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_on_cpu_devices(script: str, devices: int, timeout: int = 300) -> str:
    """Runs ``python script`` with ``devices`` host CPU devices; fails the test on a non-zero exit; returns stdout."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    tests = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(tests.parent), str(tests), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{Path(script).name} on {devices} CPU devices failed (exit {result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr[-4000:]}")
    return result.stdout
