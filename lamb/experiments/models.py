r"""The book's models in plain JAX: an MLP, a small ResNet (the ResNet-50 stand-in), a small BERT (the BERT stand-in).

Every model is a :class:`Model`: two pure functions and a description,

- ``params = model.init(key)`` (jitted: one compiled program instead of many small dispatches) -- a
  nested ``dict`` of ``float32`` arrays whose path names say what each layer is (``dense_0/kernel``,
  ``block_1/conv_2/kernel``, ``encoder_0/attention/query/kernel``), so that the per-layer plots of the book
  (trust ratio per layer, :func:`lamb.experiments.layer_statistics.named_layers`) are readable;
- ``logits = model.apply(params, inputs)`` -- no state, no randomness (no dropout, no batch statistics), so
  one training step is a pure function of ``(params, opt_state, batch)`` that ``jax.jit`` and
  data-parallel sharding handle without special cases.

The task's loss is the same for every model: softmax cross-entropy against integer labels, where a label
below zero (``-1`` for padding, BERT's ``-100`` for unmasked tokens) is ignored. :func:`loss_sums` returns
sums, not means, so that gradient accumulation and data parallelism can divide by the *total* count of
labelled examples (or masked tokens) of the global batch exactly once.

Initialisation: kernels are drawn as in the usual frameworks (He/Kaiming normal for ReLU layers, LeCun/Glorot
scaled normal elsewhere, BERT's truncated normal with standard deviation 0.02 for the transformer), biases
start at zero, normalization scales at one. Sizes are arguments; the notebooks take them from the profile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

__all__ = ["Model", "mlp", "resnet", "bert", "loss_sums", "count_params", "layer_names", "gelu", "group_norm",
           "layer_norm"]


@dataclass(frozen=True)
class Model:
    """A model as two pure functions.

    ``init(key) -> params`` (nested dict of float32 arrays); ``apply(params, inputs) -> logits`` with logits of
    shape ``(batch, num_classes)`` for classification or ``(batch, seq_len, vocab_size)`` for masked language
    modelling. ``config`` records the constructor's arguments (it goes into result files).
    """

    name: str
    init: Callable
    apply: Callable
    config: dict = field(default_factory=dict)
    #: Optional ``apply_masked(params, inputs, labels) -> (logits, labels)``: logits at (at least) every
    #: labelled position only, for a cheaper loss (BERT's MLM head computed at the masked tokens).
    apply_masked: Callable | None = None


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_widths(name: str, widths) -> tuple[int, ...]:
    if isinstance(widths, int) or not isinstance(widths, Sequence):
        raise TypeError(f"{name} must be a sequence of positive ints, got {widths!r}")
    return tuple(_check_positive_int(f"{name}[{i}]", w) for i, w in enumerate(widths))


def _normal(key, shape, std):
    return std * jax.random.normal(key, shape, jnp.float32)


def _truncated_normal(key, shape, std):
    return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


def _dense(key, fan_in, fan_out, std=None):
    """A dense layer ``y = x W + b``: ``W`` normal with ``std`` (default LeCun, ``1/sqrt(fan_in)``), ``b = 0``."""
    std = 1.0 / math.sqrt(fan_in) if std is None else std
    return {"kernel": _normal(key, (fan_in, fan_out), std), "bias": jnp.zeros((fan_out,), jnp.float32)}


def _apply_dense(p, x):
    return x @ p["kernel"] + p["bias"]


def gelu(x):
    """BERT's GELU, the exact form ``x * Phi(x)`` (Hendrycks and Gimpel 2016)."""
    return jax.nn.gelu(x, approximate=False)


_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": gelu, "tanh": jnp.tanh}


def _check_activation(activation) -> Callable:
    if callable(activation):
        return activation
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)} or a callable, got {activation!r}")
    return _ACTIVATIONS[activation]


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------

