"""``python -m lamb train bert|resnet``: the book's recipes as a training command, from one CPU to many hosts.

One machine (all its devices; ``--cpu-devices 8`` simulates 8 devices on a CPU)::

    python -m lamb train bert --profile cpu --optimizer lamb --batch-size 256 \\
        --checkpoint-dir ckpt/bert --results-dir results/bert

Many processes (JAX's multi-process runtime): run the same command in every process; the coordinator comes
from ``--coordinator-address/--num-processes/--process-id``, from ``JAX_COORDINATOR_ADDRESS`` and friends, or
from the cluster (SLURM, Open MPI; on a Cloud TPU pod slice pass ``--distributed yes``). PyTorch instead:
``torchrun --nproc-per-node 2 -m lamb train bert --backend torch`` (see :mod:`lamb.torch_train`).

The configuration is the profile's defaults (:data:`lamb.experiments.recipes.DEFAULTS`), then ``--config
FILE`` (TOML, the same keys), then the flags. A rerun with the same ``--checkpoint-dir`` resumes; a checkpoint
written for another configuration is refused.
"""

from __future__ import annotations

import argparse
import os
import sys

from lamb.profiles import PROFILES

# flag -> configuration key, for the flags that set configuration entries
_CONFIG_FLAGS = ("optimizer", "batch_size", "accumulation_steps", "steps", "lr", "base_batch_size", "lr_rule",
                 "warmup_fraction", "weight_decay", "momentum", "schedule", "seed", "eval_every", "eval_batches",
                 "checkpoint_every", "long_fraction", "long_batch_size", "seq_len", "long_seq_len", "vocab_size",
                 "hidden", "layers", "heads", "dataset", "data_dir", "num_samples", "widths")


def _positive_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where it has one; configuration flags without one take the profile's."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


_EPILOG = ("Configuration flags left out take the value of --config FILE, else the profile's default "
           "(lamb.experiments.recipes.DEFAULTS).")


