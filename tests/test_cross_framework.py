"""The same training run with lamb.torch and lamb.jax: a small MLP, the same initial weights, the same batches.

Each framework computes its own gradients (autodiff in float32) and takes its own optimizer step; the weights
must agree step for step to float32 rounding, for every option (one test per option), and so must the
recorded trust ratios. The two implementations share no code: only :mod:`lamb.reference` defines both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from lamb import jax as lj  # noqa: E402
from lamb.torch import Lamb, Lars  # noqa: E402

STEPS = 12
NAMES = ("w1", "b1", "w2", "b2", "w3", "b3")
IS_BIAS = {name: name.startswith("b") for name in NAMES}


def initial_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """A 10 -> 32 -> 16 -> 4 tanh MLP, weights in torch's (out, in) layout, biases nonzero but small."""
    rng = np.random.default_rng(seed)
    sizes = [(32, 10), (16, 32), (4, 16)]
    weights = {}
    for k, (n_out, n_in) in enumerate(sizes, start=1):
        weights[f"w{k}"] = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        weights[f"b{k}"] = (0.05 * rng.standard_normal(n_out)).astype(np.float32)
    return weights


def batches(seed: int = 1, size: int = 32):
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((10, 4)).astype(np.float32)
    out = []
    for _ in range(STEPS):
        x = rng.standard_normal((size, 10)).astype(np.float32)
        out.append((x, np.sin(x @ teacher).astype(np.float32)))
    return out


def forward_jax(w, x):
    h = jnp.tanh(x @ w["w1"].T + w["b1"])
    h = jnp.tanh(h @ w["w2"].T + w["b2"])
    return h @ w["w3"].T + w["b3"]


def forward_torch(w, x):
    h = torch.tanh(x @ w["w1"].T + w["b1"])
    h = torch.tanh(h @ w["w2"].T + w["b2"])
    return h @ w["w3"].T + w["b3"]


def train_jax(tx):
    w = {k: jnp.asarray(v) for k, v in initial_weights().items()}
    state = tx.init(w)

    @jax.jit
    def step(w, state, x, y):
        grads = jax.grad(lambda w: jnp.mean((forward_jax(w, x) - y) ** 2))(w)
        updates, state = tx.update(grads, state, w)
        return optax.apply_updates(w, updates), state

    history, ratios = [], []
    for x, y in batches():
        w, state = step(w, state, x, y)
        history.append({k: np.asarray(v, np.float64) for k, v in w.items()})
        tree = optax.tree_utils.tree_get(state, "trust_ratio")
        ratios.append({k: (None if isinstance(r, optax.MaskedNode) else float(r)) for k, r in tree.items()})
    return history, ratios


def train_torch(make_optimizer):
    w = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in initial_weights().items()}
    optimizer = make_optimizer(w)
    history, ratios = [], []
    for x, y in batches():
        optimizer.zero_grad()
        loss = torch.mean((forward_torch(w, torch.tensor(x)) - torch.tensor(y)) ** 2)
        loss.backward()
        optimizer.step()
        history.append({k: p.detach().double().numpy().copy() for k, p in w.items()})
        ratios.append({k: float(optimizer.state[p]["trust_ratio"]) for k, p in w.items()})
    return history, ratios


def groups(w, decay_mask: bool, adaptation_mask: bool, weight_decay: float):
    """torch's form of the optax masks: biases in their own group."""
    bias_group = {"params": [w[k] for k in NAMES if IS_BIAS[k]]}
    if decay_mask:
        bias_group["weight_decay"] = 0.0
    if adaptation_mask:
        bias_group["layer_adaptation"] = False
    return [{"params": [w[k] for k in NAMES if not IS_BIAS[k]], "weight_decay": weight_decay}, bias_group]


