"""``python -m lamb train`` in 2 JAX processes on 127.0.0.1, each with 2 simulated CPU devices (gloo collectives).

- The 2-process run (global mesh of 4 devices, each process feeding its half of every global batch) ends with
  the parameters of a 1-process, 1-device run with the same global batch, to float rounding.
- A run checkpointed by the 2 processes (``--stop-after``) resumes in 1 process, and one checkpointed by 1
  process resumes in 2; both end where the uninterrupted run does.
- The checkpoint is written once (by process 0) and the result files too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STEPS = 6
COMMON = ["resnet", "--profile", "smoke", "--steps", str(STEPS), "--eval-every", "3", "--num-samples", "2000",
          "--eval-batches", "1", "--batch-size", "32", "--widths", "8", "--no-progress"]
TIMEOUT_S = 240


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
                 "OMPI_COMM_WORLD_SIZE", "LAMB_DRY_RUN"):
        env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(args, devices: int, cwd) -> None:
    r = subprocess.run([sys.executable, "-m", "lamb", "train", *COMMON, *args], env=_env(devices), cwd=cwd,
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"


def _train_two_processes(args, cwd) -> list[str]:
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "lamb", "train", *COMMON, *args,
                               "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i)], env=_env(2), cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = []
    try:
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"process {i}: exit {p.returncode}\n{out}\n{err[-4000:]}"
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outputs


def _params(checkpoint_dir: Path) -> list[np.ndarray]:
    with np.load(checkpoint_dir / "train" / "checkpoint.npz") as f:
        return [f[k] for k in sorted(f.files) if k.startswith("leaf_")]


def _meta_step(checkpoint_dir: Path) -> int:
    import json

    with np.load(checkpoint_dir / "train" / "checkpoint.npz") as f:
        return json.loads(f["meta"].tobytes().decode())["step"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: 1 process, 1 device, the same global batch."""
    root = tmp_path_factory.mktemp("one")
    _train(["--checkpoint-dir", "ckpt", "--results-dir", "res", "--cpu-devices", "1"], devices=1, cwd=root)
    return root


def _assert_close(a_dir: Path, b_dir: Path):
    a, b = _params(a_dir), _params(b_dir)
    assert len(a) == len(b) and len(a) > 10
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6)


def test_two_processes_equal_one_process(one_process, tmp_path):
    outs = _train_two_processes(["--checkpoint-dir", "ckpt", "--results-dir", "res"], cwd=tmp_path)
    assert "4 devices" in outs[0] and "done:" in outs[0]
    assert "done:" not in outs[1]  # only process 0 reports (gloo itself may print)
    assert _meta_step(tmp_path / "ckpt") == STEPS
    _assert_close(tmp_path / "ckpt", one_process / "ckpt")
    import json

    result = json.loads((tmp_path / "res" / "train.json").read_text())
    assert result["environment"]["process_count"] == 2 and result["environment"]["device_count"] == 4
    log = [json.loads(line) for line in (tmp_path / "res" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r and "loss" in r] == list(range(1, STEPS + 1))


def test_checkpoint_of_two_processes_resumes_in_one(one_process, tmp_path):
    _train_two_processes(["--checkpoint-dir", "ckpt", "--checkpoint-every", "1", "--stop-after", "3"],
                         cwd=tmp_path)
    assert _meta_step(tmp_path / "ckpt") == 3
    _train(["--checkpoint-dir", "ckpt", "--cpu-devices", "1", "--results-dir", "res"], devices=1, cwd=tmp_path)
    assert _meta_step(tmp_path / "ckpt") == STEPS
    _assert_close(tmp_path / "ckpt", one_process / "ckpt")


def test_checkpoint_of_one_process_resumes_in_two(one_process, tmp_path):
    """Process 0 reads the checkpoint and broadcasts it to process 1 (no shared file system needed)."""
    _train(["--checkpoint-dir", "ckpt", "--cpu-devices", "1", "--checkpoint-every", "1", "--stop-after", "3"],
           devices=1, cwd=tmp_path)
    assert _meta_step(tmp_path / "ckpt") == 3
    _train_two_processes(["--checkpoint-dir", "ckpt", "--results-dir", "res"], cwd=tmp_path)
    assert _meta_step(tmp_path / "ckpt") == STEPS
    _assert_close(tmp_path / "ckpt", one_process / "ckpt")
