"""lamb.torch at home in torch: state_dict, schedulers, closures, GradScaler, low precision, host syncs,
bad input, param groups."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from lamb import reference as R
from lamb.torch import Lamb, Lars, param_groups
from lamb.torch import _functional

PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (5,), (), (0,), (3, 2, 2)]
    params = [nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
    with torch.no_grad():
        params[1].zero_()  # a zero-initialised bias
    return params


def set_grads(params, generator, scale=1.0):
    for p in params:
        p.grad = (scale * torch.randn(p.shape, generator=generator)).to(p.dtype)


def clone_params(params):
    return [nn.Parameter(p.detach().clone()) for p in params]


# --------------------------------------------------------------------------------------------------
# state_dict


@pytest.mark.parametrize("make_opt", [
    lambda ps, path: Lamb(ps, lr=0.01, nesterov="nn", **PATHS[path]),
    lambda ps, path: Lamb(ps, lr=0.01, trust_clip=(0.1, 2.0), norm="l1", **PATHS[path]),
    lambda ps, path: Lars(ps, lr=0.1, weight_decay=1e-3, nesterov=True, **PATHS[path]),
], ids=["nnlamb", "lamb-l1-clip", "lars"])
@pytest.mark.parametrize("path,dtype", [("single", torch.float32), ("single", torch.bfloat16),
                                        ("foreach", torch.float32), ("foreach", torch.bfloat16),
                                        ("fused", torch.float32)])
def test_state_dict_round_trip_continues_bit_identically(make_opt, path, dtype):
    params = make_params(dtype)
    opt = make_opt(params, path)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        set_grads(params, g)
        opt.step()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
    grads_after = []
    for _ in range(5):  # the uninterrupted run
        set_grads(params, g)
        grads_after.append([p.grad.clone() for p in params])
        opt.step()

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = make_opt(resumed, path)
    opt2.load_state_dict(saved["opt"])
    for p, q in zip(params, resumed):  # fp32 moments of bf16 parameters, float64 P1(t) survive the load
        for key, value in opt2.state[q].items():
            assert value.dtype == opt.state[p][key].dtype, key
    for grads in grads_after:
        for q, grad in zip(resumed, grads):
            q.grad = grad
        opt2.step()
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, opt2.state[q][key]), key


# --------------------------------------------------------------------------------------------------
# LR schedulers, Tensor lr, closures


def test_lr_scheduler_follows_reference_with_the_same_lr_sequence():
    x0 = [np.random.default_rng(0).standard_normal((4, 3)), np.random.default_rng(1).standard_normal(3)]
    params = [nn.Parameter(torch.tensor(x)) for x in x0]
    opt = Lamb(params, lr=0.1, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 5) * 0.9**k)
    rng = np.random.default_rng(2)
    state, ref = None, x0
    for _ in range(12):
        grads = [rng.standard_normal(x.shape) for x in x0]
        lr = opt.param_groups[0]["lr"]
        state, ref = R.lamb(state, ref, grads, lr=lr, weight_decay=0.01)
        for p, gr in zip(params, grads):
            p.grad = torch.tensor(gr)
        opt.step()
        sched.step()
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-12)
    assert opt.param_groups[0]["lr"] != 0.1  # the schedule did move the lr


@pytest.mark.parametrize("path", ["single", "foreach", "fused"])
def test_tensor_lr_equals_float_lr(path):
    a, b = make_params(torch.float64), make_params(torch.float64)
    opt_a = Lamb(a, lr=torch.tensor(0.02, dtype=torch.float64), **PATHS[path])
    opt_b = Lamb(b, lr=0.02, **PATHS[path])
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        set_grads(a, g)
        for p, q in zip(a, b):
            q.grad = p.grad.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-15, atol=0)


def test_closure_is_called_and_its_loss_returned():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    twin = copy.deepcopy(model)
    data, target = torch.randn(16, 4), torch.randn(16, 1)
    opt, opt_twin = Lamb(model.parameters(), lr=0.01), Lamb(twin.parameters(), lr=0.01)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(data), target)
        loss.backward()
        return loss

    losses = []
    for _ in range(3):
        losses.append(opt.step(closure).item())
        opt_twin.zero_grad()
        nn.functional.mse_loss(twin(data), target).backward()
        opt_twin.step()
    assert len(calls) == 3 and losses[2] < losses[0]
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------------
# GradScaler, low precision, zeros


@pytest.mark.parametrize("opt_cls", [Lamb, Lars])
def test_grad_scaler_skips_non_finite_steps(opt_cls):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = opt_cls(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = torch.randn(8, 4)

    def backward(poison: bool):
        opt.zero_grad()
        scaler.scale(model(data).square().mean()).backward()
        if poison:
            model.weight.grad[0, 0] = math.inf

    backward(False)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(model.weight, before[0])  # a finite step is taken...
    # ...on the unscaled gradient: the first LAMB step of a layer has norm lr ||x|| whatever the scale
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    backward(True)
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)  # the step with an inf gradient is skipped
    after = opt.state_dict()
    for k, s in state["state"].items():
        for key, value in s.items():
            assert torch.equal(value, after["state"][k][key]), key
    assert scaler.get_scale() < scale


@pytest.mark.parametrize("low,path", [(torch.bfloat16, "single"), (torch.float16, "single"),
                                      (torch.bfloat16, "foreach"), (torch.float16, "foreach"),
                                      (torch.bfloat16, "fused")])
def test_low_precision_params_use_fp32_state_and_math(monkeypatch, low, path):
    """A bf16/fp16 run equals an fp32 run whose weights are rounded to bf16/fp16 after every step."""
    if path == "fused":  # bf16 takes the torch.compile kernel: the fp32 twin too, so that both round alike
        monkeypatch.setattr(_functional._cpu_fused, "supports", lambda *tensors: False)
    low_params = make_params(low)
    f32_params = [nn.Parameter(p.detach().float()) for p in low_params]
    opt_low = Lamb(low_params, lr=0.05, nesterov="n", **PATHS[path])
    opt_f32 = Lamb(f32_params, lr=0.05, nesterov="n", **PATHS[path])
    g = torch.Generator().manual_seed(4)
    for _ in range(6):
        set_grads(low_params, g)
        for p, q in zip(low_params, f32_params):
            q.grad = p.grad.float()
        opt_low.step()
        opt_f32.step()
        with torch.no_grad():
            for q in f32_params:
                q.copy_(q.to(low).float())
    for p, q in zip(low_params, f32_params):
        assert p.dtype == low
        assert opt_low.state[p]["exp_avg"].dtype == torch.float32
        assert opt_low.state[p]["trust_ratio"].dtype == torch.float32
        assert torch.equal(p.float(), q)
        assert torch.equal(opt_low.state[p]["exp_avg_sq"], opt_f32.state[q]["exp_avg_sq"])


@pytest.mark.parametrize("path", ["single", "foreach", "fused"])
@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_zero_weights_and_zero_gradients_give_no_nan(path, norm):
    params = [nn.Parameter(torch.zeros(4, 3)), nn.Parameter(torch.randn(5)), nn.Parameter(torch.zeros(()))]
    for opt in (Lamb(params, lr=0.1, norm=norm, nesterov="nn", trust_clip=(0.5, 2), **PATHS[path]),
                Lamb(params, lr=0.1, norm=norm, weight_decay=0.0, **PATHS[path]),
                Lars(params, lr=0.1, norm=norm, **PATHS[path])):
        for p in params:
            p.grad = torch.zeros_like(p)  # zero gradients: zero update, trust ratio 1
        before = [p.detach().clone() for p in params]
        opt.step()
        for p, b in zip(params, before):
            assert torch.isfinite(p).all()
            assert float(opt.state[p]["trust_ratio"]) == 1.0 or p.abs().sum() > 0
        assert torch.equal(params[0], before[0])  # zero weights, zero gradient: nothing moves
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        assert all(torch.isfinite(p).all() for p in params)
        assert not torch.equal(params[0], torch.zeros(4, 3))  # a zero-initialised layer moves (ratio 1)


# --------------------------------------------------------------------------------------------------
# Side effects and host syncs


@pytest.mark.parametrize("path", ["single", "foreach", "fused"])
def test_grads_are_not_modified(path):
    for opt_cls, kw in ((Lamb, dict(nesterov="nn", maximize=True)), (Lars, dict(weight_decay=0.1, nesterov=True))):
        params = make_params()
        opt = opt_cls(params, lr=0.1, **kw, **PATHS[path])
        set_grads(params, torch.Generator().manual_seed(5))
        grads = [p.grad.clone() for p in params]
        opt.step()
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)


@pytest.mark.parametrize("opt_factory", [
    lambda ps: Lamb(ps, lr=0.1, foreach=True),
    lambda ps: Lamb(ps, lr=0.1, foreach=True, nesterov="nn", norm="linf", trust_clip=(0.1, 3.0)),
    lambda ps: Lars(ps, lr=0.1, foreach=True, nesterov=True, norm="l1"),
], ids=["lamb", "nnlamb", "lars"])
def test_foreach_step_reads_no_tensor_value_on_the_host(monkeypatch, opt_factory):
    """No .item(), no bool()/float() of a tensor (a Python branch on a norm) except the host step counters."""
    params = make_params()
    opt = opt_factory(params)
    g = torch.Generator().manual_seed(6)
    set_grads(params, g)
    opt.step()  # creates the state
    host_counters = {id(s[k]) for s in opt.state.values() for k in ("step", "mu_product") if k in s}
    for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist"):
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _original=original, _name=name, **kwargs):
            if id(self) not in host_counters:
                raise AssertionError(f"Tensor.{_name} called during step on a tensor of shape {tuple(self.shape)}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    set_grads(params, g)
    opt.step()
    monkeypatch.undo()
    for p in params:
        assert torch.isfinite(p).all()


def test_params_without_grads_are_skipped():
    params = make_params()
    opt = Lamb(params, lr=0.1)
    set_grads(params, torch.Generator().manual_seed(7))
    params[0].grad = None
    before = params[0].detach().clone()
    opt.step()
    assert torch.equal(params[0], before) and len(opt.state[params[0]]) == 0
    assert float(opt.state[params[4]]["step"]) == 1.0


def test_add_param_group_with_its_own_options():
    a, b = make_params(seed=0), make_params(seed=1)
    opt = Lamb(a, lr=0.1)
    opt.add_param_group({"params": b, "weight_decay": 0.0, "layer_adaptation": False, "lr": 0.01})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999) and opt.param_groups[1]["lr"] == 0.01
    set_grads(a + b, torch.Generator().manual_seed(8))
    opt.step()
    assert all(float(opt.state[p]["trust_ratio"]) == 1.0 for p in b)
    with pytest.raises(ValueError, match="norm"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(2))], "norm": "l3"})


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(lr=-1.0), ValueError, r"lr must be a finite number >= 0, got -1.0"),
    (dict(lr=float("nan")), ValueError, r"lr .* got nan"),
    (dict(lr="0.1"), TypeError, r"lr must be a real number"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, r"lr as a Tensor must have 1"),
    (dict(eps=-1e-8), ValueError, r"eps must be a finite number >= 0, got -1e-08"),
    (dict(eps=float("inf")), ValueError, r"eps .* got inf"),
    (dict(weight_decay=-0.1), ValueError, r"weight_decay .* got -0.1"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\] \(beta1\) must be in \[0, 1\), got 1.0"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\] \(beta2\) must be in \[0, 1\), got -0.1"),
    (dict(betas=(0.9,)), ValueError, r"betas must be a pair"),
    (dict(norm="l3"), ValueError, r"norm must be one of \('l1', 'l2', 'linf'\), got 'l3'"),
    (dict(nesterov="nnn"), ValueError, r"nesterov must be one of \(None, 'n', 'nn'\), got 'nnn'"),
    (dict(nesterov=True), ValueError, r"nesterov must be one of"),
    (dict(trust_clip=(2.0, 1.0)), ValueError, r"trust_clip must satisfy 0 <= gamma_l <= gamma_u"),
    (dict(trust_clip=1.0), ValueError, r"trust_clip must be None or a pair"),
    (dict(trust_clip=(-1.0, 1.0)), ValueError, r"trust_clip"),
    (dict(momentum_decay=-1.0), ValueError, r"momentum_decay .* got -1.0"),
    (dict(layer_adaptation=1), TypeError, r"layer_adaptation must be True or False, got 1"),
    (dict(foreach=True, fused=True), ValueError, r"fused=True and foreach=True"),
])
def test_lamb_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Lamb([nn.Parameter(torch.randn(3))], **kwargs)


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(lr=-0.1), ValueError, r"lr must be a finite number >= 0"),
    (dict(lr=0.1, momentum=1.0), ValueError, r"momentum must be in \[0, 1\), got 1.0"),
    (dict(lr=0.1, weight_decay=float("inf")), ValueError, r"weight_decay .* got inf"),
    (dict(lr=0.1, nesterov="n"), TypeError, r"nesterov must be True or False for Lars, got 'n'"),
    (dict(lr=0.1, norm="L2"), ValueError, r"norm must be one of"),
])
def test_lars_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Lars([nn.Parameter(torch.randn(3))], **kwargs)


def test_complex_params_and_sparse_grads_are_rejected():
    with pytest.raises(TypeError, match=r"does not support complex parameters .*complex64.*view_as_real"):
        Lamb([nn.Parameter(torch.randn(3, dtype=torch.complex64))])
    embedding = nn.Embedding(10, 4, sparse=True)
    for opt in (Lamb(embedding.parameters()), Lars(embedding.parameters(), lr=0.1)):
        embedding(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(TypeError, match=r"does not support sparse gradients .*sparse=False"):
            opt.step()
        embedding.zero_grad()


# --------------------------------------------------------------------------------------------------
# param_groups (BERT's recipe)


class TinyBert(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = nn.Embedding(20, 8)
        self.LayerNorm = nn.LayerNorm(8)          # named as in Hugging Face's BERT
        self.dense = nn.Linear(8, 8)
        self.conv = nn.Conv1d(8, 8, 1)
        self.bn = nn.BatchNorm1d(8)               # caught by type: its name has no "norm"
        self.scale = nn.Parameter(torch.ones(8))  # a free parameter: decayed
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embeddings.weight  # tied weights appear once


def test_param_groups_builds_berts_two_groups():
    model = TinyBert()
    groups = param_groups(model, weight_decay=0.02)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    excluded = {names[id(p)] for p in groups[1]["params"]}
    assert decayed == {"embeddings.weight", "dense.weight", "conv.weight", "scale"}
    assert excluded == {"LayerNorm.weight", "LayerNorm.bias", "dense.bias", "conv.bias", "bn.weight", "bn.bias"}
    assert groups[0]["weight_decay"] == 0.02 and groups[0]["layer_adaptation"] is True
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["layer_adaptation"] is False
    opt = Lamb(groups, lr=0.01)  # and the optimizer takes them as they are
    assert len(opt.param_groups) == 2
    with pytest.raises(TypeError, match="collection of substrings"):
        param_groups(model, no_decay="bias")


@pytest.mark.parametrize("opt_cls,kw", [(Lamb, dict(nesterov="nn")), (Lamb, dict(trust_clip=(0.5, 2.0))),
                                        (Lars, dict(weight_decay=0.1))])
def test_cpu_cache_chunks_give_identical_results(monkeypatch, opt_cls, kw):
    """The foreach path cuts CPU tensor lists into cache-sized chunks; the chunking changes no bit."""
    import lamb.torch._functional as functional

    a, b = make_params(seed=9), make_params(seed=9)
    opt_a = opt_cls(a, lr=0.05, foreach=True, **kw)
    opt_b = opt_cls(b, lr=0.05, foreach=True, **kw)
    g = torch.Generator().manual_seed(10)
    for _ in range(4):
        set_grads(a, g)
        for p, q in zip(a, b):
            q.grad = p.grad.clone()
        opt_a.step()  # one chunk (the default size is far larger than these tensors)
        with monkeypatch.context() as m:
            m.setattr(functional, "_CPU_CHUNK_ELEMENTS", 8)
            opt_b.step()
            assert len(list(functional._device_chunks(b, [list(b)]))) == 3  # [30], [5, 1, 0], [12] elements
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        assert torch.equal(opt_a.state[p]["trust_ratio"], opt_b.state[q]["trust_ratio"])


@pytest.mark.parametrize("cls,kwargs,options", [
    (Lamb, dict(lr=0.01, norm="l1", nesterov="nn"),
     {"norm": "l2", "bias_correction": True, "trust_clip": None, "nesterov": None, "momentum_decay": 4e-3,
      "layer_adaptation": True, "maximize": False, "foreach": None, "fused": None}),
    (Lars, dict(lr=0.01, norm="linf", nesterov=True),
     {"norm": "l2", "trust_clip": None, "nesterov": False, "layer_adaptation": True, "maximize": False,
      "foreach": None, "fused": None}),
])
def test_pickle_keeps_options_and_fills_in_missing_ones(cls, kwargs, options):
    import pickle

    params = make_params(torch.float64)
    opt = cls(params, **kwargs)
    set_grads(params, torch.Generator().manual_seed(1))
    opt.step()
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.param_groups[0]["norm"] == kwargs["norm"]
    assert restored.param_groups[0]["nesterov"] == kwargs["nesterov"]
    # An optimizer pickled before these options existed gets each one's default.
    state = opt.__getstate__()
    state["param_groups"] = [{k: v for k, v in g.items() if k not in options} for g in state["param_groups"]]
    old = cls.__new__(cls)
    old.__setstate__(state)
    assert {k: old.param_groups[0][k] for k in options} == options
