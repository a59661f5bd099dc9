"""Jitted optimizer step time on BERT-base parameter shapes: lamb.jax.lamb against optax.lamb and optax.adamw.

Not a test: it prints one table of medians measured in one run, in milliseconds and as ratios to
``optax.lamb`` and ``optax.adamw`` from the same run. BERT-base: 199 arrays, 109.5M float32 parameters
(embeddings, 12 encoder layers, pooler), the shapes of ``benchmarks/step_time.py``. Each step is
``updates, state = tx.update(grads, state, params); params = optax.apply_updates(params, updates)`` under
``jax.jit`` with the parameters and the optimizer state donated (updated in place, as in training); the
gradients are fixed random data, so only the optimizer is timed. Rounds are interleaved (every optimizer once
per round) so that a noisy shared machine slows all of them alike; the script re-executes itself with glibc's
malloc told to keep freed memory (``--no-malloc-tuning`` to skip), as ``benchmarks/step_time.py`` does.

    .venv/bin/python benchmarks/step_time_jax.py                        # all optimizers, 12 layers
    .venv/bin/python benchmarks/step_time_jax.py --layers 2 --rounds 1  # a quick smoke run
    .venv/bin/python benchmarks/step_time_jax.py --only optax lamb      # names starting with these

Targets: ``lj.lamb`` with default options at most 1.05x ``optax.lamb``; the Nesterov and L1/L-infinity
variants at most 1.15x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lamb import jax as lj  # noqa: E402
from _common import bert_base_shapes, tune_malloc  # noqa: E402  (this folder is sys.path[0])


def candidates(lr: float = 1e-3, weight_decay: float = 0.01):
    """(name, transformation) pairs; the LAMBs share eps = 1e-6 and the weight decay."""
    return [
        ("optax.adamw", optax.adamw(lr, eps=1e-6, weight_decay=weight_decay)),
        ("optax.lamb", optax.lamb(lr, eps=1e-6, weight_decay=weight_decay)),
        ("lj.lamb (defaults)", lj.lamb(lr, weight_decay=weight_decay)),
        ("lj.lamb nesterov='n'", lj.lamb(lr, weight_decay=weight_decay, nesterov="n")),
        ("lj.lamb nesterov='nn'", lj.lamb(lr, weight_decay=weight_decay, nesterov="nn")),
        ("lj.lamb norm='l1'", lj.lamb(lr, weight_decay=weight_decay, norm="l1")),
        ("lj.lamb norm='linf'", lj.lamb(lr, weight_decay=weight_decay, norm="linf")),
        ("lj.lamb bias_correction=False", lj.lamb(lr, weight_decay=weight_decay, bias_correction=False)),
        ("lj.lars", lj.lars(lr, momentum=0.9, weight_decay=weight_decay)),
    ]


def make_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    return jax.jit(step, donate_argnums=(0, 1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each optimizer once per round)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per optimizer and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per optimizer and round")
    parser.add_argument("--alternate", action="store_true",
                        help="keep every chosen optimizer's state alive and step them in turn, one step each "
                             "(steadier ratios on a shared machine; memory: every state at once, so use --only)")
    parser.add_argument("--only", nargs="*", default=None, help="run the optimizers whose names start so")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default mmap threshold (see _common.MALLOC_ENV)")
    args = parser.parse_args(argv)
    malloc_line = tune_malloc(not args.no_malloc_tuning)

    shapes = bert_base_shapes(args.layers)
    n_params = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(0)
    params0 = [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in shapes]
    grads = [jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 1e-3) for s in shapes]
    chosen = [(n, tx) for n, tx in candidates()
              if args.only is None or any(n.startswith(prefix) for prefix in args.only)]
    if not chosen:
        raise SystemExit(f"--only {args.only} matches none of {[n for n, _ in candidates()]}")

    print(f"jax {jax.__version__}, optax {optax.__version__}, device {jax.devices()[0].device_kind} "
          f"({jax.default_backend()}), {len(shapes)} arrays, {n_params / 1e6:.1f}M float32 parameters")
    print(malloc_line)
    steps = {name: make_step(tx) for name, tx in chosen}
    times: dict[str, list[float]] = {name: [] for name, _ in chosen}
    compile_s: dict[str, float] = {}
    # Rounds interleave the optimizers, so that a slow spell of a shared machine hits all of them alike. Each
    # round starts from fresh parameters and state (one optimizer's buffers live at a time); the jitted step
    # is compiled once, in the first round, and that first call is not timed.
    cpu_times: dict[str, list[float]] = {name: [] for name, _ in chosen}
    if args.alternate:
        # Every optimizer's parameters and state stay alive; each step goes to the next optimizer in turn, so a
        # slow spell of the machine hits all of them alike. The process CPU time of each step is kept too.
        live = {}
        for name, tx in chosen:
            params = [jnp.asarray(p) for p in params0]
            state = tx.init(params)
            t0 = time.perf_counter()
            live[name] = steps[name](params, state, grads)
            jax.block_until_ready(live[name])
            compile_s[name] = time.perf_counter() - t0
        for k in range(args.rounds * (args.warmup + args.steps)):
            for name, _ in chosen:
                t0, c0 = time.perf_counter(), time.process_time()
                live[name] = steps[name](*live[name], grads)
                jax.block_until_ready(live[name])
                if k >= args.rounds * args.warmup:
                    times[name].append(time.perf_counter() - t0)
                    cpu_times[name].append(time.process_time() - c0)
        del live
    for _ in range(0 if args.alternate else args.rounds):
        for name, tx in chosen:
            params = [jnp.asarray(p) for p in params0]
            state = tx.init(params)
            for k in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                params, state = steps[name](params, state, grads)
                jax.block_until_ready(params)
                elapsed = time.perf_counter() - t0
                if name not in compile_s:
                    compile_s[name] = elapsed
                elif k >= args.warmup:
                    times[name].append(elapsed)
            del params, state

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base_lamb, base_adamw = medians.get("optax.lamb"), medians.get("optax.adamw")
    print(f"\nmedian of {args.rounds} rounds x {args.steps} steps (after {args.warmup} warm-up step(s) per round; "
          f"the first call, which compiles, is not timed)\n")
    # With --alternate, the process CPU time per step (all threads; steadier than the wall clock on a shared
    # machine) and its ratio to optax.adamw's are two more columns.
    cpu = {name: statistics.median(ts) for name, ts in cpu_times.items() if ts}
    if cpu:
        print(f"load average {os.getloadavg()[0]:.1f}\n")
    extra_head = f" {'CPU ms':>8} | {'CPU x adamw':>11} |" if cpu else ""
    extra_rule = f"{'-' * 9}:|{'-' * 12}:|" if cpu else ""
    print(f"| {'optimizer':<30} | {'ms/step':>8} | {'x optax.lamb':>12} | {'x optax.adamw':>13} | {'1st call s':>10} |"
          + extra_head)
    print(f"|{'-' * 32}|{'-' * 9}:|{'-' * 13}:|{'-' * 14}:|{'-' * 11}:|" + extra_rule)
    for name, m in medians.items():
        lamb_ratio = f"{m / base_lamb:.3f}" if base_lamb else "-"
        adamw_ratio = f"{m / base_adamw:.3f}" if base_adamw else "-"
        extra = ""
        if cpu:
            cpu_ratio = f"{cpu[name] / cpu['optax.adamw']:.3f}" if "optax.adamw" in cpu else "-"
            extra = f" {cpu[name] * 1e3:8.1f} | {cpu_ratio:>11} |"
        print(f"| {name:<30} | {m * 1e3:8.1f} | {lamb_ratio:>12} | {adamw_ratio:>13} | {compile_s[name]:10.1f} |"
              + extra)


if __name__ == "__main__":
    main()
