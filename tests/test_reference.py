"""Properties of lamb.reference that hold by the mathematics, and agreement with independent implementations.

No expected number here is copied from the implementation's output: each is either an identity of the
algorithm (step norms, invariances, reductions), a value worked out by hand from the paper's formulas, or the
output of another library's implementation of the same algorithm (torch.optim, optax) in float64.
"""

import math

import numpy as np
import pytest

from lamb import reference as R

SHAPES = [(4, 3), (5,), (2, 3, 2), (1,)]


def random_problem(seed=0, shapes=SHAPES, steps=6):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s) for s in shapes]
    grads = [[rng.normal(size=s) * (10.0 ** rng.uniform(-3, 1)) for s in shapes] for _ in range(steps)]
    return params, grads


def run(fn, params, grad_sequence, **kw):
    state = None
    for g in grad_sequence:
        state, params = fn(state, params, g, **kw)
    return state, params


# ---------------------------------------------------------------------------------------------------
# Layer-wise methods: the step-norm identity.


@pytest.mark.parametrize("norm", R.NORMS)
@pytest.mark.parametrize("fn", [R.lamb, R.lars, R.nlamb, R.nnlamb])
def test_step_norm_equals_lr_times_weight_norm(fn, norm):
    """With lambda = 0 and phi the identity, every layer's step has norm lr * ||x|| (in the chosen norm)."""
    params, grads = random_problem(1)
    state, x = run(fn, params, grads[:-1], lr=0.01, weight_decay=0.0, norm=norm)
    lr = 0.037
    _, x_new = fn(state, x, grads[-1], lr=lr, weight_decay=0.0, norm=norm)
    for before, after in zip(x, x_new):
        assert R.layer_norm(after - before, norm) == pytest.approx(lr * R.layer_norm(before, norm), rel=1e-12)


def test_trust_clip_bounds_the_step():
    """phi clips ||x|| to [gamma_l, gamma_u]: the step norm is lr * clip(||x||)."""
    params, grads = random_problem(2)
    clip = (0.5, 2.0)
    params = [p * s for p, s in zip(params, [0.01, 1.0, 10.0, 1.0])]  # norms below, inside and above the clip
    _, x_new = R.lamb(None, params, grads[0], lr=0.1, weight_decay=0.0, trust_clip=clip)
    for before, after in zip(params, x_new):
        expected = 0.1 * min(max(np.linalg.norm(before), clip[0]), clip[1])
        assert np.linalg.norm(after - before) == pytest.approx(expected, rel=1e-12)


def test_lamb_is_invariant_to_gradient_scale_without_eps():
    """m scales by c and sqrt(v) by c, so r_t and hence LAMB's steps are unchanged when eps = 0."""
    params, grads = random_problem(3)
    kw = dict(lr=0.01, eps=0.0, weight_decay=0.01)
    _, a = run(R.lamb, params, grads, **kw)
    _, b = run(R.lamb, params, [[1e3 * g for g in gs] for gs in grads], **kw)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=0)


def test_lamb_without_layer_adaptation_is_adamw():
    params, grads = random_problem(4)
    kw = dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1)
    _, a = run(R.lamb, params, grads, layer_adaptation_mask=[False] * len(params), **kw)
    _, b = run(R.adamw, params, grads, **kw)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-15)


def test_bias_correction_cancels_in_lamb_without_decay_and_eps():
    """Ignoring eps, bias correction scales r uniformly within a layer: the trust ratio cancels it."""
    params, grads = random_problem(5)
    kw = dict(lr=0.01, eps=0.0, weight_decay=0.0)
    _, a = run(R.lamb, params, grads, bias_correction=True, **kw)
    _, b = run(R.lamb, params, grads, bias_correction=False, **kw)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=0)
    # with weight decay the balance between r and lambda x changes, so the steps differ
    _, c = run(R.lamb, params, grads, bias_correction=True, **{**kw, "weight_decay": 0.1})
    _, d = run(R.lamb, params, grads, bias_correction=False, **{**kw, "weight_decay": 0.1})
    assert max(np.max(np.abs(x - y)) for x, y in zip(c, d)) > 1e-6