def prog_name() -> str:
    """How this process was started, for usage lines: ``lamb`` (the console script) or ``python -m lamb``."""
    return "lamb" if os.path.basename(sys.argv[0]) in ("lamb", "lamb.exe") else "python -m lamb"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on ``subparsers`` (of ``python -m lamb``)."""
    p = subparsers.add_parser("train", help="train the BERT or ResNet recipe (JAX, many processes; or torchrun)",
                              description=__doc__.split("\n\n")[0], epilog=_EPILOG,
                              formatter_class=_HelpFormatter)
    add_arguments(p)
    return p


def torch_parser(prog: str = "python -m lamb.torch_train") -> argparse.ArgumentParser:
    """The parser of ``python -m lamb.torch_train`` (also under ``torchrun ... -m lamb.torch_train``): the flags
    of ``lamb train`` that the torch backend reads (no ResNet recipe, no JAX device or process flags)."""
    p = argparse.ArgumentParser(prog=prog, description="The BERT recipe in PyTorch with lamb.torch.Lamb, on one "
                                "process or under torchrun (DDP, or FSDP2 with --fsdp); the flags of `lamb train`.",
                                epilog=_EPILOG, formatter_class=_HelpFormatter)
    add_arguments(p, backend="torch")
    return p


def add_arguments(p: argparse.ArgumentParser, backend: str = "any") -> None:
    """The flags of ``lamb train`` on ``p``; ``backend="torch"``: only those the torch backend reads."""
    from lamb.experiments.recipes import DATASETS, LR_RULES, OPTIMIZERS, RECIPES, SCHEDULES

    torch_only = backend == "torch"
    p.add_argument("recipe", choices=("bert",) if torch_only else RECIPES, help="which recipe")
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="the scale of the defaults (default: $LAMB_PROFILE or cpu)")
    p.add_argument("--config", metavar="FILE", help="TOML file of configuration entries (keys as the flags, "
                   "with underscores), applied over the profile's defaults and under the flags")
    g = p.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--batch-size", type=int, help="the global batch (all devices and processes together)")
    g.add_argument("--accumulation-steps", type=int, help="micro-batches per optimizer step")
    g.add_argument("--steps", type=int, help="optimizer steps in all (BERT: both phases)")
    g.add_argument("--lr", type=float, help="peak learning rate at --base-batch-size")
    g.add_argument("--base-batch-size", type=int, help="the batch at which --lr was tuned")
    g.add_argument("--lr-rule", choices=LR_RULES, help="how the peak rate grows with the batch")
    g.add_argument("--schedule", choices=SCHEDULES, help="warmup then linear decay (poly) or Goyal's steps")
    g.add_argument("--warmup-fraction", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float, help="LARS's and SGD's momentum")
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("bert recipe")
    g.add_argument("--long-fraction", type=float, help="fraction of the steps at the long sequence length")
    g.add_argument("--long-batch-size", type=int, help="phase-2 batch (0: as --batch-size)")
    g.add_argument("--seq-len", type=int, help="phase-1 sequence length")
    g.add_argument("--long-seq-len", type=int, help="phase-2 sequence length")
    g.add_argument("--vocab-size", type=int)
    g.add_argument("--hidden", type=int)
    g.add_argument("--layers", type=int)
    g.add_argument("--heads", type=int)
    if not torch_only:
        g = p.add_argument_group("resnet recipe")
        g.add_argument("--dataset", choices=DATASETS)
        g.add_argument("--data-dir", help="folder of the downloaded CIFAR files")
        g.add_argument("--num-samples", type=int, help="MNIST-1D examples generated")
        g.add_argument("--widths", type=_positive_int_list, help="channels per stage, e.g. 16,32,64")
    g = p.add_argument_group("evaluation, checkpoints and results")
    g.add_argument("--eval-every", type=int)
    g.add_argument("--eval-batches", type=int)
    g.add_argument("--checkpoint-dir", help="checkpoint here and resume from here")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: at every evaluation)")
    g.add_argument("--stop-after", type=int, metavar="STEPS",
                   help="stop (checkpointed) after this many steps; rerun to resume")
    g.add_argument("--results-dir", help="result files and log.jsonl (default: results/<profile>/"
                   f"{'train_bert_torch' if torch_only else 'train_<recipe>, train_bert_torch with --backend torch'})")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("devices and processes")
    if torch_only:
        g.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP2 (fully_shard); default DDP "
                       "under torchrun")
        p.set_defaults(backend="torch")
        return
    g.add_argument("--backend", choices=("jax", "torch"), default="jax",
                   help="torch: the BERT recipe in PyTorch with lamb.torch (under torchrun: DDP or FSDP2)")
    g.add_argument("--fsdp", action="store_true", help="torch backend: shard parameters with FSDP2 (fully_shard)")
    g.add_argument("--devices", type=int, help="use the first N devices (default: all of every process)")
    g.add_argument("--cpu-devices", type=int, help="simulate N devices on the CPU (JAX, before it starts)")
    g.add_argument("--distributed", choices=("auto", "yes", "no"), default="auto",
                   help="start JAX's multi-process runtime: auto (when flags, JAX_COORDINATOR_ADDRESS, SLURM or "
                        "Open MPI ask for several processes), yes (always: TPU pods), no")
    g.add_argument("--coordinator-address", help="host:port of process 0")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)
    g.add_argument("--local-device-ids", type=_positive_int_list, help="this process's devices, e.g. 0,1")
    return p


def config_from_args(args) -> dict:
    """The checked configuration that ``args`` ask for."""
    from lamb.experiments import recipes

    overrides = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k, None) is not None}
    return recipes.make_config(args.recipe, args.profile, args.config, **overrides)


def _start_jax(args) -> dict | None:
    """Simulated CPU devices and the multi-process runtime, before any JAX computation."""
    import jax

    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            raise ValueError(f"--cpu-devices must be >= 1, got {args.cpu_devices}")
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from lamb.experiments import distributed

    wanted = args.distributed == "yes" or (args.distributed == "auto" and distributed.wants_initialize(
        args.coordinator_address, args.num_processes, args.process_id))
    if not wanted:
        if any(v is not None for v in (args.coordinator_address, args.num_processes, args.process_id)):
            raise ValueError("--coordinator-address/--num-processes/--process-id given with --distributed no")
        return None
    return distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                                  args.local_device_ids)


def main(args) -> int:
    """Run ``python -m lamb train`` with parsed ``args``; return the exit status."""
    if args.backend == "torch":
        from lamb import torch_train

        return torch_train.main_from_args(args)
    try:
        place = _start_jax(args)
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"lamb train: error: {e}", file=sys.stderr)
        return 2
    import jax

    from lamb.experiments import recipes

    writer = jax.process_index() == 0
    results_dir = args.results_dir or os.path.join("results", cfg["profile"], f"train_{cfg['recipe']}")
    if writer:
        where = (f"{place['process_count']} processes, {place['global_devices']} devices" if place
                 else f"{jax.device_count()} x {jax.devices()[0].device_kind}")
        print(f"lamb train {cfg['recipe']}: profile {cfg['profile']}, {cfg['optimizer']}, global batch "
              f"{cfg['batch_size']}, {cfg['steps']} steps, on {where}", flush=True)
    try:
        result = recipes.run(cfg, checkpoint_dir=args.checkpoint_dir, results_dir=results_dir,
                             progress=not args.no_progress, devices=args.devices, stop_after=args.stop_after)
    except (ValueError, FileNotFoundError) as e:
        print(f"lamb train: error: {e}", file=sys.stderr)
        return 2
    if writer:
        if result.stopped_at is not None:
            print(f"stopped after step {result.stopped_at}; rerun the same command to resume from "
                  f"{args.checkpoint_dir or '(no --checkpoint-dir: nothing saved)'}")
        else:
            last = list(result.phases.values())[-1]
            print(f"done: test loss {last.final('test_loss'):.4f}, test accuracy {last.final('test_accuracy'):.4f}"
                  f"; results in {results_dir}")
    return 0


def run_in_process(argv: list[str], *, devices=None, progress=False, results_dir=None, checkpoint_dir=None):
    """Run ``python -m lamb train ARGV`` inside this process (a notebook's) and return its
    :class:`lamb.experiments.recipes.RecipeResult` (final parameters and per-phase histories).

    JAX has started already, so the flags that act before it starts (``--cpu-devices``, the multi-process
    ones) are refused; ``devices`` (a list of devices, or a count) replaces ``--devices``."""
    import shlex

    from lamb.experiments import recipes

    if isinstance(argv, str):
        argv = shlex.split(argv)
    parser = argparse.ArgumentParser(prog="python -m lamb")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *argv])
    if args.cpu_devices is not None or args.coordinator_address or args.num_processes or args.distributed == "yes":
        raise ValueError("run_in_process: --cpu-devices and the multi-process flags act before JAX starts; "
                         "run the command in a fresh process instead")
    if args.backend != "jax":
        raise ValueError("run_in_process runs the jax backend; use lamb.torch_train.train for torch")
    cfg = config_from_args(args)
    return recipes.run(cfg, checkpoint_dir=checkpoint_dir or args.checkpoint_dir,
                       results_dir=results_dir or args.results_dir, progress=progress,
                       devices=args.devices if devices is None else devices, stop_after=args.stop_after)
