"""notebooks/training_harness.ipynb: its plan, and its main figures drawn from result data.

The notebook writes, under :func:`lamb.notebook.results_dir`, one :func:`lamb.experiments.train.fit` result
file per run of its figures: ``LAMB.json`` and ``AdamW.json`` (the optimizer comparison), ``scaling/B<b>.json``
(steps to target against batch size), ``resnet.json``, ``bert.json``, and ``sweep.json`` (the learning-rate
sweep's scores). :func:`full_scale_figures` redraws the figures from an export of those files.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lamb.plan import Stage

NOTEBOOK = "training_harness"


def _evaluations(steps: int, eval_every: int | None) -> int:
    """How many times ``train.fit`` evaluates: at step 0, every ``eval_every`` steps, and at the last step."""
    if not eval_every:
        return 2
    return 1 + steps // eval_every + (1 if steps % eval_every else 0)


def plan(settings: Mapping) -> list[Stage]:
    """The ``train.fit`` calls of the notebook at ``settings``, cell by cell."""
    from lamb.experiments import models

    n = int(settings["num_samples"])
    n_train, n_test = int(n * 0.8), n - int(n * 0.8)
    B, steps = int(settings["batch_size"]), int(settings["steps"])
    mlp = lambda: models.mlp(40, settings["hidden"], 10)  # noqa: E731  MNIST-1D: 40 samples, 10 digits
    ev = settings["eval_every"]
    common = dict(example_shape=(40,), eval_examples=n_test, eval_batch_size=min(B, 1024))
    every, interrupt = int(settings["checkpoint_every"]), int(settings["interrupt_at"])
    resumed_at = (min(interrupt, steps) // every) * every  # the last checkpoint before the tab closes
    A, check = int(settings["accumulation_steps"]), int(settings["accumulation_check_steps"])
    T = int(settings["tuning_steps"])
    stages = [
        Stage("LAMB and AdamW", mlp, B, steps, runs=2, evaluations=_evaluations(steps, ev), **common),
        Stage("checkpoint: interrupted + resumed", mlp, B, min(interrupt, steps) + steps - resumed_at,
              evaluations=_evaluations(steps, ev), **common),
        Stage("accumulation check: whole batch", mlp, B, check, evaluations=2, **common),
        Stage(f"accumulation check: {A} micro-batches", mlp, B, check, accumulation_steps=A, evaluations=2,
              **common),
        Stage("learning-rate sweep", mlp, B, T, runs=len(settings["lr_grid"]), evaluations=_evaluations(T, ev),
              **common),
    ]
    S, sev = int(settings["scaling_steps"]), int(settings["scaling_eval_every"])
    for b in settings["scaling_batch_sizes"]:
        if b <= n_train:
            stages.append(Stage(f"steps to target, B={b}", mlp, int(b), S, evaluations=_evaluations(S, sev),
                                **{**common, "eval_batch_size": min(int(b), 1024)}))
    rs, rb = int(settings["resnet_steps"]), int(settings["resnet_batch_size"])
    stages.append(Stage("ResNet", lambda: models.resnet((40,), 10, widths=tuple(settings["resnet_widths"])), rb, rs,
                        evaluations=_evaluations(rs, max(1, rs // 4)),
                        **{**common, "eval_batch_size": min(rb, 1024)}))
    L, bs, bsteps = int(settings["bert_seq_len"]), int(settings["bert_batch_size"]), int(settings["bert_steps"])
    stages.append(Stage("BERT (masked LM)", lambda: models.bert(
        int(settings["bert_vocab_size"]), L, hidden=int(settings["bert_hidden"]), layers=int(settings["bert_layers"]),
        heads=int(settings["bert_heads"])), bs, bsteps, example_shape=(L,), example_dtype="int32", label_shape=(L,),
        tokens_per_example=L, evaluations=_evaluations(bsteps, max(1, bsteps // 4)), eval_examples=4 * bs,
        eval_batch_size=bs))
    return stages


# -------------------------------------------------------------------------------------------------------------
# Figures from result data

def optimizer_figure(runs: Mapping, batch_size: int, *, smooth: int | None = 10):
    """Training loss, test accuracy and LAMB's per-layer trust ratios of ``runs`` (``{name: result or
    history}``, with a ``"LAMB"`` entry)."""
    import matplotlib.pyplot as plt

    from lamb.experiments import plotting

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    loss_title = f"training loss ({smooth}-point mean)" if smooth and smooth > 1 else "training loss"
    plotting.curves(runs, "loss", ax=axes[0], smooth=smooth, log_y=True, title=loss_title)
    plotting.curves(runs, "test_accuracy", ax=axes[1], title=f"test accuracy, batch {batch_size}")
    plotting.trust_ratios(runs["LAMB"], ax=axes[2], title="LAMB: trust ratio per layer")
    return fig


def scaling_figure(scaling_runs: Mapping, target: float):
    """Test accuracy per batch size and the steps to ``target`` against batch size; returns
    ``(figure, curve)`` with ``curve`` from :func:`lamb.experiments.metrics.scaling_curve`."""
    import matplotlib.pyplot as plt

    from lamb.experiments import metrics, plotting

    curve = metrics.scaling_curve(scaling_runs, "test_accuracy", target)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    plotting.curves({f"B={b}": r for b, r in sorted(scaling_runs.items())}, "test_accuracy", ax=axes[0],
                    title="LAMB, square-root scaled rate")
    axes[0].axhline(target, color="0.5", lw=0.8)
    plotting.steps_to_target({"LAMB": curve}, ax=axes[1], target_label=f"{target:.0%} test accuracy")
    return fig, curve


def _histories(results: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, entry in results.items():
        if key.startswith(prefix) and isinstance(entry, Mapping) and "history" in entry:
            h = entry["history"]
            out[key[len(prefix):]] = {k: ({n: np.asarray(v) for n, v in val.items()} if isinstance(val, Mapping)
                                          else np.asarray(val)) for k, val in h.items() if k != "compacted"}
    return out


def full_scale_figures(exported: Mapping) -> list:
    """The notebook's two main figures drawn from an export (:mod:`lamb.exports`) of its result files."""
    settings, results = exported["settings"], exported["results"]
    runs = _histories(results)
    optimizers = {name: runs[name] for name in ("LAMB", "AdamW") if name in runs}
    figures = []
    if "LAMB" in optimizers:
        figures.append(optimizer_figure(optimizers, int(settings["batch_size"]), smooth=None))
    scaling = {int(k.removeprefix("B")): h for k, h in _histories(results, "scaling/").items()}
    if scaling:
        figures.append(scaling_figure(scaling, float(settings["target_accuracy"]))[0])
    if not figures:
        raise ValueError(f"the export of {exported.get('notebook')} holds none of the runs its figures draw "
                         f"(LAMB, AdamW, scaling/B<b>); it holds {sorted(results)}")
    return figures