def loss_sums(logits, labels) -> dict:
    r"""Sums for softmax cross-entropy and accuracy over the labelled positions (``labels >= 0``).

    Returns ``{"loss": sum_i -log softmax(z_i)[y_i], "correct": sum_i [argmax z_i = y_i], "count": n}`` over the
    positions ``i`` with ``y_i >= 0``; the mean loss is ``loss / count``. ``logits`` has one more axis than
    ``labels`` (the classes). Computed in float32 whatever the logits' dtype.
    """
    logits = logits.astype(jnp.float32)
    valid = labels >= 0
    safe = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == labels) & valid
    return {"loss": jnp.sum(jnp.where(valid, nll, 0.0)), "correct": jnp.sum(correct.astype(jnp.float32)),
            "count": jnp.sum(valid.astype(jnp.float32))}


def count_params(params) -> int:
    """The number of scalars in ``params``."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def layer_names(params) -> list[str]:
    """The ``/``-joined path names of the leaves of ``params``, in ``jax.tree`` order."""
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


# ---------------------------------------------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------------------------------------------

def mlp(input_dim: int, hidden: Sequence[int], num_classes: int, activation="relu") -> Model:
    """A multilayer perceptron: ``dense_0 ... dense_{k-1}`` with ``activation``, then ``dense_k`` to logits.

    Inputs of any shape ``(batch, *input_shape)`` are flattened (``input_dim = prod(input_shape)``).
    Kernels are He-normal (``std = sqrt(2 / fan_in)``) for ReLU, LeCun-normal otherwise; the output layer is
    LeCun-normal. Parameter names: ``dense_0/kernel``, ``dense_0/bias``, ...
    """
    input_dim = _check_positive_int("input_dim", input_dim)
    hidden = _check_widths("hidden", hidden)
    num_classes = _check_positive_int("num_classes", num_classes)
    act = _check_activation(activation)
    gain = 2.0 if activation == "relu" else 1.0
    widths = (input_dim, *hidden, num_classes)

    def init(key):
        keys = jax.random.split(key, len(widths) - 1)
        params = {}
        for i, (k, a, b) in enumerate(zip(keys, widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            params[f"dense_{i}"] = _dense(k, a, b, std=math.sqrt((1.0 if last else gain) / a))
        return params

    def apply(params, x):
        h = x.reshape(x.shape[0], -1)
        for i in range(len(widths) - 1):
            h = _apply_dense(params[f"dense_{i}"], h)
            if i < len(widths) - 2:
                h = act(h)
        return h

    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "custom")
    return Model("mlp", jax.jit(init), apply, {"model": "mlp", "input_dim": input_dim, "hidden": list(hidden),
                                      "num_classes": num_classes, "activation": name})


# ---------------------------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------------------------

def group_norm(p, x, groups: int, eps: float = 1e-5):
    """GroupNorm (Wu and He 2018) over channels-last ``x``: statistics per example and per group of channels,
    over the spatial axes and the group's channels; then ``scale * x_hat + bias`` per channel."""
    c = x.shape[-1]
    g = x.reshape(*x.shape[:-1], groups, c // groups)
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    mean = jnp.mean(g, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + eps)
    return g.reshape(x.shape) * p["scale"] + p["bias"]


def _conv_init(key, kernel_size, spatial, c_in, c_out):
    shape = (kernel_size,) * spatial + (c_in, c_out)
    return {"kernel": _normal(key, shape, math.sqrt(2.0 / (kernel_size ** spatial * c_in)))}


def _conv(p, x, stride: int):
    spatial = x.ndim - 2
    dims = ("NWC", "WIO", "NWC") if spatial == 1 else ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, p["kernel"], (stride,) * spatial, "SAME", dimension_numbers=dims)


