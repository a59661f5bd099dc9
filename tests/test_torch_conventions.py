"""lamb.torch under the conventions that PyTorch's own optimizer tests (and timm's factory) assume: a state dict
whose step is a number, an lr tensor of any 1-element shape, Lars's default lr, fused=True on the meta device,
and the fused path in a process that builds many optimizer configurations."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lamb.torch import Lamb, Lars
from lamb.torch import _functional

PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def _params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in [(4, 3), (3,), (10,)]]


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("make", [lambda ps, kw: Lamb(ps, lr=0.01, **kw),
                                  lambda ps, kw: Lamb(ps, lr=0.01, nesterov="nn", **kw)], ids=["lamb", "nnlamb"])
def test_state_dict_with_a_numeric_step_loads_and_steps_like_the_tensor_one(make, path):
    """PyTorch's test_load_nontensor_step: torch.optim.AdamW turns a number back into its step tensor."""
    params = _params()
    opt = make(params, PATHS[path])
    for k in range(2):
        _grads(params, k)
        opt.step()
    saved = opt.state_dict()
    twin_params = [nn.Parameter(p.detach().clone()) for p in params]
    twin = make(twin_params, PATHS[path])
    twin.load_state_dict(saved)
    numeric = make([nn.Parameter(p.detach().clone()) for p in params], PATHS[path])
    state_dict = opt.state_dict()
    for state in state_dict["state"].values():
        state["step"] = state["step"].item()                     # a Python float, as in torch's test
        if "mu_product" in state:
            state["mu_product"] = state["mu_product"].item()
    numeric.load_state_dict(state_dict)
    numeric_params = numeric.param_groups[0]["params"]
    for p_twin, p_num, p in zip(twin_params, numeric_params, params):
        p_twin.grad = p.grad.clone()
        p_num.grad = p.grad.clone()
    twin.step()
    numeric.step()                                               # was: TypeError: expected Tensor ... got float
    for a, b in zip(twin_params, numeric_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for p in numeric_params:
        assert torch.is_tensor(numeric.state[p]["step"]) and numeric.state[p]["step"].item() == 3.0


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_lr_tensor_of_any_one_element_shape_steps_like_the_float(cls, shape, path):
    """An lr tensor of shape (1, 1) passes construction's check, so every path must take it (was: foreach
    'Tensor lists must have the same number of tensors', single-tensor a broadcast error)."""
    lr = 0.05
    params_float, params_tensor = _params(), _params()
    opt_float = cls(params_float, lr=lr, **PATHS[path])
    opt_tensor = cls(params_tensor, lr=torch.full(shape, lr), **PATHS[path])
    for k in range(3):
        _grads(params_float, k)
        _grads(params_tensor, k)
        opt_float.step()
        opt_tensor.step()
    for a, b in zip(params_float, params_tensor):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)
    for p in params_tensor:
        assert opt_tensor.state[p]["trust_ratio"].shape == ()


def test_lr_tensor_with_more_than_one_element_is_rejected():
    with pytest.raises(ValueError, match=r"1 floating-point element.*shape \(2,\)"):
        Lamb(_params(), lr=torch.tensor([0.1, 0.2]))


def test_lars_lr_defaults_like_sgd_and_per_group_rates_need_no_constructor_lr():
    """timm's factory and PyTorch's per-group tests build Lars without lr when every group has its own."""
    a, b = _params(), _params(1)
    opt = Lars([{"params": a, "lr": 0.1}, {"params": b, "lr": 0.01}])
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert Lars(_params()).defaults["lr"] == torch.optim.SGD(_params()).defaults["lr"] == 1e-3
    _grads(a + b, 0)
    opt.step()


