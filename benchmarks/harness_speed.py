"""Steps per second of lamb.experiments' models under train.make_train_step (jitted, LAMB), at given sizes.

What a chapter's `cpu` run can afford is bounded by these numbers (the whole book at `cpu` must build in under
30 minutes on 2 cores). Each model is timed on random data of the right shape after a warm-up step (the
compile time is reported separately), as the median of `--rounds` rounds of `--steps` steps.

    python benchmarks/harness_speed.py              # the cpu-profile sizes of notebooks/training_harness
    python benchmarks/harness_speed.py --profile smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lamb import jax as lj
from lamb import profiles
from lamb.experiments import models, train


def bench(model, inputs, labels, steps, rounds):
    params = model.init(jax.random.key(0))
    tx = lj.lamb(1e-3, weight_decay=0.01)
    state = tx.init(params)
    step = jax.jit(train.make_train_step(model, tx))
    batch = {"inputs": jnp.asarray(inputs), "labels": jnp.asarray(labels)}
    t0 = time.perf_counter()
    params, state, m = step(params, state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            params, state, m = step(params, state, batch)
        jax.block_until_ready((params, m))
        times.append((time.perf_counter() - t0) / steps)
    return compile_s, statistics.median(times), models.count_params(params)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu", choices=profiles.PROFILES)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    s = profiles.settings("training_harness", args.profile)
    rng = np.random.default_rng(0)
    cases = {
        f"MLP {s['hidden']} on MNIST-1D, B={s['batch_size']}":
            (models.mlp(40, s["hidden"], 10), rng.normal(size=(s["batch_size"], 40)).astype(np.float32),
             rng.integers(0, 10, s["batch_size"])),
        f"ResNet widths={s['resnet_widths']} on MNIST-1D, B={s['resnet_batch_size']}":
            (models.resnet((40,), 10, widths=tuple(s["resnet_widths"])),
             rng.normal(size=(s["resnet_batch_size"], 40)).astype(np.float32),
             rng.integers(0, 10, s["resnet_batch_size"])),
        f"BERT d={s['bert_hidden']} L={s['bert_layers']} V={s['bert_vocab_size']} n={s['bert_seq_len']}, "
        f"B={s['bert_batch_size']}":
            (models.bert(s["bert_vocab_size"], s["bert_seq_len"], hidden=s["bert_hidden"], layers=s["bert_layers"],
                         heads=s["bert_heads"]),
             rng.integers(5, s["bert_vocab_size"], (s["bert_batch_size"], s["bert_seq_len"])),
             np.where(rng.random((s["bert_batch_size"], s["bert_seq_len"])) < 0.15,
                      rng.integers(5, s["bert_vocab_size"], (s["bert_batch_size"], s["bert_seq_len"])), -100)),
    }
    print(f"profile {args.profile}; jax {jax.__version__}; devices {jax.devices()}; cpus {os.cpu_count()}")
    print(f"{'model':<58s} {'params':>9s} {'compile s':>9s} {'ms/step':>8s} {'steps/s':>8s}")
    for name, (model, x, y) in cases.items():
        c, t, n = bench(model, x, y, args.steps, args.rounds)
        print(f"{name:<58s} {n:>9d} {c:>9.2f} {1e3 * t:>8.1f} {1 / t:>8.1f}")


if __name__ == "__main__":
    main()
