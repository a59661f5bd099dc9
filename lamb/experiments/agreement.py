"""Run one fixed sequence of gradients through the reference, a PyTorch optimizer and an optax transformation.

The book's chapters check, for every algorithm they build, that their from-scratch code, ``lamb.reference``,
``lamb.torch`` and ``lamb.jax`` take the same steps. The steps are driven by a *fixed* list of gradients (one
list of arrays per step), not by a model, so that the three implementations see exactly the same input and any
difference is the optimizer's::

    grads = agreement.gradient_sequence([(4, 3), (3,)], steps=5, seed=0)
    ref = agreement.run_reference(reference.lamb, params, grads, lr=0.1, weight_decay=0.01)
    tor = agreement.run_torch(lambda p: Lamb(p, lr=0.1, weight_decay=0.01), params, grads)
    jx = agreement.run_jax(lj.lamb(0.1, weight_decay=0.01), params, grads)
    np.testing.assert_allclose(tor.params[-1][0], ref.params[-1][0], rtol=1e-12)

Every runner returns a :class:`Trajectory`: the parameters after each step (float64 NumPy arrays, one list
per step) and, where the optimizer reports them, the per-layer trust ratios of each step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Trajectory:
    """``params[k]`` are the parameters after step ``k + 1``; ``trust_ratio[k]`` one float per layer (or
    empty where the optimizer does not report trust ratios)."""

    params: list[list[np.ndarray]] = field(default_factory=list)
    trust_ratio: list[list[float]] = field(default_factory=list)


def _check_inputs(params: Sequence[np.ndarray], grads: Sequence[Sequence[np.ndarray]]):
    params = [np.asarray(x, dtype=np.float64) for x in params]
    if len(grads) == 0:
        raise ValueError("grads must hold at least one step (a list of arrays per step), got none")
    for k, step in enumerate(grads):
        if len(step) != len(params):
            raise ValueError(f"grads[{k}] has {len(step)} arrays, one per layer ({len(params)}) is needed")
        for i, (g, x) in enumerate(zip(step, params)):
            if np.shape(g) != x.shape:
                raise ValueError(f"grads[{k}][{i}] has shape {np.shape(g)}, the layer has shape {x.shape}")
    return params


def gradient_sequence(shapes: Sequence[tuple[int, ...]], steps: int, seed: int = 0,
                      scales: Sequence[float] | None = None) -> list[list[np.ndarray]]:
    """``steps`` lists of standard-normal float64 gradients with the given layer ``shapes``.

    ``scales`` (one per layer) multiplies each layer's gradients, so that layers can differ by orders of
    magnitude as they do in real networks.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if scales is None:
        scales = [1.0] * len(shapes)
    if len(scales) != len(shapes):
        raise ValueError(f"scales has {len(scales)} entries, one per layer ({len(shapes)}) is needed")
    rng = np.random.default_rng(seed)
    return [[s * rng.standard_normal(shape) for shape, s in zip(shapes, scales)] for _ in range(steps)]


def run_reference(algorithm: Callable, params, grads, **hyperparameters) -> Trajectory:
    """Apply a ``lamb.reference`` algorithm (e.g. ``reference.lamb``) to each step's gradients in turn."""
    params = _check_inputs(params, grads)
    out, state = Trajectory(), None
    for step in grads:
        state, params = algorithm(state, params, step, **hyperparameters)
        out.params.append([np.array(x) for x in params])
        out.trust_ratio.append(list(state.get("trust_ratio", [])))
    return out


def run_torch(make_optimizer: Callable, params, grads, dtype=None) -> Trajectory:
    """Apply a ``torch.optim.Optimizer`` built by ``make_optimizer(list_of_tensors)`` to each step's gradients.

    Tensors (and torch's default dtype, during the run) are float64 unless ``dtype`` says otherwise. Trust ratios are read from
    ``optimizer.state[p]["trust_ratio"]`` where the optimizer records them (``lamb.torch.Lamb``, ``Lars``).
    """
    import torch

    dtype = torch.float64 if dtype is None else dtype
    params = _check_inputs(params, grads)
    # Some torch.optim optimizers keep scalar state in the default dtype (NAdam's schedule product, float32
    # by default), which would limit a float64 comparison to float32 accuracy: run in `dtype` throughout.
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        tensors = [torch.nn.Parameter(torch.tensor(x, dtype=dtype)) for x in params]
        optimizer = make_optimizer(tensors)
        out = Trajectory()
        for step in grads:
            for p, g in zip(tensors, step):
                p.grad = torch.tensor(np.asarray(g), dtype=dtype)
            optimizer.step()
            out.params.append([p.detach().cpu().double().numpy().copy() for p in tensors])
            ratios = [optimizer.state[p].get("trust_ratio") for p in tensors]
            out.trust_ratio.append([float(r) for r in ratios] if all(r is not None for r in ratios) else [])
    finally:
        torch.set_default_dtype(default)
    return out


def run_jax(tx, params, grads, x64: bool = True) -> Trajectory:
    """Apply an optax ``GradientTransformation`` to each step's gradients (float64 when ``x64``).

    Trust ratios are not read here (each optax chain keeps them in its own state); compare parameters.
    """
    import jax
    import jax.numpy as jnp
    import optax

    params = _check_inputs(params, grads)
    out = Trajectory()
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        p = [jnp.asarray(x, dtype=dtype) for x in params]
        state = tx.init(p)
        for step in grads:
            g = [jnp.asarray(gi, dtype=dtype) for gi in step]
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
            out.params.append([np.asarray(x, dtype=np.float64) for x in p])
    return out


def max_relative_error(a: Trajectory, b: Trajectory) -> float:
    """The largest ``max|a - b| / max|b|`` (per layer, the error relative to the layer's largest entry) over
    every step and layer of two trajectories."""
    if len(a.params) != len(b.params):
        raise ValueError(f"the trajectories have {len(a.params)} and {len(b.params)} steps")
    worst = 0.0
    for pa, pb in zip(a.params, b.params):
        for xa, xb in zip(pa, pb):
            scale = max(float(np.max(np.abs(xb))), np.finfo(np.float64).tiny) if xb.size else 1.0
            worst = max(worst, float(np.max(np.abs(xa - xb), initial=0.0)) / scale)
    return worst
