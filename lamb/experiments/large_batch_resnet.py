r"""Building blocks of the paper's ImageNet experiments at book scale (You et al. 2020, Figures 1, 3, 4, 9-14
and Table 3): the batch as a fraction of the training set, Goyal et al.'s recipe as a schedule shape, the
ResNet's layer groups and exclusion masks, and a *trial bank* that lets one compiled program train many
optimizers.

Why a trial bank. On XLA:CPU one compiled training program of the small ResNet costs about 10-20 s of CPU
time (measured on this project's 2-core machine), whatever the optimizer; a Figure 4 sweep with one program
per optimizer spends most of its budget compiling. :func:`trial_bank` returns one factory
``make_tx(value_fn)`` for :func:`lamb.experiments.vectorized.run_trials` (schedule ``"constant"``): the
runner's per-trial traced scalar is the 1-based row of a table of ``(optimizer, learning rate, weight
decay)``; every optimizer of the table is built, each keeps its own state, and the row's optimizer's update
is the one applied. Under ``jax.vmap`` all branches are computed (a few elementwise passes over the
parameters, small beside the network's forward and backward passes), so every optimizer x rate x seed of a
batch size trains in one program.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from lamb import jax as lj
from lamb.experiments import schedules

__all__ = ["IMAGENET_TRAIN_SIZE", "PAPER_BASE_BATCH", "PAPER_LARGE_BATCH", "PAPER_EPOCHS", "analog_batch",
           "goyal_shape", "layer_group", "adaptation_mask", "OPTIMIZERS", "build_optimizer", "trial_bank"]

#: ILSVRC-2012 training images.
IMAGENET_TRAIN_SIZE = 1_281_167
#: The paper's Figure 4 batch, its Table 3 batch, and the epochs of its ImageNet runs.
PAPER_BASE_BATCH, PAPER_LARGE_BATCH, PAPER_EPOCHS = 512, 16384, 90


def analog_batch(imagenet_batch: int, train_size: int) -> int:
    """The batch that is to ``train_size`` what ``imagenet_batch`` is to ImageNet's training set (at least 1):
    ``round(imagenet_batch * train_size / 1281167)``; 16K is 1.28% of ImageNet."""
    for name, v in (("imagenet_batch", imagenet_batch), ("train_size", train_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return max(1, round(imagenet_batch * train_size / IMAGENET_TRAIN_SIZE))


def goyal_shape(total_steps: int, warmup_epochs: float = 5, epochs: float = PAPER_EPOCHS) -> Callable:
    """Goyal et al.'s recipe as a multiplier of the peak rate: linear warmup over ``warmup_epochs / epochs`` of
    the run, then x0.1 at 30/90, 60/90 and 80/90 of it (:func:`lamb.experiments.schedules.warmup_step_decay`
    with peak 1)."""
    return schedules.warmup_step_decay(1.0, total_steps, warmup_steps=round(total_steps * warmup_epochs / epochs))


def layer_group(name: str, blocks_per_stage: int = 1) -> str:
    """The group of a parameter of :func:`lamb.experiments.models.resnet` for the trust-ratio figures:
    ``"stem conv"``, ``"stage s convs"``, ``"shortcut projections"``, ``"final dense"``, or ``"excluded"``
    for normalization scales and biases and every bias (kept out of weight decay and layer adaptation)."""
    parts = name.split("/")
    if parts[-1] in ("scale", "bias") or any(p.endswith("norm") for p in parts[:-1]):
        return "excluded"
    if parts[0] == "stem":
        return "stem conv"
    if parts[0] == "head":
        return "final dense"
    if parts[0].startswith("block_"):
        if parts[1] == "projection":
            return "shortcut projections"
        return f"stage {int(parts[0].split('_')[1]) // blocks_per_stage} convs"
    raise ValueError(f"{name!r} is not a parameter name of lamb.experiments.models.resnet")


def adaptation_mask(params):
    """True for the kernels (weight decay and trust ratio), False for normalization parameters and biases:
    the authors' ResNet-50 LAMB (no decay on batch norm, no trust ratio where there is no decay)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: layer_group("/".join(str(getattr(k, "key", k)) for k in path)) != "excluded", params)


