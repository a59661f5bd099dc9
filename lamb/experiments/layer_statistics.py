r"""Per-layer statistics of a model's parameters, gradients and steps: the numbers LARS and LAMB act on.

A "layer" is one parameter array (a weight matrix, a bias vector, a normalization scale), as in the paper
and its official implementation. For a model with layers :math:`x^{(1)}, \dots, x^{(h)}` and gradients
:math:`g^{(i)}` this module computes

- :func:`layer_norms`: :math:`\|x^{(i)}\|` for every layer (L2 by default; L1 or L-infinity);
- :func:`weight_gradient_ratios`: :math:`\|x^{(i)}\| / \|g^{(i)}\|`, the ratio that LARS's trust ratio is
  built on (You, Gitman and Ginsburg 2017; You et al. 2020, Algorithm 1), *raw*: a zero-norm layer gives 0
  (zero weights) or ``inf`` (zero gradient), never the trust ratio's fallback of 1, so plots can show
  the zero-initialised layers for what they are;
- :func:`step_norms`: :math:`\|x_{t+1}^{(i)} - x_t^{(i)}\|`, to check the step-norm identity
  :math:`\|x_{t+1}^{(i)} - x_t^{(i)}\| = \eta_t \phi(\|x_t^{(i)}\|)` of LARS and LAMB;
- :func:`spread_in_decades`: :math:`\log_{10}(\max_i r_i / \min_i r_i)` over the finite positive values,
  how many orders of magnitude a per-layer quantity spans.

Parameters may be any pytree of arrays (nested dicts, lists, tuples of NumPy or JAX arrays: the JAX models
of :mod:`lamb.experiments.models`), a ``torch.nn.Module`` (its ``named_parameters``), or a mapping from
names to arrays or tensors. Results are plain ``dict``\ s from layer name to a Python float, in the
parameters' own order (the order of ``jax.tree_util`` for pytrees, of ``named_parameters`` for modules),
computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from lamb.reference import check_norm, layer_norm

__all__ = ["named_layers", "layer_norms", "weight_gradient_ratios", "step_norms", "spread_in_decades"]


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor: leave the autograd graph and the device, keep the values
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _key_name(key) -> str:
    # jax.tree_util path entries: DictKey(key=...), SequenceKey(idx=...), GetAttrKey(name=...), FlattenedIndexKey
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def named_layers(tree) -> list[tuple[str, np.ndarray]]:
    """The layers of ``tree`` as ``(name, float64 array)`` pairs, in the tree's order.

    ``tree`` is a ``torch.nn.Module`` (names from ``named_parameters``), a flat mapping from names to
    arrays or tensors, or any JAX pytree of arrays, whose names join the path keys with ``/``
    (``{"dense_0": {"kernel": w}}`` gives ``"dense_0/kernel"``).
    """
    if hasattr(tree, "named_parameters") and callable(tree.named_parameters):
        return [(name, _to_numpy(p)) for name, p in tree.named_parameters()]
    if isinstance(tree, Mapping) and all(
        not isinstance(v, (Mapping, list, tuple)) for v in tree.values()
    ):
        return [(str(name), _to_numpy(v)) for name, v in tree.items()]
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    if not leaves:
        raise ValueError("tree has no arrays: expected a pytree, a mapping or a torch.nn.Module of parameters")
    return [("/".join(_key_name(k) for k in path) or "0", _to_numpy(leaf)) for path, leaf in leaves]


def _paired(params, other, other_name: str):
    a, b = named_layers(params), named_layers(other)
    names_a, names_b = [n for n, _ in a], [n for n, _ in b]
    if names_a != names_b:
        raise ValueError(
            f"params and {other_name} have different layers: {names_a} against {names_b}"
        )
    for (name, x), (_, y) in zip(a, b):
        if x.shape != y.shape:
            raise ValueError(f"layer {name!r}: params shape {x.shape} differs from {other_name} shape {y.shape}")
    return [(name, x, y) for (name, x), (_, y) in zip(a, b)]


def layer_norms(tree, norm: str = "l2") -> dict[str, float]:
    r""":math:`\|x^{(i)}\|` of every layer (``norm`` = ``"l1"``, ``"l2"`` or ``"linf"``, over the whole layer)."""
    check_norm(norm)
    return {name: layer_norm(x, norm) for name, x in named_layers(tree)}


def weight_gradient_ratios(params, grads, norm: str = "l2") -> dict[str, float]:
    r"""The raw per-layer ratio :math:`\|x^{(i)}\| / \|g^{(i)}\|` of weights to gradients.

    No fallback: a layer with zero weights (a bias initialised to 0) gives 0.0, one with a zero gradient
    gives ``inf`` (and 0/0 gives ``nan``). LARS and LAMB replace those cases by a trust ratio of 1
    (:func:`lamb.reference.trust_ratio`); this function reports what the network actually has.
    """
    check_norm(norm)
    ratios = {}
    for name, x, g in _paired(params, grads, "grads"):
        x_norm, g_norm = layer_norm(x, norm), layer_norm(g, norm)
        if g_norm == 0.0:
            ratios[name] = math.nan if x_norm == 0.0 else math.inf
        else:
            ratios[name] = x_norm / g_norm
    return ratios


def step_norms(before, after, norm: str = "l2") -> dict[str, float]:
    r""":math:`\|x_{t+1}^{(i)} - x_t^{(i)}\|` of every layer, from the parameters before and after a step."""
    check_norm(norm)
    return {name: layer_norm(y - x, norm) for name, x, y in _paired(before, after, "after")}


def spread_in_decades(values) -> float:
    r"""How many orders of magnitude the finite positive ``values`` span: :math:`\log_{10}(\max / \min)`.

    ``values`` is a mapping (its values are used) or a sequence of numbers. Zeros, infinities and NaNs are
    left out (they are the zero-norm cases of :func:`weight_gradient_ratios`); at least one finite positive
    value is needed.
    """
    if isinstance(values, Mapping):
        values = list(values.values())
    kept = [float(v) for v in values if math.isfinite(float(v)) and float(v) > 0]
    if not kept:
        raise ValueError(f"values has no finite positive entry: {values!r}")
    return math.log10(max(kept) / min(kept))
