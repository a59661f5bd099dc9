"""The BERT recipe in PyTorch (``lamb.torch_train``) under torchrun: 2 processes over gloo on 127.0.0.1, with
DDP and with FSDP2 (``fully_shard``, DTensor parameters, LAMB's whole-layer norms), end with the parameters of
the single-process run on the same global batches, to float rounding. The run has both of BERT's phases."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

ARGS = ["bert", "--profile", "smoke", "--steps", "10", "--batch-size", "16", "--accumulation-steps", "2",
        "--eval-batches", "1", "--no-progress"]
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    from lamb import torch_train

    out = tmp_path_factory.mktemp("single")
    assert torch_train.main([*ARGS, "--results-dir", str(out)]) == 0
    return dict(np.load(out / "torch_params.npz"))


def _torchrun(tmp_path, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    env.pop("LAMB_DRY_RUN", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "lamb.torch_train", *ARGS, "--results-dir", str(tmp_path),
           *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    assert "2 process(es)" in r.stdout
    return dict(np.load(tmp_path / "torch_params.npz"))


def _compare(got, want):
    assert sorted(got) == sorted(want) and len(want) > 10
    moved = 0
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    # the run trained: the parameters are not the initial ones (a seed-0 model built afresh)
    import torch

    from lamb.torch_train import TorchBert

    torch.manual_seed(0)
    init = {n: p.detach().numpy() for n, p in TorchBert(2048, 128, 32, 1, 2).named_parameters()}
    moved = sum(not np.allclose(init[n], want[n]) for n in want)
    assert moved > len(want) // 2


def test_ddp_two_processes_equal_one(single, tmp_path):
    _compare(_torchrun(tmp_path), single)


def test_fsdp2_two_processes_equal_one(single, tmp_path):
    import json

    _compare(_torchrun(tmp_path, "--fsdp"), single)
    env = json.loads((tmp_path / "torch.json").read_text())["environment"]
    assert env["fsdp"] and env["world_size"] == 2
