"""notebooks/bert_large_batch.ipynb: its plan (:mod:`lamb.plan`), stage by stage.

The notebook trains every run through :func:`lamb.experiments.bert_large_batch.bank`; a stage here is one group
of runs of one shape (batch, sequence length, steps), counted as ``runs`` separate runs: the bank trains them
in one vectorized program, which costs the same FLOPs.
"""

from __future__ import annotations

from collections.abc import Mapping

from lamb.plan import Stage

NOTEBOOK = "bert_large_batch"


def plan(settings: Mapping) -> list[Stage]:
    """The bank calls of the notebook at ``settings``, cell by cell."""
    from lamb.experiments import bert_large_batch as blb
    from lamb.experiments import models, text

    short, long = (int(v) for v in settings["seq_lens"])
    B0, E = int(settings["base_batch"]), int(settings["total_examples"])
    micro = int(settings["micro_batch"]) or None
    seeds = len(settings["seeds"])
    evaluations = int(settings["evaluations"]) + 1
    eval_examples = int(settings["eval_sequences"]) or 1024
    vocab = int(settings["vocab_size"])

    def bert():
        model = models.bert(vocab, long, hidden=int(settings["hidden"]), layers=int(settings["layers"]),
                            heads=int(settings["heads"]))
        return blb.mixed_precision(model) if settings["mixed_precision"] else model

    def stage(name, batch, steps, runs, seq_len, micro_batch=micro):
        acc = batch // micro_batch if micro_batch else 1
        return Stage(name, bert, batch, steps, example_shape=(seq_len,), example_dtype="int32",
                     label_shape=(seq_len,), tokens_per_example=seq_len, runs=runs, accumulation_steps=acc,
                     evaluations=evaluations, eval_examples=eval_examples,
                     eval_batch_size=int(settings["eval_batch_size"]))

    grid = len(settings["lr_grid_lamb"]) + len(settings["lr_grid_adamw"])
    stages = [stage(f"tuning at B0={B0}", B0, E // B0, grid, short)]
    for b in blb.batch_ladder(B0, int(settings["rungs"])):
        stages.append(stage(f"ladder B={b}", b, E // b, 2 * seeds, short))
    for b in blb.batch_ladder(B0, int(settings["rungs"]))[-int(settings["retune_rungs"]):]:
        stages.append(stage(f"AdamW retuned, B={b}", b, E // b, len(settings["retune_multipliers"]), short))
    Bt, ratio = int(settings["two_phase_batch"]), long // short
    n1c, n2 = text.mixed_batch_steps(E, Bt, Bt, settings["long_fraction"])
    n1m, _ = text.mixed_batch_steps(E, 2 * Bt, Bt, settings["long_fraction"])
    micro_long = max(1, micro // ratio) if micro else None
    stages += [stage(f"two-phase, one batch: phase 1 at {Bt}", Bt, n1c, 2 * seeds, short),
               stage(f"two-phase, mixed: phase 1 at {2 * Bt}", 2 * Bt, n1m, 2 * seeds, short),
               stage(f"two-phase, both: phase 2 at {Bt} x {long}", Bt, n2, 4 * seeds, long, micro_long)]
    return stages