def _lamb(**kw):
    return lambda lr, wd: lj.lamb(lr, weight_decay=wd, mask=adaptation_mask, layer_adaptation_mask=adaptation_mask,
                                  **kw)


#: ``name -> build(learning_rate, weight_decay)``: optax's Adagrad, Adam, AdamW, momentum SGD (L2 weight decay, as
#: Goyal et al.), Nadam (optax.nadamw), and lamb.jax's LARS (Algorithm 1), LAMB and its variants.
OPTIMIZERS: dict[str, Callable] = {
    "Adagrad": lambda lr, wd: optax.adagrad(lr),
    "Adam": lambda lr, wd: optax.adam(lr),
    "AdamW": lambda lr, wd: optax.adamw(lr, weight_decay=wd, mask=adaptation_mask),
    "momentum": lambda lr, wd: optax.chain(optax.add_decayed_weights(wd, adaptation_mask), optax.sgd(lr, 0.9)),
    "Nadam": lambda lr, wd: optax.nadamw(lr, weight_decay=wd, mask=adaptation_mask),
    "LARS": lambda lr, wd: lj.lars(lr, weight_decay=wd, mask=adaptation_mask, layer_adaptation_mask=adaptation_mask),
    "LAMB": _lamb(),
    "N-LAMB": _lamb(nesterov="n"),
    "NN-LAMB": _lamb(nesterov="nn"),
    "LAMB (L1)": _lamb(norm="l1"),
    "LAMB (L-inf)": _lamb(norm="linf"),
}


