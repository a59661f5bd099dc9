"""Optimizer step time on BERT-base parameter shapes: lamb.torch.Lamb (each path) against torch AdamW and others.

Not a test: it prints one table of medians measured in one run, in milliseconds and as ratios to
``torch.optim.AdamW(fused=True)`` and ``AdamW(foreach=True)`` from the same run. BERT-base: 199 tensors,
109.5M fp32 parameters (embeddings, 12 encoder layers, pooler); every gradient is fixed random data, so only
the optimizer's step is timed.

    .venv/bin/python benchmarks/step_time.py                      # 2 threads, all optimizers
    .venv/bin/python benchmarks/step_time.py --only adamw lamb    # names start with these prefixes
    .venv/bin/python benchmarks/step_time.py --layers 2 --steps 3 # a quick smoke run
    .venv/bin/python benchmarks/step_time.py --alternate --only adamw "lamb f"  # all alive, stepped in turn
    .venv/bin/python benchmarks/step_time.py --alternate --only "lamb fused" --layers 2  # the Nesterov check

Regression check: when "Lamb fused" and its Nesterov variants ran, the script prints their ratio and exits with
status 1 if one is over ``--max-nesterov-ratio`` (default 1.25): N-LAMB/NN-LAMB move the same bytes as LAMB
(a few more flops per element), so a larger ratio means a variant lost its vectorized kernel (it once ran 3-4.5x
slower because GCC kept its loop scalar).

timm and torch-optimizer are optional (benchmark only, never in requirements.txt). Install them without
letting pip touch torch: ``pip install --no-deps timm torch-optimizer pytorch-ranger``. timm's ``Lamb`` is
loaded from its module file, so torchvision (which ``import timm`` needs) is not required. Missing ones are
skipped with a note.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import statistics
import sys
import time
import types

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from lamb.torch import Lamb  # noqa: E402
from _common import bert_base_shapes, tune_malloc  # noqa: E402  (this folder is sys.path[0])


def load_timm_lamb():
    """timm's Lamb class, imported from its module file without running ``timm/__init__`` (needs torchvision)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    optim_dir = str(__import__("pathlib").Path(list(spec.submodule_search_locations)[0]) / "optim")
    package = types.ModuleType("_timm_optim")
    package.__path__ = [optim_dir]
    sys.modules["_timm_optim"] = package
    return importlib.import_module("_timm_optim.lamb").Lamb


def load_torch_optimizer_lamb():
    try:
        return importlib.import_module("torch_optimizer").Lamb
    except ImportError:
        return None


def candidates(lr: float = 1e-3, weight_decay: float = 0.01):
    """(name, factory(params) -> optimizer) for every optimizer available here."""
    out = [
        ("AdamW fused", lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay, fused=True)),
        ("AdamW foreach", lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay, foreach=True)),
        ("Lamb fused", lambda p: Lamb(p, lr=lr, weight_decay=weight_decay, fused=True)),
        ("Lamb fused, nesterov='n'", lambda p: Lamb(p, lr=lr, weight_decay=weight_decay, nesterov="n",
                                                     fused=True)),
        ("Lamb fused, nesterov='nn'", lambda p: Lamb(p, lr=lr, weight_decay=weight_decay, nesterov="nn",
                                                      fused=True)),
        ("Lamb foreach", lambda p: Lamb(p, lr=lr, weight_decay=weight_decay, foreach=True)),
        ("Lamb single-tensor", lambda p: Lamb(p, lr=lr, weight_decay=weight_decay, foreach=False)),
        ("Lamb foreach, nesterov='nn'", lambda p: Lamb(p, lr=lr, weight_decay=weight_decay, nesterov="nn")),
    ]
    timm_lamb = load_timm_lamb()
    if timm_lamb is None:
        print("note: timm is not installed; skipping timm's Lamb (pip install --no-deps timm)")
    else:
        # max_grad_norm=None: no global gradient clipping, the same algorithm as ours (timm's default clips).
        out.append(("timm Lamb", lambda p: timm_lamb(p, lr=lr, weight_decay=weight_decay, max_grad_norm=None)))
        out.append(("timm Lamb, foreach", lambda p: timm_lamb(p, lr=lr, weight_decay=weight_decay,
                                                              max_grad_norm=None, foreach=True)))
    topt_lamb = load_torch_optimizer_lamb()
    if topt_lamb is None:
        print("note: torch-optimizer is not installed; skipping its Lamb "
              "(pip install --no-deps torch-optimizer pytorch-ranger)")
    else:
        out.append(("torch-optimizer Lamb", lambda p: topt_lamb(p, lr=lr, weight_decay=weight_decay)))
    return out


def time_steps(opt, warmup: int, steps: int) -> tuple[float, list[float]]:
    """(first step's seconds, seconds of each of ``steps`` steps after ``warmup`` steps)."""
    start = time.perf_counter()
    opt.step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return first, times


