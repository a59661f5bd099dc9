r"""The BERT recipe in PyTorch with :class:`lamb.torch.Lamb`, on one process or under ``torchrun``.

::

    python -m lamb.torch_train bert --profile cpu                       # one process
    torchrun --nproc-per-node 2 -m lamb.torch_train bert --profile cpu  # DDP over 2 processes
    torchrun --nproc-per-node 8 -m lamb.torch_train bert --fsdp         # FSDP2: parameters sharded
    python -m lamb train bert --backend torch ...                       # the same, through `lamb train`

The flags and the configuration are those of ``python -m lamb train`` (:mod:`lamb.training_cli`); the model is
:class:`TorchBert`, the JAX stand-in's architecture (post-LN encoder, BERT's masked-LM head with tied
embeddings) written with ``torch.nn``; the data, the two sequence-length phases and the schedule are the JAX
recipe's (:mod:`lamb.experiments.recipes`).

Data parallelism
================
Every rank draws the same global batch (a function of the seed and the step) and keeps its contiguous
``1 / world_size`` of the rows. The loss of a rank is its *sum* over masked tokens divided by the global
batch's count of masked tokens and multiplied by ``world_size``, so that the gradient average that DDP and FSDP2
perform gives exactly the gradient of the global mean: the same optimizer step as one process on the whole
batch, to float rounding. Gradient accumulation runs the micro-batches without gradient synchronisation
(``no_sync`` / ``set_requires_gradient_sync(False)``) and synchronises on the last one.

- **DDP**: parameters replicated; one all-reduce of the gradient per step (bucketed, overlapped with the
  backward pass). :class:`lamb.torch.Lamb` then computes each layer's norms locally: every rank holds whole
  layers, so nothing else crosses the network.
- **FSDP2** (``--fsdp``, ``torch.distributed.fsdp.fully_shard`` on each encoder layer and on the model):
  parameters, gradients and optimizer state are sharded (DTensor); the gradient is reduce-scattered. The trust
  ratio needs the norms of the *whole* layer, :math:`\|x^{(i)}\|` and :math:`\|u^{(i)}\|`: :class:`Lamb`
  computes both from the local shards and all-reduces them (two scalars per layer), which is the only extra
  communication LAMB adds over AdamW.

Checkpoints and resume
======================
``--checkpoint-dir DIR`` saves every ``checkpoint_every`` steps (0: every ``eval_every``), at the end of each
phase and at ``--stop-after``; a rerun with the same directory resumes from the latest checkpoint, and refuses
one written for another configuration (``DIR/recipe.json``, the JAX backend's rule, plus ``backend``). A
checkpoint is ``DIR/torch/step_<N>/``: the model and the optimizer state through
``torch.distributed.checkpoint`` (``get_state_dict``/``set_state_dict``, so FSDP2's shards are saved by their
owners and the checkpoint loads at any process count, with or without FSDP2), and ``meta.json`` (the step,
the phases done, the scheduler and the history so far), written last by rank 0, so a checkpoint without it is
incomplete and ignored. The data position is the step: every batch is a function of the seed and the step
(``start_step``), and the model has no dropout, so a resumed run takes the steps an uninterrupted run takes.
Every rank must see ``DIR`` (one machine, or a shared file system), as ``torch.distributed.checkpoint``
requires.

Not supported with this backend (an error says so): the ResNet recipe.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["TorchBert", "train", "main", "main_from_args"]

IGNORE_INDEX = -100


def _torch():
    import torch

    return torch


def TorchBert(vocab_size: int, max_len: int, hidden: int, layers: int, heads: int, mlp_dim: int | None = None):
    """The BERT stand-in as a ``torch.nn.Module`` (the architecture of :func:`lamb.experiments.models.bert`:
    learned positions, post-LN blocks with separate query/key/value/output projections, GELU MLP, MLM head
    with the token embedding tied to the output projection). ``forward(input_ids, labels)`` returns the
    *sum* of the cross-entropy over the labelled positions and their count."""
    import torch
    from torch import nn

    mlp_dim = 4 * hidden if mlp_dim is None else mlp_dim
    head_dim = hidden // heads

    def linear(a, b):
        layer = nn.Linear(a, b)
        nn.init.trunc_normal_(layer.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(layer.bias)
        return layer

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value, self.output = (linear(hidden, hidden) for _ in range(4))
            self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.dense_in, self.dense_out = linear(hidden, mlp_dim), linear(mlp_dim, hidden)
            self.mlp_norm = nn.LayerNorm(hidden, eps=1e-12)

        def forward(self, x, key_mask):
            b, n, _ = x.shape
            q, k, v = (f(x).view(b, n, heads, head_dim).transpose(1, 2) for f in (self.query, self.key, self.value))
            a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
            x = self.attention_norm(x + self.output(a.transpose(1, 2).reshape(b, n, hidden)))
            return self.mlp_norm(x + self.dense_out(nn.functional.gelu(self.dense_in(x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Embedding(vocab_size, hidden)
            self.position = nn.Embedding(max_len, hidden)
            for e in (self.token, self.position):
                nn.init.trunc_normal_(e.weight, std=0.02, a=-0.04, b=0.04)
            self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.encoder = nn.ModuleList(Block() for _ in range(layers))
            self.transform = linear(hidden, hidden)
            self.head_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.output_bias = nn.Parameter(torch.zeros(vocab_size))

        def forward(self, input_ids, labels):
            n = input_ids.shape[1]
            key_mask = input_ids != 0
            x = self.embedding_norm(self.token(input_ids) + self.position.weight[:n])
            for block in self.encoder:
                x = block(x, key_mask)
            picked = labels != IGNORE_INDEX  # the output projection only at the masked positions
            h = self.head_norm(nn.functional.gelu(self.transform(x[picked])))
            logits = h @ self.token.weight.T + self.output_bias
            loss = nn.functional.cross_entropy(logits, labels[picked], reduction="sum")
            return loss, picked.sum()

    return Bert()


def _optimizer(model, cfg: dict):
    import torch

    from lamb.torch import Lamb, Lars, param_groups

    name, wd = cfg["optimizer"], cfg["weight_decay"]
    groups = param_groups(model, weight_decay=wd)
    if name in ("lamb", "nlamb", "nnlamb"):
        return Lamb(groups, lr=1.0, weight_decay=wd, nesterov={"lamb": None, "nlamb": "n", "nnlamb": "nn"}[name])
    if name == "lars":
        return Lars(groups, lr=1.0, momentum=cfg["momentum"], weight_decay=wd)
    for g in groups:
        g.pop("layer_adaptation", None)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=1.0, weight_decay=wd)
    # SGD's weight decay is L2 added to the gradient (before the momentum), unlike the JAX recipe's decoupled
    # decay; the two differ by the momentum's filtering of the decay term.
    return torch.optim.SGD(groups, lr=1.0, momentum=cfg["momentum"], nesterov=name == "nesterov")


def _full(p):
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def _identity(cfg: dict, dry: bool) -> dict:
    """What a torch checkpoint must match: the JAX recipe's identity (the configuration but where checkpoints
    go), the backend, and whether it is a dry run (a dry run's checkpoint is not a real run's)."""
    from lamb.experiments import recipes

    return {"backend": "torch", **recipes._identity(cfg), "dry_run": bool(dry)}


def _write_json_atomically(path: Path, value) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _check_checkpoint_dir(ckpt: Path, identity: dict, rank: int) -> None:
    """Refuse a checkpoint directory of another configuration; record this one's (rank 0) when new."""
    saved = ckpt / "recipe.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        if before != identity:
            diff = {k: (before.get(k), identity.get(k)) for k in sorted(set(before) | set(identity))
                    if before.get(k) != identity.get(k)}
            raise ValueError(f"the checkpoint in {ckpt} belongs to another configuration; differing entries "
                             f"(checkpoint, now): {diff}. Use another --checkpoint-dir, or delete it to start "
                             "afresh")
    elif rank == 0:
        ckpt.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(saved, identity)