def test_lamb_with_zero_betas_is_scaled_sign_descent():
    """beta1 = beta2 = 0 (and eps = lambda = 0): r = sign(g), so each layer steps lr ||x|| sign(g) / sqrt(d)."""
    params, grads = random_problem(6)
    _, x_new = R.lamb(None, params, grads[0], lr=0.1, beta1=0.0, beta2=0.0, eps=0.0, weight_decay=0.0)
    for x, g, y in zip(params, grads[0], x_new):
        expected = x - 0.1 * np.linalg.norm(x) * np.sign(g) / math.sqrt(x.size)
        np.testing.assert_allclose(y, expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Trust ratios and the zero-norm rule.


def test_trust_ratio_by_hand_for_each_norm():
    x = np.array([[3.0, -4.0], [0.0, 0.0]])       # ||x||_1 = 7, ||x||_2 = 5, ||x||_inf = 4
    u = np.array([[1.0, 2.0], [-2.0, 0.0]])       # ||u||_1 = 5, ||u||_2 = 3, ||u||_inf = 2
    assert R.trust_ratio(x, u, "l1") == pytest.approx(7 / 5)
    assert R.trust_ratio(x, u, "l2") == pytest.approx(5 / 3)
    assert R.trust_ratio(x, u, "linf") == pytest.approx(4 / 2)
    assert R.trust_ratio(x, u, "l2", trust_clip=(0.0, 3.0)) == pytest.approx(3 / 3)
    assert R.trust_ratio(x, u, "l2", trust_clip=(6.0, 10.0)) == pytest.approx(6 / 3)


@pytest.mark.parametrize("norm", R.NORMS)
def test_lamb_state_reports_the_trust_ratio_used(norm):
    """With lambda = 0 and bias correction, LAMB's first r is g / (|g| + eps): the ratio is computable by hand."""
    x = [np.array([3.0, -4.0]), np.array([[1.0, 2.0, 2.0]])]
    g = [np.array([0.5, -2.0]), np.array([[-1.0, 1.0, 3.0]])]
    eps = 1e-6
    state, _ = R.lamb(None, x, g, lr=0.1, eps=eps, weight_decay=0.0, norm=norm)
    for xi, gi, rho in zip(x, g, state["trust_ratio"]):
        r = gi / (np.abs(gi) + eps)
        assert rho == pytest.approx(R.layer_norm(xi, norm) / R.layer_norm(r, norm), rel=1e-12)


@pytest.mark.parametrize("norm", R.NORMS)
@pytest.mark.parametrize("fn", [R.lamb, R.lars, R.nlamb, R.nnlamb, R.lars_2017])
def test_zero_norm_layers_take_finite_steps(fn, norm):
    """A zero weight layer moves by lr * u (trust ratio 1); a zero-gradient layer stays finite."""
    kw = {} if fn is R.lars_2017 else {"norm": norm}
    params = [np.zeros((3, 2)), np.ones(4), np.zeros(0)]
    grads = [np.ones((3, 2)), np.zeros(4), np.zeros(0)]
    state, x = fn(None, params, grads, lr=0.1, **kw)
    assert all(np.all(np.isfinite(a)) for a in x)
    assert state["trust_ratio"][0] == 1.0
    assert np.all(x[0] != 0)  # the zero-initialised layer moved
    state, x = fn(state, x, [np.zeros((3, 2)), np.zeros(4), np.zeros(0)], lr=0.1, **kw)
    assert all(np.all(np.isfinite(a)) for a in x)


def test_masks_exclude_layers_from_decay_and_adaptation():
    params, grads = random_problem(7)
    n = len(params)
    state, x = R.lamb(None, params, grads[0], lr=0.1, weight_decay=0.5,
                      weight_decay_mask=[True] * (n - 1) + [False],
                      layer_adaptation_mask=[True] * (n - 1) + [False])
    assert state["trust_ratio"][-1] == 1.0
    g = grads[0][-1]
    np.testing.assert_allclose(x[-1], params[-1] - 0.1 * g / (np.abs(g) + 1e-6), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Adam and the Nesterov variants worked by hand.


def test_first_bias_corrected_adam_step():
    params, grads = random_problem(8)
    eps = 1e-3
    _, x = R.adam(None, params, grads[0], lr=0.5, eps=eps)
    for before, g, after in zip(params, grads[0], x):
        np.testing.assert_allclose(after, before - 0.5 * g / (np.abs(g) + eps), rtol=1e-13)


G1 = np.array([1.0, -2.0])
G2 = np.array([3.0, 1.0])


def _two_steps(fn):
    """Two steps with beta1 = beta2 = 1/2, a constant schedule, eps = lambda = 0, lr = 1 and no layer
    adaptation, so that x_1 - x_3 = r_1 + r_2 exposes the paper's estimators m_hat, v_hat directly."""
    kw = dict(lr=1.0, beta1=0.5, beta2=0.5, eps=0.0, weight_decay=0.0, momentum_decay=None,
              layer_adaptation_mask=[False])
    x0 = [np.array([0.3, 0.7])]
    state, x1 = fn(None, x0, [G1], **kw)
    _, x2 = fn(state, x1, [G2], **kw)
    return x0[0] - x1[0], x1[0] - x2[0]


def test_nlamb_two_steps_by_hand():
    # m_1 = g1/2; m_hat_1 = (1/2) m_1 / (1 - 1/4) + (1/2) g1 / (1 - 1/2) = g1/3 + g1 = 4/3 g1
    # v_1 = g1^2/2; v_hat_1 = (1/2) v_1 / (1 - 1/2) = g1^2 / 2
    r1 = (4 / 3 * G1) / np.sqrt(G1**2 / 2)
    # m_2 = g1/4 + g2/2; m_hat_2 = (1/2) m_2 / (1 - 1/8) + (1/2) g2 / (1 - 1/4) = 4/7 m_2 + 2/3 g2
    # v_2 = g1^2/4 + g2^2/2; v_hat_2 = (1/2) v_2 / (1 - 1/4) = 2/3 v_2
    m2, v2 = G1 / 4 + G2 / 2, G1**2 / 4 + G2**2 / 2
    r2 = (4 / 7 * m2 + 2 / 3 * G2) / np.sqrt(2 / 3 * v2)
    step1, step2 = _two_steps(R.nlamb)
    np.testing.assert_allclose(step1, r1, rtol=1e-14)
    np.testing.assert_allclose(step2, r2, rtol=1e-14)


def test_nnlamb_two_steps_by_hand():
    # v_hat_1 = (1/2) v_1 / (1 - 1/4) + (1/2) g1^2 / (1 - 1/2) = g1^2/3 + g1^2 = 4/3 g1^2
    r1 = (4 / 3 * G1) / np.sqrt(4 / 3 * G1**2)
    # v_hat_2 = (1/2) v_2 / (1 - 1/8) + (1/2) g2^2 / (1 - 1/4) = 4/7 v_2 + 2/3 g2^2
    m2, v2 = G1 / 4 + G2 / 2, G1**2 / 4 + G2**2 / 2
    r2 = (4 / 7 * m2 + 2 / 3 * G2) / np.sqrt(4 / 7 * v2 + 2 / 3 * G2**2)
    step1, step2 = _two_steps(R.nnlamb)
    np.testing.assert_allclose(step1, r1, rtol=1e-14)
    np.testing.assert_allclose(step2, r2, rtol=1e-14)


def test_dozat_momentum_schedule():
    assert R.momentum_schedule(0.9, 1, 0.004) == pytest.approx(0.9 * (1 - 0.5 * 0.96**0.004))
    assert R.momentum_schedule(0.9, 7, None) == 0.9
    assert R.momentum_product(0.9, 3, None) == pytest.approx(0.9**3)
    # the schedule warms up towards beta1
    values = [R.momentum_schedule(0.9, t) for t in (1, 100, 10_000, 1_000_000)]
    assert values == sorted(values) and values[-1] == pytest.approx(0.9, rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# Reductions between algorithms.


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_without_adaptation_is_heavy_ball_sgd_at_scaled_lr(nesterov):
    """m_t (EMA, m_0 = 0) is (1 - beta1) times SGD's heavy-ball buffer b_t, so LARS with rho = 1 is SGD at
    lr * (1 - beta1), weight decay included; with Nesterov, u_t = beta1 m_t + (1 - beta1) d_t is
    (1 - beta1)(d_t + beta1 b_t), SGD's Nesterov step."""
    params, grads = random_problem(9)
    _, a = run(R.lars, params, grads, lr=0.1, beta1=0.9, weight_decay=0.01, nesterov=nesterov,
               layer_adaptation_mask=[False] * len(params))
    _, b = run(R.sgd_momentum, params, grads, lr=0.1 * (1 - 0.9), momentum=0.9, weight_decay=0.01,
               nesterov=nesterov)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


def test_lars_trust_ratio_makes_momentum_scale_irrelevant():
    """With adaptation on, LARS's step is unchanged if m is replaced by the heavy-ball buffer (same direction)."""
    params, grads = random_problem(10)
    state, x = run(R.lars, params, grads, lr=0.1, beta1=0.9, weight_decay=0.0)
    heavy_ball, _ = run(R.sgd_momentum, params, grads, lr=0.0, momentum=0.9)
    for m, b in zip(state["m"], heavy_ball["b"]):
        np.testing.assert_allclose(m, (1 - 0.9) * b, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Agreement with independent implementations (float64).

torch = pytest.importorskip("torch")


def _run_torch(optimizer_class, params, grads, **kw):
    tensors = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # NAdam keeps its schedule product in the default dtype
    try:
        opt = optimizer_class(tensors, **kw)
        for gs in grads:
            for t, g in zip(tensors, gs):
                t.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
    finally:
        torch.set_default_dtype(default)
    return [t.detach().numpy() for t in tensors]


@pytest.mark.parametrize(
    "fn, optimizer, kw, torch_kw",
    [
        (R.sgd_momentum, "SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01), {}),
        (R.sgd_momentum, "SGD", dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.0), {}),
        (R.sgd_momentum, "SGD", dict(lr=0.1, momentum=0.8, dampening=0.3), {}),
        (R.adagrad, "Adagrad", dict(lr=0.1, weight_decay=0.01), {}),
        (R.adam, "Adam", dict(lr=0.01, weight_decay=0.01), dict(betas=(0.9, 0.999))),
        (R.adamw, "AdamW", dict(lr=0.01, weight_decay=0.1, eps=1e-6), dict(betas=(0.9, 0.999))),
        (R.nadam, "NAdam", dict(lr=0.01, weight_decay=0.01), dict(betas=(0.9, 0.999), momentum_decay=4e-3)),
    ],
)
def test_baselines_match_torch_optim(fn, optimizer, kw, torch_kw):
    params, grads = random_problem(11, steps=12)
    _, expected = run(fn, params, grads, **kw)
    torch_kw = {**{k: v for k, v in kw.items() if k not in ("beta1", "beta2")}, **torch_kw}
    got = _run_torch(getattr(torch.optim, optimizer), params, grads, **torch_kw)
    for x, y in zip(got, expected):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


def test_lars_2017_matches_optax_lars():
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    params, grads = random_problem(12)
    kw = dict(weight_decay=0.01, trust_coefficient=0.02, eps=1e-9, momentum=0.9)
    _, expected = run(R.lars_2017, params, grads, lr=0.1, **kw)
    with jax.enable_x64(True):
        tx = optax.lars(0.1, weight_decay=0.01, trust_coefficient=0.02, eps=1e-9, momentum=0.9)
        p = [jax.numpy.asarray(a) for a in params]
        state = tx.init(p)
        for gs in grads:
            updates, state = tx.update([jax.numpy.asarray(g) for g in gs], state, p)
            p = optax.apply_updates(p, updates)
        got = [np.asarray(a) for a in p]
    for x, y in zip(got, expected):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)



def test_lars_2017_paper_denominator():
    """The 2017 paper's local rate kappa ||x|| / (||g|| + lambda ||x||), by hand; it equals optax's
    kappa ||x|| / ||g + lambda x|| when lambda = 0, and is smaller otherwise (triangle inequality)."""
    rng = np.random.default_rng(3)
    x, g = [rng.standard_normal((6, 5))], [rng.standard_normal((6, 5))]
    lam, kappa, lr = 0.5, 0.02, 0.1
    state, new = R.lars_2017(None, x, g, lr=lr, weight_decay=lam, trust_coefficient=kappa,
                             trust_denominator="separate")
    rho = kappa * np.linalg.norm(x[0]) / (np.linalg.norm(g[0]) + lam * np.linalg.norm(x[0]))
    np.testing.assert_allclose(new[0], x[0] - lr * rho * (g[0] + lam * x[0]), rtol=1e-14)
    assert state["trust_ratio"][0] < R.lars_2017(None, x, g, lr=lr, weight_decay=lam,
                                                 trust_coefficient=kappa)[0]["trust_ratio"][0]
    params, grads = random_problem(13)
    _, a = run(R.lars_2017, params, grads, lr=0.1, weight_decay=0.0, trust_denominator="separate")
    _, b = run(R.lars_2017, params, grads, lr=0.1, weight_decay=0.0)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p, q, rtol=1e-14)


def test_lars_2017_first_step_against_algorithm_1():
    """With kappa = 1 the first step of optax's form equals Algorithm 1's in every nonzero layer; the 2017
    paper's form equals it only when lambda = 0."""
    rng = np.random.default_rng(4)
    x, g = [rng.standard_normal((8, 3))], [rng.standard_normal((8, 3))]
    for lam in (0.0, 0.1):
        _, alg1 = R.lars(None, x, g, lr=0.05, beta1=0.9, weight_decay=lam)
        _, combined = R.lars_2017(None, x, g, lr=0.05, weight_decay=lam, trust_coefficient=1.0)
        _, separate = R.lars_2017(None, x, g, lr=0.05, weight_decay=lam, trust_coefficient=1.0,
                                  trust_denominator="separate")
        np.testing.assert_allclose(combined[0], alg1[0], rtol=1e-13)
        if lam == 0.0:
            np.testing.assert_allclose(separate[0], alg1[0], rtol=1e-13)
        else:
            assert np.linalg.norm(separate[0] - x[0]) < np.linalg.norm(alg1[0] - x[0]) * (1 - 1e-3)


def test_lars_2017_rejects_unknown_denominator():
    x, g = [np.ones(3)], [np.ones(3)]
    with pytest.raises(ValueError, match="trust_denominator must be 'combined'.*got 'sum'"):
        R.lars_2017(None, x, g, lr=0.1, trust_denominator="sum")

# ---------------------------------------------------------------------------------------------------
# Inputs: never mutated; bad values named in the error.


def test_inputs_are_not_mutated():
    params, grads = random_problem(13)
    copies = [p.copy() for p in params], [g.copy() for g in grads[0]]
    state, _ = R.lamb(None, params, grads[0], lr=0.1)
    m_before = [m.copy() for m in state["m"]]
    R.lamb(state, params, grads[0], lr=0.1)
    for a, b in zip(params + grads[0] + state["m"], copies[0] + copies[1] + m_before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(norm="l3"), "norm must be one of"),
        (dict(trust_clip=(2.0, 1.0)), "trust_clip must satisfy"),
        (dict(trust_clip=(1.0,)), "trust_clip must be None or a pair"),
        (dict(lr=-1.0), "lr must be a finite number >= 0, got -1.0"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(beta1=1.0), "beta1 must be in [0, 1), got 1.0"),
        (dict(beta2=-0.1), "beta2 must be a finite number >= 0"),
        (dict(eps=float("inf")), "eps must be a finite number"),
        (dict(weight_decay=-0.01), "weight_decay must be a finite number >= 0"),
        (dict(weight_decay_mask=[True]), "weight_decay_mask has 1 entries"),
    ],
)
def test_bad_hyperparameters_are_named(kw, message):
    params, grads = random_problem(14)
    kw = {"lr": 0.1, **kw}
    with pytest.raises(ValueError) as info:
        R.lamb(None, params, grads[0], **kw)
    assert message in str(info.value)


def test_bad_structure_and_types():
    with pytest.raises(ValueError, match="params has 1 layers but grads has 2"):
        R.lamb(None, [np.ones(2)], [np.ones(2), np.ones(2)], lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        R.lamb(None, [np.ones(2)], [np.ones(3)], lr=0.1)
    with pytest.raises(TypeError, match="complex"):
        R.lamb(None, [np.ones(2, dtype=complex)], [np.ones(2)], lr=0.1)
    with pytest.raises(ValueError, match="nesterov must be one of"):
        R.check_nesterov("nnn")
    with pytest.raises(ValueError, match="momentum_decay"):
        R.nlamb(None, [np.ones(2)], [np.ones(2)], lr=0.1, momentum_decay=-1.0)