def _alternate(chosen, params, args, times: dict, first_steps: dict, cpu_times: dict) -> None:
    """Every optimizer stepped in turn, one step each, so that a slow spell of the machine hits all alike."""
    optimizers = {}
    for name, factory in chosen:
        try:
            optimizers[name] = factory(params)
            first_steps[name], _ = time_steps(optimizers[name], args.warmup, 0)
        except Exception as exc:  # as in the rounds: one broken third-party optimizer must not stop the table
            print(f"{name}: failed: {type(exc).__name__}: {exc}")
            optimizers.pop(name, None)
            del times[name]
    for _ in range(args.rounds * args.steps):
        for name, opt in optimizers.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            opt.step()
            times[name].append(time.perf_counter() - start)
            cpu_times.setdefault(name, []).append(time.process_time() - cpu_start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (default 12: BERT-base)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per optimizer and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (includes compilation)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds: each optimizer is timed once per round (default 3)")
    parser.add_argument("--only", nargs="*", default=None, help="run optimizers whose name starts with these")
    parser.add_argument("--alternate", action="store_true",
                        help="keep every chosen optimizer alive and alternate them step by step (--rounds x "
                             "--steps steps each); needs the state of all of them in memory at once")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default mmap threshold (see _common.MALLOC_ENV): what a user gets")
    parser.add_argument("--max-nesterov-ratio", type=float, default=1.25,
                        help="exit 1 if a fused Nesterov variant's median is more than this times Lamb fused's")
    args = parser.parse_args(argv)
    malloc_line = tune_malloc(not args.no_malloc_tuning)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = bert_base_shapes(layers=args.layers)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    numel = sum(p.numel() for p in params)
    how = (f"all alive, stepped in turn, {args.rounds * args.steps} steps each after {args.warmup} warm-up steps"
           if args.alternate else
           f"median of {args.rounds} rounds x {args.steps} steps, each round after {args.warmup} warm-up steps")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(params)} tensors, "
          f"{numel / 1e6:.1f}M fp32 parameters; {how}")

    print(malloc_line)
    chosen = [(name, factory) for name, factory in candidates()
              if not args.only or any(name.lower().startswith(o.lower()) for o in args.only)]
    # Rounds interleave the optimizers, so that a slow spell of a shared machine hits all of them alike;
    # the median is over every timed step of every round.
    times: dict[str, list[float]] = {name: [] for name, _ in chosen}
    first_steps: dict[str, float] = {}
    cpu_times: dict[str, list[float]] = {}
    if args.alternate:
        _alternate(chosen, params, args, times, first_steps, cpu_times)
    for round_ in range(0 if args.alternate else args.rounds):
        for name, factory in chosen:
            if name not in times:
                continue  # failed in an earlier round
            opt = factory(params)
            try:
                first, step_times = time_steps(opt, args.warmup, args.steps)
            except Exception as exc:  # report and go on: one broken third-party optimizer must not stop the table
                print(f"{name}: failed: {type(exc).__name__}: {exc}")
                del times[name]
                continue
            finally:
                del opt
                gc.collect()
            first_steps.setdefault(name, first)
            times[name] += step_times
            print(f"  round {round_ + 1}: {name:<30s} {statistics.median(step_times) * 1e3:9.1f} ms"
                  + (f"  (first step {first:.2f} s)" if round_ == 0 else ""), flush=True)
    results = {name: (first_steps[name], statistics.median(ts)) for name, ts in times.items() if ts}
    best = {name: min(ts) for name, ts in times.items() if ts}

    fused = results.get("AdamW fused", (None, None))[1]
    foreach = results.get("AdamW foreach", (None, None))[1]
    print()
    print("| optimizer | median ms/step | / AdamW fused | / AdamW foreach | min ms/step | min / AdamW fused "
          "| min / AdamW foreach | first step s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    best_fused, best_foreach = best.get("AdamW fused"), best.get("AdamW foreach")
    for name, (first, median) in results.items():
        r1 = f"{median / fused:.2f}" if fused else "-"
        r2 = f"{median / foreach:.2f}" if foreach else "-"
        b1 = f"{best[name] / best_fused:.2f}" if best_fused else "-"
        b2 = f"{best[name] / best_foreach:.2f}" if best_foreach else "-"
        print(f"| {name} | {median * 1e3:.1f} | {r1} | {r2} | {best[name] * 1e3:.1f} | {b1} | {b2} | {first:.2f} |")
    cpu = {name: statistics.median(ts) for name, ts in cpu_times.items() if ts}
    if cpu:
        # CPU time of the process (all its threads) per step: on a shared machine, less noisy than the wall clock,
        # which also counts the time other processes held the cores.
        print()
        print("| optimizer | median CPU ms/step | / AdamW fused | / AdamW foreach |")
        print("|---|---:|---:|---:|")
        for name, c in cpu.items():
            r1 = f"{c / cpu['AdamW fused']:.2f}" if "AdamW fused" in cpu else "-"
            r2 = f"{c / cpu['AdamW foreach']:.2f}" if "AdamW foreach" in cpu else "-"
            print(f"| {name} | {c * 1e3:.1f} | {r1} | {r2} |")
    check_nesterov(cpu or {name: median for name, (_, median) in results.items()}, args.max_nesterov_ratio)


def check_nesterov(medians: dict, max_ratio: float) -> None:
    """Exit 1 when a fused Nesterov variant is more than ``max_ratio`` times fused LAMB (same bytes moved);
    ``medians`` are CPU times per step with --alternate, else wall-clock times."""
    if "Lamb fused" not in medians:
        return
    plain = medians["Lamb fused"]
    slow = []
    for name, median in medians.items():
        if name.startswith("Lamb fused, nesterov"):
            ratio = median / plain
            print(f"{name} / Lamb fused: {ratio:.2f} (limit {max_ratio})")
            if ratio > max_ratio:
                slow.append(name)
    if slow:
        sys.exit(f"FAILED: {', '.join(slow)} slower than {max_ratio}x Lamb fused: a Nesterov slowdown")

if __name__ == "__main__":
    main()