def resnet(input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32, 64),
           blocks_per_stage: int = 1, kernel_size: int = 3, groups: int = 8) -> Model:
    """A small ResNet (He et al. 2016, basic blocks, post-activation) for 1-D signals or 2-D images.

    ``input_shape`` is ``(length,)`` or ``(length, channels)`` for 1-D inputs (MNIST-1D: ``(40,)``), and
    ``(height, width, channels)`` for images (channels last). The network: ``stem`` (conv + GroupNorm +
    ReLU, ``widths[0]`` channels), then for each stage ``s`` ``blocks_per_stage`` basic blocks
    ``block_{j}`` (``conv_1``-``norm_1``-ReLU-``conv_2``-``norm_2``, plus the shortcut, a strided 1x1
    ``projection`` conv with its ``projection_norm`` when the shape changes, then ReLU), the first block of
    every stage after the first with stride 2; global average pooling; ``head`` (dense to logits).
    The last norm of every block starts with scale 0 (Goyal et al. 2017, section 5.1: each block starts as
    the identity), which large-batch training relies on.

    Normalization is GroupNorm, not BatchNorm: GroupNorm's statistics are per example, so the forward pass of
    an example does not depend on the other examples of the batch or on how the batch is split over devices.
    Data-parallel training then needs no synchronised batch statistics (no cross-device all-reduce in the
    forward pass, no "ghost batch" size as a hidden hyperparameter), the model is a pure function without
    running averages, and the sharded and unsharded runs compute the same function -- what the tests check.
    (The paper's ResNet-50 uses BatchNorm; this is a deliberate simplification of the stand-in.)
    """
    input_shape = tuple(_check_widths("input_shape", input_shape))
    if len(input_shape) not in (1, 2, 3):
        raise ValueError(f"input_shape must be (length,), (length, channels) or (height, width, channels), got "
                         f"{input_shape!r}")
    num_classes = _check_positive_int("num_classes", num_classes)
    widths = _check_widths("widths", widths)
    blocks_per_stage = _check_positive_int("blocks_per_stage", blocks_per_stage)
    kernel_size = _check_positive_int("kernel_size", kernel_size)
    groups = _check_positive_int("groups", groups)
    for w in widths:
        if w % groups:
            raise ValueError(f"every width must be divisible by groups={groups}, got widths={widths!r}")
    spatial = 2 if len(input_shape) == 3 else 1
    channels = input_shape[-1] if len(input_shape) == spatial + 1 else 1

    def norm_params(c, zero=False):
        return {"scale": (jnp.zeros if zero else jnp.ones)((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}

    plan = []  # (name, c_in, c_out, stride)
    c_in = widths[0]
    for s, w in enumerate(widths):
        for b in range(blocks_per_stage):
            stride = 2 if (s > 0 and b == 0) else 1
            plan.append((f"block_{len(plan)}", c_in, w, stride))
            c_in = w

    def init(key):
        keys = iter(jax.random.split(key, 2 + 3 * len(plan)))
        params = {"stem": {"conv": _conv_init(next(keys), kernel_size, spatial, channels, widths[0]),
                           "norm": norm_params(widths[0])}}
        for name, ci, co, stride in plan:
            block = {"conv_1": _conv_init(next(keys), kernel_size, spatial, ci, co), "norm_1": norm_params(co),
                     "conv_2": _conv_init(next(keys), kernel_size, spatial, co, co), "norm_2": norm_params(co, True)}
            k = next(keys)
            if stride != 1 or ci != co:
                block["projection"] = _conv_init(k, 1, spatial, ci, co)
                block["projection_norm"] = norm_params(co)
            params[name] = block
        params["head"] = _dense(next(keys), widths[-1], num_classes)
        return params

    def apply(params, x):
        x = x.reshape(x.shape[0], *input_shape)
        if len(input_shape) == spatial:  # add the channel axis
            x = x[..., None]
        h = jax.nn.relu(group_norm(params["stem"]["norm"], _conv(params["stem"]["conv"], x, 1), groups))
        for name, ci, co, stride in plan:
            p = params[name]
            y = jax.nn.relu(group_norm(p["norm_1"], _conv(p["conv_1"], h, stride), groups))
            y = group_norm(p["norm_2"], _conv(p["conv_2"], y, 1), groups)
            shortcut = h
            if "projection" in p:
                shortcut = group_norm(p["projection_norm"], _conv(p["projection"], h, stride), groups)
            h = jax.nn.relu(y + shortcut)
        h = jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))
        return _apply_dense(params["head"], h)

    return Model("resnet", jax.jit(init), apply, {"model": "resnet", "input_shape": list(input_shape),
                                         "num_classes": num_classes, "widths": list(widths),
                                         "blocks_per_stage": blocks_per_stage, "kernel_size": kernel_size,
                                         "groups": groups})


