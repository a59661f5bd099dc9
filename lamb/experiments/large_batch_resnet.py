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
