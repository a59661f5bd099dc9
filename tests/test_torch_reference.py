"""lamb.torch.Lamb and Lars against the float64 NumPy reference (lamb.reference), every option and path,
and against torch.optim.AdamW / SGD where the options make them the same algorithm.

Every layer of LAMB and LARS is independent of the others (the trust ratio is per layer), so a layer whose
gradient is None at some steps is compared with the reference run on that layer alone, over the steps where
it had a gradient (torch skips a parameter without a gradient: its step count does not advance).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lamb import reference as R
from lamb.torch import Lamb, Lars
from lamb.torch import _functional as F

STEPS = 20
LR = 0.05
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}

# Layers of a small "model": shapes (), [1], empty, a zero-initialised layer, a matrix, a non-contiguous
# (transposed) matrix, a 3-d tensor. Layer 4's gradient is None at steps 3 and 7; layer 6's is zero at step 0.
SHAPES = [(), (1,), (0,), (6,), (4, 3), (3, 5), (2, 3, 4)]
TRANSPOSED = 5
ZERO_WEIGHTS = 3
NO_GRAD = {4: {3, 7}}
ZERO_GRAD = {6: {0}}

# Group layouts: which layers get weight decay (first mask) and layer adaptation (second mask).
GROUPINGS = {
    "all": ([True] * 7, [True] * 7),
    "bert": ([True, False, False, True, True, True, False], [True, False, False, True, True, True, False]),
    "mixed": ([True, True, False, False, True, False, True], [False, True, True, True, False, True, False]),
}


def make_problem(seed: int = 0):
    """Initial weights and a gradient sequence, all exactly representable in float32."""
    rng = np.random.default_rng(seed)
    x0 = [rng.standard_normal(s).astype(np.float32).astype(np.float64) for s in SHAPES]
    x0[ZERO_WEIGHTS][...] = 0.0
    grads = []
    for k in range(STEPS):
        step = []
        for i, s in enumerate(SHAPES):
            if k in NO_GRAD.get(i, ()):
                step.append(None)
            elif k in ZERO_GRAD.get(i, ()):
                step.append(np.zeros(s))
            else:  # gradients of varying scale, so that the moments and the trust ratio have work to do
                scale = 10.0 ** rng.uniform(-2, 1)
                step.append((scale * rng.standard_normal(s)).astype(np.float32).astype(np.float64))
        grads.append(step)
    return x0, grads


def reference_layers(fn, x0, grads, masks, **kw):
    """Run ``fn`` of lamb.reference on each layer alone; returns final weights and last trust ratios."""
    decay, adapt = masks
    out_x, out_rho = [], []
    for i, x in enumerate(x0):
        state, params = None, [x]
        for step in grads:
            if step[i] is None:
                continue
            state, params = fn(state, params, [step[i]], weight_decay_mask=[decay[i]],
                               layer_adaptation_mask=[adapt[i]], **kw)
        out_x.append(params[0])
        out_rho.append(state["trust_ratio"][0])
    return out_x, out_rho


def make_params(x0, dtype):
    params = []
    for i, x in enumerate(x0):
        t = torch.tensor(x, dtype=dtype)
        if i == TRANSPOSED:  # a non-contiguous parameter: the transpose of a contiguous (5, 3) tensor
            t = torch.tensor(x.T.copy(), dtype=dtype).t()
            assert not t.is_contiguous()
        params.append(torch.nn.Parameter(t))
    return params


def make_groups(params, masks, weight_decay):
    """One param group per distinct (decay, adapt) pair of the masks."""
    decay, adapt = masks
    groups = {}
    for p, d, a in zip(params, decay, adapt):
        groups.setdefault((d, a), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if d else 0.0, "layer_adaptation": a}
            for (d, a), ps in groups.items()]


def run_torch(opt_factory, x0, grads, masks, weight_decay, dtype, maximize=False):
    params = make_params(x0, dtype)
    opt = opt_factory(make_groups(params, masks, weight_decay))
    for step in grads:
        for p, g in zip(params, step):
            if g is None:
                p.grad = None
            else:
                grad = torch.tensor(-g if maximize else g, dtype=dtype)
                p.grad = grad.t().contiguous().t() if p.dim() == 2 and not p.is_contiguous() else grad
        opt.step()
    return params, opt


def assert_matches(params, opt, ref_x, ref_rho, dtype, masks):
    tol = TOLERANCE[dtype]
    for i, (p, x_ref) in enumerate(zip(params, ref_x)):
        x = p.detach().double().numpy()
        assert np.all(np.isfinite(x)), f"layer {i} has non-finite values"
        ref_norm = np.linalg.norm(x_ref)
        err = np.linalg.norm(x - x_ref)
        if ref_norm == 0:
            assert err == 0, f"layer {i}: expected zeros, error {err}"
        else:
            assert err / ref_norm < tol, f"layer {i} {SHAPES[i]}: relative error {err / ref_norm:.3g} >= {tol}"
        rho = float(opt.state[p]["trust_ratio"])
        assert opt.state[p]["trust_ratio"].device == p.device and opt.state[p]["trust_ratio"].dim() == 0
        assert abs(rho - ref_rho[i]) <= tol * max(1.0, abs(ref_rho[i])), f"layer {i}: trust ratio {rho} vs {ref_rho[i]}"
        if not masks[1][i]:
            assert rho == 1.0


LAMB_FNS = {None: R.lamb, "n": R.nlamb, "nn": R.nnlamb}
PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


FULL_GRID = [
    (norm, bias_correction, trust_clip, nesterov, momentum_decay, weight_decay, grouping)
    for norm in ("l2", "l1", "linf")
    for bias_correction in (True, False)
    for trust_clip in (None, (0.5, 1.5))
    for nesterov in (None, "n", "nn")
    for momentum_decay in (4e-3,)
    for weight_decay in (0.0, 0.1)
    for grouping in GROUPINGS
] + [  # the constant schedule beta1_t = beta1 (momentum_decay=None), on one grouping
    (norm, bias_correction, None, nesterov, None, 0.1, "bert")
    for norm in ("l2", "l1", "linf") for bias_correction in (True, False) for nesterov in ("n", "nn")
]


@pytest.mark.parametrize("norm,bias_correction,trust_clip,nesterov,momentum_decay,weight_decay,grouping", FULL_GRID)
def test_lamb_matches_reference(norm, bias_correction, trust_clip, nesterov, momentum_decay, weight_decay,
                                grouping):
    """Single-tensor, foreach and fused (CPU kernel) paths, float64 and float32, over 20 steps, every option
    combination."""
    x0, grads = make_problem()
    masks = GROUPINGS[grouping]
    kw = dict(lr=LR, weight_decay=weight_decay, bias_correction=bias_correction, norm=norm, trust_clip=trust_clip)
    if nesterov is not None:
        kw["momentum_decay"] = momentum_decay
    ref_x, ref_rho = reference_layers(LAMB_FNS[nesterov], x0, grads, masks, **kw)
    for path, dtype in itertools.product(["single", "foreach", "fused"], [torch.float64, torch.float32]):
        params, opt = run_torch(
            lambda groups: Lamb(groups, lr=LR, norm=norm, bias_correction=bias_correction, trust_clip=trust_clip,
                                nesterov=nesterov, momentum_decay=momentum_decay, **PATHS[path]),
            x0, grads, masks, weight_decay, dtype)
        assert_matches(params, opt, ref_x, ref_rho, dtype, masks)


def lars_nesterov_reference(*args, **kwargs):
    """Lars(nesterov=True): the trust ratio normalizes u_t = beta1 m_t + (1 - beta1)(g_t + lambda x_t)."""
    return R.lars(*args, nesterov=True, **kwargs)


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("trust_clip", [None, (0.5, 1.5)])
@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_lars_matches_reference(norm, trust_clip, nesterov, weight_decay, grouping):
    x0, grads = make_problem(seed=1)
    masks = GROUPINGS[grouping]
    fn = lars_nesterov_reference if nesterov else R.lars
    ref_x, ref_rho = reference_layers(fn, x0, grads, masks, lr=LR, beta1=0.9, weight_decay=weight_decay,
                                      norm=norm, trust_clip=trust_clip)
    for path, dtype in itertools.product(["single", "foreach", "fused"], [torch.float64, torch.float32]):
        params, opt = run_torch(
            lambda groups: Lars(groups, lr=LR, momentum=0.9, norm=norm, trust_clip=trust_clip, nesterov=nesterov,
                                **PATHS[path]),
            x0, grads, masks, weight_decay, dtype)
        assert_matches(params, opt, ref_x, ref_rho, dtype, masks)


@pytest.mark.parametrize("path", ["single", "foreach", "fused"])
def test_maximize_is_descent_on_the_negated_gradient(path):
    x0, grads = make_problem(seed=2)
    masks = GROUPINGS["bert"]
    ref_x, ref_rho = reference_layers(R.nnlamb, x0, grads, masks, lr=LR, weight_decay=0.1, norm="l2")
    params, opt = run_torch(lambda g: Lamb(g, lr=LR, nesterov="nn", maximize=True, **PATHS[path]),
                            x0, [[None if g is None else -g for g in s] for s in grads], masks, 0.1, torch.float64)
    assert_matches(params, opt, ref_x, ref_rho, torch.float64, masks)


# Layers big enough for the fused CPU kernel to split them over threads (and sizes that leave tails), on one
# and two threads: the split changes only the order of the norms' sums. With stream=True every layer's u goes
# through the kernel's streaming stores (in use for layers of STREAM_MIN_BYTES or more), at unaligned offsets
# of the scratch buffer too.
BIG_SHAPES = [(301, 401), (70001,), (5,), (33000,), (1031, 67)]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_fused_cpu_kernel_on_big_layers(monkeypatch, norm, threads, stream):
    if stream:
        monkeypatch.setattr(F._cpu_fused, "STREAM_MIN_BYTES", 0)
    rng = np.random.default_rng(5)
    x0 = [rng.standard_normal(s) for s in BIG_SHAPES]
    grads = [[10.0 ** rng.uniform(-2, 1) * rng.standard_normal(s) for s in BIG_SHAPES] for _ in range(5)]
    # One group per mask pair: the (5,) layer shares its kernel call with bigger ones, so that its part of the
    # scratch buffer starts at an odd offset.
    masks = ([True, True, True, False, True], [True, True, True, False, False])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for fn, make in [(R.lamb, lambda g: Lamb(g, lr=LR, norm=norm, fused=True)),
                         (R.lars, lambda g: Lars(g, lr=LR, momentum=0.9, norm=norm, fused=True))]:
            kw = dict(beta1=0.9) if fn is R.lars else {}
            state, xs, ref_rho = None, x0, None
            for step in grads:
                state, xs = fn(state, xs, step, lr=LR, weight_decay=0.1, norm=norm, trust_clip=None,
                               weight_decay_mask=masks[0], layer_adaptation_mask=masks[1], **kw)
            for dtype in (torch.float64, torch.float32):
                params = [torch.nn.Parameter(torch.tensor(x, dtype=dtype)) for x in x0]
                groups = {}
                for p, d, a in zip(params, *masks):
                    groups.setdefault((d, a), []).append(p)
                opt = make([{"params": ps, "weight_decay": 0.1 if d else 0.0, "layer_adaptation": a}
                            for (d, a), ps in groups.items()])
                for step in grads:
                    for p, g in zip(params, step):
                        p.grad = torch.tensor(g, dtype=dtype)
                    opt.step()
                tol = TOLERANCE[dtype]
                for p, x, rho in zip(params, xs, state["trust_ratio"]):
                    err = np.linalg.norm(p.detach().double().numpy() - x) / np.linalg.norm(x)
                    assert err < tol, f"{fn.__name__} {dtype} {tuple(p.shape)}: relative error {err:.3g}"
                    assert abs(float(opt.state[p]["trust_ratio"]) - rho) <= tol * max(1.0, abs(rho))
    finally:
        torch.set_num_threads(previous)


# The torch.compile kernel (fused=True on GPUs, for fp16/bf16 and for layouts the CPU kernel does not take):
# few configurations, as each variant and dtype compiles once per process.
@pytest.mark.parametrize("nesterov,norm,trust_clip,dtype", [
    (None, "l2", None, torch.float64),
    ("nn", "linf", (0.5, 1.5), torch.float64),
    ("n", "l1", None, torch.float32),
])
def test_compiled_lamb_matches_reference(monkeypatch, nesterov, norm, trust_clip, dtype):
    monkeypatch.setattr(F._cpu_fused, "supports", lambda *tensors: False)  # every layer to torch.compile
    x0, grads = make_problem(seed=3)
    masks = GROUPINGS["bert"]
    ref_x, ref_rho = reference_layers(LAMB_FNS[nesterov], x0, grads, masks, lr=LR, weight_decay=0.1, norm=norm,
                                      trust_clip=trust_clip)
    params, opt = run_torch(lambda g: Lamb(g, lr=LR, norm=norm, trust_clip=trust_clip, nesterov=nesterov,
                                           fused=True), x0, grads, masks, 0.1, dtype)
    assert_matches(params, opt, ref_x, ref_rho, dtype, masks)


@pytest.mark.parametrize("nesterov", [False, True])
def test_compiled_lars_matches_reference(monkeypatch, nesterov):
    monkeypatch.setattr(F._cpu_fused, "supports", lambda *tensors: False)
    x0, grads = make_problem(seed=4)
    masks = GROUPINGS["bert"]
    fn = lars_nesterov_reference if nesterov else R.lars
    ref_x, ref_rho = reference_layers(fn, x0, grads, masks, lr=LR, beta1=0.9, weight_decay=0.1, norm="l2",
                                      trust_clip=None)
    params, opt = run_torch(lambda g: Lars(g, lr=LR, momentum=0.9, nesterov=nesterov, fused=True),
                            x0, grads, masks, 0.1, torch.float64)
    assert_matches(params, opt, ref_x, ref_rho, torch.float64, masks)


# --------------------------------------------------------------------------------------------------
# Where the options make them the same algorithm: AdamW and SGD.


def random_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 4), (7,), (), (3, 2, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def run_pair(opt_a, params_a, opt_b, params_b, steps=15, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for pa, pb in zip(params_a, params_b):
            grad = torch.randn(pa.shape, generator=g, dtype=pa.dtype)
            pa.grad, pb.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()


@pytest.mark.parametrize("path,dtype", [("single", torch.float64), ("single", torch.float32),
                                        ("foreach", torch.float64), ("foreach", torch.float32),
                                        ("fused", torch.float64)])
def test_lamb_without_layer_adaptation_is_adamw(path, dtype):
    """Lamb(layer_adaptation=False) == torch.optim.AdamW with the same eps (outside the sqrt), to rounding."""
    a, b = random_params(dtype), random_params(dtype)
    lamb = Lamb(a, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, layer_adaptation=False, **PATHS[path])
    adamw = torch.optim.AdamW(b, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, foreach=False)
    run_pair(lamb, a, adamw, b)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=rtol)
        torch.testing.assert_close(lamb.state[pa]["exp_avg_sq"], adamw.state[pb]["exp_avg_sq"], rtol=rtol, atol=0)
        assert float(lamb.state[pa]["trust_ratio"]) == 1.0


def test_lamb_without_layer_adaptation_is_reference_adamw():
    x0, grads = make_problem(seed=5)
    x0, grads = x0[3:], [s[3:] for s in grads]  # layers with gradients at every step but one
    ref_state, ref = None, None
    params = [torch.nn.Parameter(torch.tensor(x)) for x in x0]
    opt = Lamb(params, lr=LR, layer_adaptation=False, weight_decay=0.1)
    for i, x in enumerate(x0):  # the reference's adamw, layer by layer (layer 1 skips steps)
        state, ps = None, [x]
        for step in grads:
            if step[i] is not None:
                state, ps = R.adamw(state, ps, [step[i]], lr=LR, eps=1e-6, weight_decay=0.1)
        if i == 0:
            ref = []
        ref.append(ps[0])
    for step in grads:
        for p, g in zip(params, step):
            p.grad = None if g is None else torch.tensor(g)
        opt.step()
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", ["single", "foreach"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_without_layer_adaptation_is_sgd(path, nesterov):
    """Lars(lr=eta, momentum=beta1) == SGD(lr=eta (1 - beta1), momentum=beta1, weight_decay=lambda)."""
    eta, beta1, lam = 0.1, 0.9, 0.01
    a, b = random_params(torch.float64), random_params(torch.float64)
    lars = Lars(a, lr=eta, momentum=beta1, weight_decay=lam, nesterov=nesterov, layer_adaptation=False,
                **PATHS[path])
    sgd = torch.optim.SGD(b, lr=eta * (1 - beta1), momentum=beta1, weight_decay=lam, nesterov=nesterov)
    run_pair(lars, a, sgd, b)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)
        # m_t is (1 - beta1) times SGD's heavy-ball buffer
        torch.testing.assert_close(lars.state[pa]["exp_avg"], (1 - beta1) * sgd.state[pb]["momentum_buffer"],
                                   rtol=1e-12, atol=1e-14)


def test_step_length_is_lr_times_weight_norm():
    """With lambda = 0 and phi = identity, an adapted layer moves by exactly eta ||x_t|| (in its own norm)."""
    for norm, order in (("l2", 2), ("l1", 1), ("linf", float("inf"))):
        params = random_params(torch.float64, seed=7)[:2] + [torch.nn.Parameter(torch.randn(50, 30).double())]
        opt = Lamb(params, lr=0.03, weight_decay=0.0, norm=norm)
        g = torch.Generator().manual_seed(8)
        for _ in range(5):
            before = [p.detach().clone() for p in params]
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            opt.step()
            for p, x in zip(params, before):
                step = torch.linalg.vector_norm(p.detach() - x, order)
                expected = 0.03 * torch.linalg.vector_norm(x, order)
                torch.testing.assert_close(step, expected, rtol=1e-12, atol=0)