def build_optimizer(name: str, learning_rate, weight_decay=0.0) -> optax.GradientTransformation:
    """The optimizer ``name`` of :data:`OPTIMIZERS` (an unknown name is an error listing the known ones)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, weight_decay)


def trial_bank(trials: Sequence[tuple[str, float, float]], shape: Callable | None = None) -> Callable:
    """A factory ``make_tx(value_fn)`` whose ``value_fn(0)`` is a 1-based row of ``trials`` (rows of
    ``(optimizer name, peak learning rate, weight decay)``): the transformation trains with the row's
    optimizer at the rate ``lr * shape(count)`` (``shape`` default constant 1). See the module docstring."""
    trials = [(str(n), float(lr), float(wd)) for n, lr, wd in trials]
    if not trials:
        raise ValueError("trials must hold at least one (optimizer, learning rate, weight decay) row")
    for n, lr, wd in trials:
        if n not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {n!r}; known: {', '.join(OPTIMIZERS)}")
        if not (math.isfinite(lr) and lr > 0) or not (math.isfinite(wd) and wd >= 0):
            raise ValueError(f"row {(n, lr, wd)!r}: the rate must be > 0 and the weight decay >= 0")
    names = list(dict.fromkeys(n for n, _, _ in trials))
    which = jnp.asarray([names.index(n) for n, _, _ in trials], jnp.int32)
    lrs = jnp.asarray([lr for _, lr, _ in trials], jnp.float32)
    wds = jnp.asarray([wd for _, _, wd in trials], jnp.float32)
    shape = shape or (lambda count: 1.0)

    def make_tx(value_fn) -> optax.GradientTransformation:
        row = jnp.clip(jnp.round(value_fn(0)).astype(jnp.int32) - 1, 0, len(trials) - 1)
        k, lr, wd = which[row], lrs[row], wds[row]
        from lamb.experiments.scaling import switch_transformation

        return switch_transformation([OPTIMIZERS[n](lambda count: lr * shape(count), wd) for n in names], k)

    make_tx.trials = trials
    return make_tx


# ---------------------------------------------------------------------------------------------------------------
# Running a bank, reading it, drawing it (the figures take result data, so a full-scale export redraws them)
# ---------------------------------------------------------------------------------------------------------------

def validation_split(dataset, validation_examples: int, seed: int = 0):
    """``dataset`` with its first ``validation_examples`` training examples (after a seeded shuffle) moved to
    the held-out split: tuning reads that *validation* split, and the test split stays untouched for the final
    numbers. Returns ``(tuning_dataset, (x_test, y_test))``."""
    import numpy as np

    from lamb.experiments import data as _data

    n = len(dataset.y_train)
    if isinstance(validation_examples, bool) or not isinstance(validation_examples, int) \
            or not 0 < validation_examples < n:
        raise ValueError(f"validation_examples must be an int in (0, {n}), got {validation_examples!r}")
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:validation_examples], order[validation_examples:]
    tuning = _data.Dataset(dataset.name, dataset.x_train[train], dataset.y_train[train], dataset.x_train[val],
                           dataset.y_train[val], dataset.num_classes,
                           info={**getattr(dataset, "info", {}), "validation_examples": validation_examples})
    return tuning, (dataset.x_test, dataset.y_test)


def _evaluate_stacked(model, params, x, y, batch: int = 1024):
    """Loss and accuracy of every trial of the stacked ``params`` on ``(x, y)`` (one vmapped program)."""
    import numpy as np

    from lamb.experiments import models as _models

    @jax.jit
    def sums(p, xb, yb):
        return jax.vmap(lambda q: _models.loss_sums(model.apply(q, xb), yb))(p)

    total = None
    for i in range(0, len(y), batch):
        s = sums(params, jnp.asarray(x[i:i + batch], jnp.float32), jnp.asarray(y[i:i + batch], jnp.int32))
        total = s if total is None else jax.tree.map(jnp.add, total, s)
    count = np.maximum(np.asarray(total["count"], np.float64), 1.0)
    return np.asarray(total["loss"], np.float64) / count, np.asarray(total["correct"], np.float64) / count


def run_bank(task, rows: Sequence[tuple[str, float, float]], seeds: Sequence[int], *, batch_size: int,
             epochs: float, evaluations: int, micro_batch: int | None = None, test=None,
             warmup_epochs: float = 5, recipe_epochs: float = PAPER_EPOCHS) -> dict:
    """Train every row of ``rows`` (``(optimizer, peak rate, weight decay)``) with every seed of ``seeds`` in
    one compiled program (:func:`trial_bank` in :func:`lamb.experiments.vectorized.run_trials`), for
    ``epochs`` epochs of ``task``'s training set at ``batch_size``, under Goyal et al.'s recipe shape
    (warmup over ``warmup_epochs / recipe_epochs`` of the run, x0.1 at 30, 60 and 80 of ``recipe_epochs``).

    The task's held-out split is the *validation* split (evaluated ``evaluations`` times); ``test``, a pair
    ``(x, y)``, is evaluated once with the final parameters. Returns a JSON-able dict: ``rows``, ``trials``
    (``[row index, seed]``; in a dry run only the first), ``epoch``, per-trial ``histories`` (``val_loss``,
    ``val_accuracy``, ``train_loss``), ``test_loss``/``test_accuracy`` (NaN without ``test``) and the run's
    configuration."""
    import numpy as np

    from lamb.experiments import vectorized

    rows = [(str(n), float(lr), float(wd)) for n, lr, wd in rows]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    if not (math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"epochs must be > 0, got {epochs!r}")
    steps = max(1, round(epochs * task.num_train / batch_size))
    bank = trial_bank(rows, goyal_shape(steps, warmup_epochs, recipe_epochs))
    trials = [(float(i + 1), s) for i in range(len(rows)) for s in seeds]
    r = vectorized.run_trials(task, bank, trials, batch_size=batch_size, steps=steps,
                              eval_every=max(1, steps // max(1, int(evaluations))), schedule="constant",
                              micro_batch=micro_batch, stop=None)
    n = len(r.trials)
    test_loss = test_acc = np.full(n, np.nan)
    if test is not None:
        test_loss, test_acc = _evaluate_stacked(task.model, r.params, *test)
    return {"rows": [list(x) for x in rows], "seeds": seeds,
            "trials": [[int(round(lr)) - 1, int(s)] for lr, s in r.trials],
            "batch_size": int(batch_size), "steps": int(r.config["steps"]), "num_train": int(task.num_train),
            "epoch": [float(e) for e in r.histories[0]["epoch"]],
            "histories": [{"val_loss": [float(v) for v in h["test_loss"]],
                           "val_accuracy": [float(v) for v in h["test_accuracy"]],
                           "train_loss": [float(v) for v in h["train_loss"]]} for h in r.histories],
            "test_loss": [float(v) for v in test_loss], "test_accuracy": [float(v) for v in test_acc],
            "compile_seconds": r.compile_seconds, "run_seconds": r.run_seconds}


def _final(values) -> float:
    v = float(values[-1]) if len(values) else float("nan")
    return v if math.isfinite(v) else float("nan")


def trial_table(bank: Mapping) -> list[dict]:
    """One row per trial of a :func:`run_bank` result: optimizer, rate, weight decay, seed, final validation
    loss and accuracy, test accuracy (NaN where the run diverged)."""
    out = []
    for (row, seed), h, ta in zip(bank["trials"], bank["histories"], bank["test_accuracy"]):
        name, lr, wd = bank["rows"][row]
        diverged = not all(math.isfinite(v) for v in h["val_loss"] + h["train_loss"])
        out.append({"optimizer": name, "learning_rate": lr, "weight_decay": wd, "seed": seed, "row": row,
                    "val_loss": float("nan") if diverged else _final(h["val_loss"]),
                    "val_accuracy": float("nan") if diverged else _final(h["val_accuracy"]),
                    "test_accuracy": float("nan") if diverged else float(ta), "diverged": diverged})
    return out


def tuned(bank: Mapping) -> dict[str, dict]:
    """Each optimizer's tuned configuration of a :func:`run_bank` result: the row with the highest mean final
    validation accuracy over its seeds (a diverged seed counts as 0), with that row's per-seed validation and
    test accuracies and the trial indices of its histories."""
    import numpy as np

    table = trial_table(bank)
    by_row: dict[int, list[int]] = {}
    for i, t in enumerate(table):
        by_row.setdefault(t["row"], []).append(i)
    best: dict[str, dict] = {}
    for row, idx in by_row.items():
        name, lr, wd = bank["rows"][row]
        val = np.array([table[i]["val_accuracy"] for i in idx])
        score = float(np.mean(np.nan_to_num(val, nan=0.0)))
        if name not in best or score > best[name]["score"]:
            best[name] = {"optimizer": name, "learning_rate": lr, "weight_decay": wd, "row": row, "score": score,
                          "trials": idx, "seeds": [table[i]["seed"] for i in idx], "val_accuracy": val.tolist(),
                          "test_accuracy": [table[i]["test_accuracy"] for i in idx],
                          "diverged": sum(table[i]["diverged"] for i in idx)}
    return best


def seed_noise_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Whether the difference of the means of two sets of per-seed results exceeds seed noise: Welch's t test
    (two-sided). With fewer than two finite values on a side there is no test (``p`` NaN)."""
    import numpy as np
    from scipy import stats

    a = np.asarray([v for v in a if math.isfinite(v)], float)
    b = np.asarray([v for v in b if math.isfinite(v)], float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return {"difference": diff, "t": float("nan"), "p": float("nan"), "n": (len(a), len(b))}
    t, p = stats.ttest_ind(a, b, equal_var=False)
    return {"difference": diff, "t": float(t), "p": float(p), "n": (len(a), len(b))}


def trust_ratio_groups(history: Mapping, blocks_per_stage: int = 1) -> dict[str, dict[str, list[float]]]:
    """A :func:`lamb.experiments.train.fit` history's per-layer trust ratios grouped by :func:`layer_group`:
    ``{group: {layer name: ratios over steps}}``. Layers excluded from adaptation keep no trust ratio in the
    state, so they are listed under ``"excluded"`` from ``history["excluded_layers"]`` when given."""
    groups: dict[str, dict[str, list[float]]] = {}
    for name, values in history["trust_ratio"].items():
        groups.setdefault(layer_group(name, blocks_per_stage), {})[name] = [float(v) for v in values]
    for name in history.get("excluded_layers", []):
        groups.setdefault("excluded", {})[name] = []
    return groups


def plot_tuning(bank: Mapping, *, ax=None, title=None, optimizers: Sequence[str] | None = None):
    """Figure 4's form: final validation accuracy against the peak learning rate, one line per optimizer (and
    per weight decay where an optimizer has several), mean over seeds with the seeds' range."""
    import matplotlib.pyplot as plt
    import numpy as np

    ax = ax or plt.gca()
    table = trial_table(bank)
    names = optimizers or list(dict.fromkeys(t["optimizer"] for t in table))
    for name in names:
        wds = sorted({t["weight_decay"] for t in table if t["optimizer"] == name})
        for wd in wds:
            rs = [t for t in table if t["optimizer"] == name and t["weight_decay"] == wd]
            lrs = sorted({t["learning_rate"] for t in rs})
            acc = [np.nan_to_num([t["val_accuracy"] for t in rs if t["learning_rate"] == lr], nan=0.0) for lr in lrs]
            mean = [a.mean() for a in acc]
            label = name if len(wds) == 1 else f"{name} (wd {wd:g})"
            line, = ax.plot(lrs, mean, "o-" if len(wds) == 1 else ".--", label=label, lw=1.5 if len(wds) == 1 else 1)
            ax.fill_between(lrs, [a.min() for a in acc], [a.max() for a in acc], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation accuracy")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or f"batch {bank['batch_size']}")
    return ax


def plot_curves(bank: Mapping, best: Mapping[str, Mapping], names: Sequence[str], *, metric: str = "val_accuracy",
                ax=None, target: float | None = None, title=None):
    """``metric`` along training for the tuned configuration of each optimizer in ``names`` (mean over seeds,
    range shaded), with an optional horizontal target line."""
    import matplotlib.pyplot as plt
    import numpy as np

    ax = ax or plt.gca()
    epoch = np.asarray(bank["epoch"])
    for name in names:
        if name not in best:
            continue
        ys = np.array([bank["histories"][i][metric] for i in best[name]["trials"]], float)
        line, = ax.plot(epoch, np.nanmean(ys, 0), label=f"{name} (lr {best[name]['learning_rate']:g})")
        ax.fill_between(epoch, np.nanmin(ys, 0), np.nanmax(ys, 0), color=line.get_color(), alpha=0.15)
    if target is not None:
        ax.axhline(target, color="k", ls=":", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def plot_trust_ratio_groups(groups: Mapping[str, Mapping[str, Sequence[float]]], steps_per_epoch: float, *,
                            axes=None):
    """Figures 9-14's form: one panel per layer group, one line per layer, trust ratio against epoch; the
    excluded parameters are named in a last panel."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = [g for g in groups if g != "excluded"]
    if axes is None:
        n = len(names) + 1
        _, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), sharey=True)
    for ax, g in zip(axes, names):
        for layer, r in groups[g].items():
            ax.plot(np.arange(1, len(r) + 1) / steps_per_epoch, r, lw=1, label=layer.rsplit("/", 1)[0])
        ax.set_yscale("log")
        ax.set_title(g, fontsize=9)
        ax.set_xlabel("epoch")
        if len(groups[g]) <= 4:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("trust ratio")
    last = axes[len(names)]
    excluded = list(groups.get("excluded", {}))
    last.axis("off")
    last.text(0, 1, "excluded (ratio 1,\nno weight decay):\n" + "\n".join(excluded[:14])
              + ("\n..." if len(excluded) > 14 else ""), va="top", fontsize=6, transform=last.transAxes)
    return axes