@pytest.mark.parametrize("cls", [Lamb, Lars])
def test_fused_on_the_meta_device_raises_torchs_error_and_leaves_no_state(cls):
    """torch.optim.AdamW(fused=True) refuses meta tensors with this message; so do we, before any state."""
    params = [nn.Parameter(torch.empty(4, 3, device="meta")), nn.Parameter(torch.empty(3, device="meta"))]
    for p in params:
        p.grad = torch.empty_like(p)
    adamw = torch.optim.AdamW([nn.Parameter(torch.empty(3, device="meta"))], fused=True)
    adamw.param_groups[0]["params"][0].grad = torch.empty(3, device="meta")
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors") as e:
        adamw.step()
    opt = cls(params, lr=0.1, fused=True)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors") as ours:
        opt.step()
    assert "meta" in str(ours.value) and str(ours.value).split(" but")[0] == str(e.value).split(" but")[0]
    assert all(len(opt.state[p]) == 0 for p in params)
    cls(params, lr=0.1, foreach=False).step()                    # the other paths run on meta tensors


# --------------------------------------------------------------------------------------------------
# The torch.compile kernels in a long-running process (bf16 layers take them on the CPU).


@pytest.fixture
def fast_compile(monkeypatch):
    """Dynamo's guards and recompile counting are the backend's same; the "eager" backend skips Inductor's
    code generation, so these tests take seconds. The compiled kernels are per-test (a fresh cache)."""
    monkeypatch.setattr(_functional, "_COMPILE_BACKEND", "eager", raising=False)
    monkeypatch.setattr(_functional, "_COMPILED", {})
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _bf16_run(seed, **options):
    params = _params(seed, torch.bfloat16)
    opt = Lamb(params, lr=0.01, fused=True, **options)
    for k in range(2):
        _grads(params, k)
        opt.step()
    return params


def test_many_fused_configurations_in_one_process_never_hit_the_recompile_limit(fast_compile, monkeypatch):
    """With the limit lowered to 2 graphs, four configurations of one kernel (was: FailOnRecompileLimitHit
    at the third: "Hard failure due to fullgraph=True") each step, exactly as the eager kernel does."""
    monkeypatch.setattr(_functional, "_RECOMPILE_LIMIT", 2)
    configurations = [dict(norm="l2"), dict(norm="l1"), dict(norm="linf"), dict(nesterov="n"),
                      dict(maximize=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                           # no fallback warning needed here
        for options in configurations:
            _bf16_run(0, **options)


def test_a_configuration_past_the_recompile_limit_falls_back_with_one_warning(fast_compile, monkeypatch):
    """Past the limit within one configuration (here 1 graph; a 1-element layer is a second graph), the step
    still runs, eagerly, with one warning per process, and gives the foreach path's result."""
    monkeypatch.setattr(_functional, "_RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(_functional, "_warned_recompile_limit", False, raising=False)
    g = torch.Generator().manual_seed(3)
    shapes = [(5, 4), (1,), (7,)]
    fused = [nn.Parameter(torch.randn(s, generator=g).to(torch.bfloat16)) for s in shapes]
    foreach = [nn.Parameter(p.detach().clone()) for p in fused]
    opt_fused, opt_foreach = Lamb(fused, lr=0.01, fused=True), Lamb(foreach, lr=0.01, foreach=True)
    with pytest.warns(UserWarning, match="recompile limit") as record:
        for k in range(3):
            _grads(fused, k)
            _grads(foreach, k)
            opt_fused.step()
            opt_foreach.step()
    assert sum("recompile limit" in str(w.message) for w in record) == 1
    for a, b in zip(fused, foreach):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=1e-2)


@pytest.mark.parametrize("path", list(PATHS))
def test_zero_gradients_move_the_weights_unless_weight_decay_is_zero(path):
    """As the docstring says: from a fresh state, a zero gradient and weight decay give x <- (1 - lr) x (the decay
    term alone, scaled by the trust ratio); PyTorch's no-op check holds with weight_decay=0."""
    for weight_decay, factor in ((0.01, 0.9), (0.0, 1.0)):
        params = _params()
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.zeros_like(p)
        Lamb(params, lr=0.1, weight_decay=weight_decay, **PATHS[path]).step()
        for p, x in zip(params, before):
            torch.testing.assert_close(p.detach(), factor * x)