LAMB_OPTIONS = {
    "defaults": {},
    "norm=l1": dict(norm="l1"),
    "norm=linf": dict(norm="linf"),
    "bias_correction=False": dict(bias_correction=False),
    "trust_clip": dict(trust_clip=(0.5, 2.0)),
    "nesterov=n": dict(nesterov="n"),
    "nesterov=nn": dict(nesterov="nn"),
    "nesterov=n constant schedule": dict(nesterov="n", momentum_decay=None),
    "weight decay mask": dict(decay_mask=True),
    "layer adaptation mask": dict(adaptation_mask=True),
    "BERT recipe (both masks), nn, l1": dict(decay_mask=True, adaptation_mask=True, nesterov="nn", norm="l1"),
}

LARS_OPTIONS = {
    "defaults": {},
    "nesterov=True": dict(nesterov=True),
    "norm=linf, trust_clip": dict(norm="linf", trust_clip=(0.5, 2.0)),
    "masks, nesterov": dict(decay_mask=True, adaptation_mask=True, nesterov=True),
}


def compare(ours, theirs, tol=2e-6):
    (hist_j, ratios_j), (hist_t, ratios_t) = ours, theirs
    for step, (wj, wt) in enumerate(zip(hist_j, hist_t, strict=True)):
        for k in NAMES:
            # float32 rounding relative to the layer's scale (measured: about 1e-7 after 12 steps; a wrong
            # option, e.g. N-LAMB against LAMB, gives 4e-2)
            error = np.max(np.abs(wj[k] - wt[k])) / np.max(np.abs(wt[k]))
            assert error < tol, f"step {step + 1}, {k}: relative difference {error:.2e}"
        for k in NAMES:
            if ratios_j[step][k] is None:          # outside layer_adaptation_mask: torch records 1
                assert ratios_t[step][k] == 1.0
            else:
                np.testing.assert_allclose(ratios_j[step][k], ratios_t[step][k], rtol=tol, err_msg=f"{k}")


@pytest.mark.parametrize("option", list(LAMB_OPTIONS), ids=list(LAMB_OPTIONS))
def test_lamb_torch_and_jax_train_alike(option):
    options = dict(LAMB_OPTIONS[option])
    decay_mask, adaptation_mask = options.pop("decay_mask", False), options.pop("adaptation_mask", False)
    lr, wd = 0.01, 0.01
    mask = {k: not IS_BIAS[k] for k in NAMES}
    tx = lj.lamb(lr, weight_decay=wd, mask=mask if decay_mask else None,
                 layer_adaptation_mask=mask if adaptation_mask else None, **options)
    ours = train_jax(tx)
    theirs = train_torch(lambda w: Lamb(groups(w, decay_mask, adaptation_mask, wd), lr=lr, weight_decay=wd,
                                        **options))
    compare(ours, theirs)


@pytest.mark.parametrize("option", list(LARS_OPTIONS), ids=list(LARS_OPTIONS))
def test_lars_torch_and_jax_train_alike(option):
    options = dict(LARS_OPTIONS[option])
    decay_mask, adaptation_mask = options.pop("decay_mask", False), options.pop("adaptation_mask", False)
    lr, wd = 0.02, 1e-3
    mask = {k: not IS_BIAS[k] for k in NAMES}
    tx = lj.lars(lr, momentum=0.9, weight_decay=wd, mask=mask if decay_mask else None,
                 layer_adaptation_mask=mask if adaptation_mask else None, **options)
    ours = train_jax(tx)
    theirs = train_torch(lambda w: Lars(groups(w, decay_mask, adaptation_mask, wd), lr=lr, momentum=0.9,
                                        weight_decay=wd, **options))
    compare(ours, theirs)


def test_both_frameworks_reject_complex_parameters_alike():
    """The choice for complex parameters is the same everywhere: a TypeError at construction/init naming the
    dtype and pointing to the real view (lamb.reference raises too)."""
    pattern = r"does not support complex parameters \(got one of dtype (torch\.)?complex64 and shape \(3,\)\)"
    with pytest.raises(TypeError, match=pattern):
        Lamb([torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))])
    with pytest.raises(TypeError, match=pattern):
        Lars([torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))], lr=0.1)
    for tx in (lj.lamb(0.1), lj.lars(0.1)):
        with pytest.raises(TypeError, match=pattern):
            tx.init([jnp.ones(3, jnp.complex64)])
