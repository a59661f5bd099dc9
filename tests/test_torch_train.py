"""The BERT recipe in PyTorch (``lamb.torch_train``) under torchrun: 2 processes over gloo on 127.0.0.1, with
DDP and with FSDP2 (``fully_shard``, DTensor parameters, LAMB's whole-layer norms), end with the parameters of
the single-process run on the same global batches, to float rounding. The run has both of BERT's phases.

Checkpoints: every multi-process run here is stopped (``--stop-after``) and resumed, so each test checks that a
checkpointed-then-resumed run equals the uninterrupted one; the FSDP2 checkpoint (shards saved by their owners
with ``torch.distributed.checkpoint``) is also resumed in one process without FSDP2."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

ARGS = ["bert", "--profile", "smoke", "--steps", "10", "--batch-size", "16", "--accumulation-steps", "2",
        "--eval-batches", "1", "--no-progress"]
STOP = 6  # inside phase 1 (9 of the 10 steps), between the evaluations at steps 5 and 9
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(results):
    return dict(np.load(results / "torch_params.npz")), json.loads((results / "torch.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The uninterrupted single-process run: (parameters, torch.json)."""
    from lamb import torch_train

    out = tmp_path_factory.mktemp("single")
    assert torch_train.main([*ARGS, "--results-dir", str(out)]) == 0
    return _load(out)


def _torchrun(results, *extra) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    env.pop("LAMB_DRY_RUN", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "lamb.torch_train", *ARGS, "--results-dir", str(results),
           *map(str, extra)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=results.parent)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    return r.stdout


def _compare(got, want):
    (got, got_json), (want, want_json) = got, want
    assert sorted(got) == sorted(want) and len(want) > 10
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    a, b = got_json["history"], want_json["history"]
    assert a["step"] == b["step"] == list(range(1, 11)) and a["eval_step"] == b["eval_step"] == [5, 9, 10]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-4)
    # the run trained: the parameters are not the initial ones (a seed-0 model built afresh)
    import torch

    from lamb.torch_train import TorchBert

    torch.manual_seed(0)
    init = {n: p.detach().numpy() for n, p in TorchBert(2048, 128, 32, 1, 2).named_parameters()}
    moved = sum(not np.allclose(init[n], want[n]) for n in want)
    assert moved > len(want) // 2


def test_resume_in_one_process_is_the_uninterrupted_run_and_refuses_another_configuration(single, tmp_path,
                                                                                           capsys):
    from lamb import torch_train

    res, ckpt = tmp_path / "res", tmp_path / "ckpt"
    common = [*ARGS, "--results-dir", str(res), "--checkpoint-dir", str(ckpt)]
    assert torch_train.main([*common, "--stop-after", str(STOP)]) == 0
    assert f"stopped after step {STOP}" in capsys.readouterr().out
    assert not (res / "torch_params.npz").exists(), "a stopped run writes no final results"
    assert torch_train.main([*common, "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "belongs to another configuration" in err and "'lr': (0.005, 0.02)" in err
    assert torch_train.main([*common, "--stop-after", str(STOP)]) == 0   # already there: trains nothing
    assert [p.name for p in (ckpt / "torch").iterdir()] == [f"step_{STOP:08d}"]
    assert torch_train.main(common) == 0
    params, result = _load(res)
    want_params, want = single
    assert result["history"] == want["history"]                          # bit for bit
    assert all(np.array_equal(params[k], want_params[k]) for k in want_params)
    assert result["environment"]["resumed_from"] == STOP
    log = [json.loads(line) for line in (res / "log.jsonl").read_text().splitlines()]
    assert [r["from_step"] for r in log if r.get("event") == "resumed"] == [STOP, STOP]
    # a JAX run's checkpoint directory is another configuration for the torch backend
    jax_dir = tmp_path / "jax_ckpt"
    jax_dir.mkdir()
    identity = json.loads((ckpt / "recipe.json").read_text())
    (jax_dir / "recipe.json").write_text(json.dumps({k: v for k, v in identity.items()
                                                     if k not in ("backend", "dry_run")}))
    assert torch_train.main([*ARGS, "--checkpoint-dir", str(jax_dir)]) == 2
    assert "'backend': (None, 'torch')" in capsys.readouterr().err


def test_ddp_two_processes_checkpointed_and_resumed_equal_one(single, tmp_path):
    ckpt = tmp_path / "ckpt"
    out = _torchrun(tmp_path / "res", "--checkpoint-dir", ckpt, "--stop-after", STOP)
    assert f"stopped after step {STOP}" in out
    out = _torchrun(tmp_path / "res", "--checkpoint-dir", ckpt)
    assert "2 process(es)" in out
    _compare(_load(tmp_path / "res"), single)


def test_fsdp2_two_processes_checkpointed_resume_in_two_and_in_one(single, tmp_path):
    from lamb import torch_train

    ckpt = tmp_path / "ckpt"
    assert f"stopped after step {STOP}" in _torchrun(tmp_path / "res", "--fsdp", "--checkpoint-dir", ckpt,
                                                      "--stop-after", STOP)
    # the shards of 2 FSDP2 processes, resumed by one process with a whole (unsharded) model
    shutil.copytree(ckpt, tmp_path / "ckpt1")
    assert torch_train.main([*ARGS, "--results-dir", str(tmp_path / "res1"), "--checkpoint-dir",
                             str(tmp_path / "ckpt1")]) == 0
    _compare(_load(tmp_path / "res1"), single)
    # and by 2 FSDP2 processes
    out = _torchrun(tmp_path / "res", "--fsdp", "--checkpoint-dir", ckpt)
    assert "2 process(es) FSDP2" in out
    params, result = _load(tmp_path / "res")
    assert result["environment"]["fsdp"] and result["environment"]["world_size"] == 2
    assert result["environment"]["resumed_from"] == STOP
    _compare((params, result), single)