# ---------------------------------------------------------------------------------------------------------------
# BERT
# ---------------------------------------------------------------------------------------------------------------

def layer_norm(p, x, eps: float = 1e-12):
    """LayerNorm (Ba et al. 2016) over the last axis, ``scale * (x - mean) / sqrt(var + eps) + bias``; BERT's
    ``eps = 1e-12``."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def bert(vocab_size: int, max_len: int, hidden: int = 128, layers: int = 2, heads: int = 2,
         mlp_dim: int | None = None, pre_layer_norm: bool = False, tie_embeddings: bool = True,
         pad_id: int = 0, max_predictions: float = 0.2) -> Model:
    r"""A small BERT encoder with its masked-language-model head (Devlin et al. 2019), the BERT stand-in.

    ``apply(params, input_ids)`` takes int token ids ``(batch, seq_len)`` with ``seq_len <= max_len`` and returns
    logits ``(batch, seq_len, vocab_size)``; positions whose id is ``pad_id`` are masked out as keys of the
    attention. Layers:

    - ``embeddings/token/embedding`` ``(V, d)``, ``embeddings/position/embedding`` ``(max_len, d)`` (learned),
      ``embeddings/norm`` (LayerNorm; post-LN only);
    - ``encoder_{i}``: ``attention/{query,key,value,output}/{kernel,bias}`` (multi-head scaled dot-product
      attention, ``softmax(Q K^T / sqrt(d / heads)) V``), ``attention_norm``, ``mlp/dense_in`` (to
      ``mlp_dim = 4 d`` by default, GELU), ``mlp/dense_out``, ``mlp_norm``. Post-LN (BERT's,
      ``x = LN(x + f(x))``) by default; ``pre_layer_norm=True`` gives ``x = x + f(LN(x))`` with a
      ``final_norm``, which trains more stably without warmup (Xiong et al. 2020);
    - ``mlm_head``: ``transform`` (dense + GELU), ``norm``, then the output projection: the transposed token
      embedding plus ``output_bias`` when ``tie_embeddings`` (BERT's choice), else ``decoder/{kernel,bias}``.

    Weights are truncated normal with standard deviation 0.02, as BERT's ``initializer_range``.

    ``model.apply_masked(params, input_ids, labels)`` computes the output projection only at the labelled
    (masked) positions, as BERT's ``masked_lm_positions`` do: the ``P = ceil(max_predictions * seq_len)``
    labelled positions of each sequence are gathered first (BERT's 15% masking labels at most
    ``round(0.15 n)``), which cuts the cost of the ``d x V`` projection by about ``1 / max_predictions``.
    The loss is the same as with :meth:`apply`; a sequence with more than ``P`` labels makes the logits NaN
    (loudly, instead of dropping labels).
    """
    vocab_size = _check_positive_int("vocab_size", vocab_size)
    max_len = _check_positive_int("max_len", max_len)
    hidden = _check_positive_int("hidden", hidden)
    layers = _check_positive_int("layers", layers)
    heads = _check_positive_int("heads", heads)
    if (isinstance(max_predictions, bool) or not isinstance(max_predictions, (int, float))
            or not 0 < max_predictions <= 1):
        raise ValueError(f"max_predictions must be a fraction in (0, 1], got {max_predictions!r}")
    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
    mlp_dim = 4 * hidden if mlp_dim is None else _check_positive_int("mlp_dim", mlp_dim)
    head_dim = hidden // heads
    std = 0.02

    def dense(key, a, b):
        return {"kernel": _truncated_normal(key, (a, b), std), "bias": jnp.zeros((b,), jnp.float32)}

    def norm(d=hidden):
        return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}

    def init(key):
        keys = iter(jax.random.split(key, 4 + 6 * layers))
        params = {"embeddings": {"token": {"embedding": _truncated_normal(next(keys), (vocab_size, hidden), std)},
                                 "position": {"embedding": _truncated_normal(next(keys), (max_len, hidden), std)}}}
        if not pre_layer_norm:
            params["embeddings"]["norm"] = norm()
        for i in range(layers):
            params[f"encoder_{i}"] = {
                "attention": {n: dense(next(keys), hidden, hidden) for n in ("query", "key", "value", "output")},
                "attention_norm": norm(),
                "mlp": {"dense_in": dense(next(keys), hidden, mlp_dim),
                        "dense_out": dense(next(keys), mlp_dim, hidden)},
                "mlp_norm": norm(),
            }
        if pre_layer_norm:
            params["final_norm"] = norm()
        head = {"transform": dense(next(keys), hidden, hidden), "norm": norm()}
        if tie_embeddings:
            head["output_bias"] = jnp.zeros((vocab_size,), jnp.float32)
        else:
            head["decoder"] = dense(next(keys), hidden, vocab_size)
        params["mlm_head"] = head
        return params

    def attention(p, x, key_mask):
        b, n, _ = x.shape

        def split(t):
            return t.reshape(b, n, heads, head_dim)

        q, k, v = (split(_apply_dense(p[name], x)) for name in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, hidden)
        return _apply_dense(p["output"], out)

    def mlp_block(p, x):
        return _apply_dense(p["dense_out"], gelu(_apply_dense(p["dense_in"], x)))

    def encode(params, input_ids):
        n = input_ids.shape[1]
        if n > max_len:
            raise ValueError(f"sequence length {n} exceeds max_len={max_len}")
        key_mask = input_ids != pad_id
        emb = params["embeddings"]
        x = emb["token"]["embedding"][input_ids] + emb["position"]["embedding"][:n]
        if not pre_layer_norm:
            x = layer_norm(emb["norm"], x)
        for i in range(layers):
            p = params[f"encoder_{i}"]
            if pre_layer_norm:
                x = x + attention(p["attention"], layer_norm(p["attention_norm"], x), key_mask)
                x = x + mlp_block(p["mlp"], layer_norm(p["mlp_norm"], x))
            else:
                x = layer_norm(p["attention_norm"], x + attention(p["attention"], x, key_mask))
                x = layer_norm(p["mlp_norm"], x + mlp_block(p["mlp"], x))
        if pre_layer_norm:
            x = layer_norm(params["final_norm"], x)
        return x

    def mlm_head(params, x):
        head = params["mlm_head"]
        h = layer_norm(head["norm"], gelu(_apply_dense(head["transform"], x)))
        if tie_embeddings:
            return h @ params["embeddings"]["token"]["embedding"].T + head["output_bias"]
        return _apply_dense(head["decoder"], h)

    def apply(params, input_ids):
        return mlm_head(params, encode(params, input_ids))

    def apply_masked(params, input_ids, labels):
        x = encode(params, input_ids)
        n = labels.shape[1]
        p = min(n, math.ceil(max_predictions * n))
        valid = labels >= 0
        order = jnp.argsort(jnp.logical_not(valid), axis=1, stable=True)[:, :p]  # labelled positions first
        labels_p = jnp.take_along_axis(labels, order, axis=1)
        logits = mlm_head(params, jnp.take_along_axis(x, order[..., None], axis=1))
        overflow = jnp.any(jnp.sum(valid, axis=1) > p)
        return jnp.where(overflow, jnp.nan, logits), labels_p

    return Model("bert", jax.jit(init), apply, {"model": "bert", "vocab_size": vocab_size, "max_len": max_len,
                                       "hidden": hidden, "layers": layers, "heads": heads, "mlp_dim": mlp_dim,
                                       "pre_layer_norm": pre_layer_norm, "tie_embeddings": tie_embeddings,
                                       "pad_id": pad_id, "max_predictions": max_predictions}, apply_masked)
