"""notebooks/batch_size_scaling.ipynb: its plan.

The notebook runs :func:`lamb.experiments.scaling.sweep_bank` once per workload: at every batch size of the
ladder, every optimizer x grid rate with seed 0 (the tuning run), then every optimizer's tuned rate with the
other seeds. Both runs stop early at the target, so the plan -- every trial trained for its whole budget -- is
an upper bound on the work.
"""

from __future__ import annotations

from collections.abc import Mapping

from lamb.plan import Stage

NOTEBOOK = "batch_size_scaling"


def plan(settings: Mapping) -> list[Stage]:
    """One stage per workload and batch size: ``optimizers x (grid_points + seeds - 1)`` trials (the image
    workload trains ``optimizers``, the BERT stand-in ``bert_optimizers``) of the budget
    of :func:`lamb.experiments.scaling.budget`, with gradient accumulation over the workload's micro-batch."""
    from lamb.experiments import models, scaling

    per_optimizer = int(settings["grid_points"]) + int(settings["seeds"]) - 1
    stages = []
    n = int(settings["image_num_samples"])
    if settings["image_model"] == "resnet":
        image = lambda: models.resnet((40,), 10, widths=tuple(settings["image_resnet_widths"]))  # noqa: E731
    else:
        image = lambda: models.mlp(40, settings["image_hidden"], 10)  # noqa: E731  MNIST-1D: 40 samples
    L = int(settings["bert_seq_len"])
    bert = lambda: models.bert(int(settings["bert_vocab_size"]), L, hidden=int(settings["bert_hidden"]),  # noqa: E731
                               layers=int(settings["bert_layers"]), heads=int(settings["bert_heads"]))
    for prefix, model, shape, extra, eval_examples in (
            ("image", image, (40,), {}, min(int(settings["image_eval_examples"]), n - int(0.8 * n))),
            ("bert", bert, (L,), dict(example_dtype="int32", label_shape=(L,), tokens_per_example=L),
             int(settings["bert_eval_sequences"]))):
        micro = int(settings[f"{prefix}_micro_batch"])
        runs = per_optimizer * len(settings["bert_optimizers" if prefix == "bert" else "optimizers"])
        for b in settings[f"{prefix}_batch_sizes"]:
            b = int(b)
            steps, every = scaling.budget(b, examples=int(settings[f"{prefix}_examples"]),
                                          min_steps=int(settings[f"{prefix}_min_steps"]),
                                          evaluations=int(settings[f"{prefix}_evaluations"]))
            m = min(micro, b)
            stages.append(Stage(f"{prefix}, B={b}", model, b, steps, runs=runs, example_shape=shape,
                                accumulation_steps=b // m, evaluations=-(-steps // every),
                                eval_examples=eval_examples, eval_batch_size=min(1024, eval_examples), **extra))
    return stages