def _latest_checkpoint(ckpt: Path) -> Path | None:
    """The newest complete checkpoint (one whose ``meta.json`` rank 0 wrote) under ``ckpt/torch``."""
    done = sorted((ckpt / "torch").glob("step_*/meta.json"), key=lambda m: int(m.parent.name.split("_")[1]))
    return done[-1].parent if done else None


def _save_checkpoint(ckpt: Path, model, optimizer, meta: dict, rank: int) -> Path:
    """Save the model and optimizer (every rank its part, torch.distributed.checkpoint), then ``meta``
    (rank 0, last); drop the older checkpoints."""
    import shutil

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    where = ckpt / "torch" / f"step_{meta['step']:08d}"
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process: torch warns that it assumes so, which is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(where),
                 no_dist=not dist.is_initialized())
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        _write_json_atomically(where / "meta.json", meta)
        for old in (ckpt / "torch").glob("step_*"):
            if old != where:
                shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return where


def _load_checkpoint(where: Path, model, optimizer) -> dict:
    """Load a checkpoint of :func:`_save_checkpoint` into ``model`` and ``optimizer`` (at any process count);
    return its ``meta``."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # get_state_dict gives the (empty) state its saved structure: torch initialises the optimizer's state by a
    # step with zero gradients and a zero rate, which the loaded values then replace
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():  # one process: torch warns that it assumes so, which is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(where), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return json.loads((where / "meta.json").read_text())


def train(cfg: dict, *, fsdp: bool = False, progress: bool = True, results_dir=None, checkpoint_dir=None,
          stop_after: int | None = None) -> dict:
    """Train the BERT recipe ``cfg`` in PyTorch on this process's share of every global batch; return
    ``{"params": {name: array}, "history": {...}, "environment": {...}, "config": cfg, "stopped_at": N or
    None}`` (the whole parameters on every rank). Starts the process group from torchrun's environment
    (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...) when ``WORLD_SIZE > 1``: NCCL on GPUs, gloo on CPUs.

    ``checkpoint_dir``: checkpoint there and resume from there (see the module's docstring); ``stop_after``:
    stop, checkpointed, once this many optimizer steps of the whole run are done (``stopped_at`` is then the
    step; the result files are not written)."""
    import torch
    import torch.distributed as dist

    from lamb import profiles
    from lamb.experiments import recipes, text

    cfg = recipes.check_config(dict(cfg))
    if cfg["recipe"] != "bert":
        raise ValueError(f"the torch backend trains the bert recipe only, got {cfg['recipe']!r}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or stop_after < 1):
        raise ValueError(f"stop_after must be an integer >= 1, got {stop_after!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started_here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started_here = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dry = profiles.dry_run()
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
    out_dir = None if results_dir is None else Path(results_dir)
    log_path = None
    try:
        if ckpt is not None:
            _check_checkpoint_dir(ckpt, _identity(cfg, dry), rank)
        if out_dir is not None and rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            log_path = out_dir / "log.jsonl"

        def log(record):
            if log_path is not None:
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")

        log({"event": "start", "time": time.time(), "backend": "torch", "dry_run": dry, "world_size": world,
             "fsdp": bool(fsdp and world > 1), "config": cfg})
        torch.manual_seed(cfg["seed"])
        model = TorchBert(cfg["vocab_size"], cfg["long_seq_len"], cfg["hidden"], cfg["layers"], cfg["heads"]).to(device)
        if world > 1 and fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(device.type, (world,))
            for block in model.encoder:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            wrapped = model
        elif world > 1:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
        else:
            wrapped = model
        optimizer = _optimizer(model, cfg)
        schedule = recipes.learning_rate_schedule(cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda count: float(schedule(count)))
        A = cfg["accumulation_steps"]
        history = {"step": [], "loss": [], "learning_rate": [], "eval_step": [], "test_loss": []}
        global_step, phases_done, resumed_from = 0, 0, None
        latest = None if ckpt is None else _latest_checkpoint(ckpt)
        if latest is not None:
            meta = _load_checkpoint(latest, model, optimizer)
            scheduler.load_state_dict(meta["scheduler"])
            global_step, phases_done, history = meta["step"], meta["phases_done"], meta["history"]
            resumed_from = global_step
            log({"event": "resumed", "from_step": global_step, "checkpoint": str(latest)})
        every = cfg["checkpoint_every"] or cfg["eval_every"]

        def save():
            if ckpt is None:
                return
            meta = {"step": global_step, "phases_done": phases_done, "scheduler": scheduler.state_dict(),
                    "history": history}
            where = _save_checkpoint(ckpt, model, optimizer, meta, rank)
            log({"event": "checkpoint", "step": global_step, "path": str(where)})

        def evaluate(mlm, micro_batch, phase_name):
            """The loss on ``eval_batches`` validation batches at this phase's sequence length, all ranks."""
            eval_sum, eval_count = torch.zeros((), device=device), torch.zeros((), device=device)
            with torch.no_grad():
                for i, b in enumerate(mlm.batches(max(world, micro_batch), seed=12345, split="validation")):
                    if i >= cfg["eval_batches"]:
                        break
                    n = len(b["input_ids"])
                    r = slice(rank * n // world, (rank + 1) * n // world)
                    s, c = wrapped(torch.as_tensor(b["input_ids"][r], dtype=torch.long, device=device),
                                   torch.as_tensor(b["labels"][r], dtype=torch.long, device=device))
                    eval_sum += s
                    eval_count += c
            if dist.is_initialized():
                dist.all_reduce(eval_sum)
                dist.all_reduce(eval_count)
            history["eval_step"].append(global_step)
            history["test_loss"].append(float(eval_sum) / max(float(eval_count), 1.0))
            log({"phase": phase_name, "eval_step": global_step, "test_loss": history["test_loss"][-1]})

        t0 = time.perf_counter()
        from tqdm import tqdm

        phases = recipes._phases(cfg)
        run_steps = [min(p["steps"], profiles.DRY_RUN_STEPS) if dry else p["steps"] for p in phases]
        bar = tqdm(total=sum(run_steps), initial=global_step, disable=not progress or rank != 0,
                   desc=f"torch bert x{world}", unit="step")
        # a rerun with a --stop-after that the checkpoint has reached trains nothing more
        stopped_at = global_step if stop_after is not None and global_step >= stop_after else None
        for index, (phase, steps) in enumerate(zip(phases, run_steps)):
            if stopped_at is not None:
                break
            phase_start = sum(run_steps[:index])
            if index < phases_done:
                continue
            mlm = text.load_mlm(seq_len=phase["seq_len"], vocab_size=cfg["vocab_size"])
            B = phase["batch_size"]
            if B % (world * A):
                raise ValueError(f"batch {B} must be divisible by world_size * accumulation_steps = {world} * {A}")
            rows = slice(rank * B // world, (rank + 1) * B // world)
            first = global_step - phase_start  # steps of this phase already done (a resumed run)
            stream = mlm.stream(B, seed=cfg["seed"], start_step=first)
            for step in range(first + 1, steps + 1):
                batch = next(stream)
                count = int((batch["labels"] != IGNORE_INDEX).sum())  # of the global batch: no communication
                ids = torch.as_tensor(batch["input_ids"][rows], dtype=torch.long, device=device)
                labels = torch.as_tensor(batch["labels"][rows], dtype=torch.long, device=device)
                optimizer.zero_grad(set_to_none=True)
                loss_sum = torch.zeros((), device=device)
                for a in range(A):
                    last = a == A - 1
                    if world > 1 and fsdp:
                        model.set_requires_gradient_sync(last)
                    ctx = wrapped.no_sync() if (world > 1 and not fsdp and not last) else _nullcontext()
                    with ctx:
                        s, _ = wrapped(ids[a::A], labels[a::A])
                        (s * (world / max(count, 1))).backward()
                    loss_sum += s.detach()
                history["learning_rate"].append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
                global_step += 1
                if dist.is_initialized():
                    dist.all_reduce(loss_sum)  # for the log only
                history["step"].append(global_step)
                history["loss"].append(float(loss_sum) / max(count, 1))
                log({"phase": phase["name"], "step": global_step, "loss": history["loss"][-1],
                     "learning_rate": history["learning_rate"][-1]})
                bar.update(1)
                bar.set_postfix(loss=f"{history['loss'][-1]:.4f}", refresh=False)
                if step % cfg["eval_every"] == 0 or step == steps:
                    evaluate(mlm, B // A, phase["name"])
                if stop_after is not None and global_step >= stop_after:
                    stopped_at = global_step
                    break
                if step % every == 0 and step < steps:
                    save()
            if stopped_at is not None:
                break
            if not history["eval_step"] or history["eval_step"][-1] != global_step:
                evaluate(mlm, B // A, phase["name"])  # every phase ends with an evaluation
            phases_done = index + 1
            save()
        if stopped_at is not None:
            if stopped_at != resumed_from:
                save()
            log({"event": "stopped", "step": stopped_at, "time": time.time()})
        bar.close()
        wall = time.perf_counter() - t0
        params = {name: _full(p).detach().cpu().numpy() for name, p in model.named_parameters()}
        env = {"backend": "torch", "torch": torch.__version__, "device": str(device), "world_size": world,
               "fsdp": bool(fsdp and world > 1), "wall_time_s": wall, "python": sys.version.split()[0],
               "dry_run": dry, "resumed_from": resumed_from}
        out = {"params": params, "history": history, "environment": env, "config": cfg, "stopped_at": stopped_at}
        if stopped_at is None and out_dir is not None and rank == 0:
            np.savez(out_dir / "torch_params.npz", **params)
            (out_dir / "torch.json").write_text(json.dumps({"config": cfg, "environment": env, "history": history},
                                                           indent=1))
            log({"event": "done", "time": time.time(), "final_test_loss": history["test_loss"][-1]})
        return out
    finally:
        if started_here:
            dist.destroy_process_group()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main_from_args(args) -> int:
    """Run the torch backend with the parsed flags of ``python -m lamb train``."""
    from lamb import training_cli

    if args.recipe != "bert":
        print(f"lamb train: error: the torch backend trains the bert recipe only, got {args.recipe!r}",
              file=sys.stderr)
        return 2
    try:
        cfg = training_cli.config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"lamb train: error: {e}", file=sys.stderr)
        return 2
    results_dir = args.results_dir or os.path.join("results", cfg["profile"], "train_bert_torch")
    try:
        out = train(cfg, fsdp=args.fsdp, progress=not args.no_progress, results_dir=results_dir,
                    checkpoint_dir=args.checkpoint_dir, stop_after=args.stop_after)
    except ValueError as e:
        print(f"lamb train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if out["stopped_at"] is not None:
        print(f"stopped after step {out['stopped_at']}; rerun the same command to resume from "
              f"{args.checkpoint_dir or '(no --checkpoint-dir: nothing saved)'}")
    else:
        env = out["environment"]
        print(f"done: torch, {env['world_size']} process(es){' FSDP2' if env['fsdp'] else ''}, final "
              f"validation loss {out['history']['test_loss'][-1]:.4f}; results in {results_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lamb.torch_train bert ...`` (the flags of ``python -m lamb train``, backend torch)."""
    from lamb import training_cli

    args = training_cli.torch_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return main_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
