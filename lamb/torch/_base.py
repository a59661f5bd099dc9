"""What Lamb and Lars share: argument validation, path selection, state dtypes, state_dict loading."""

from __future__ import annotations

import math
from itertools import chain

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _device_dtype_check_for_fused, _foreach_supported_types, _get_scalar_dtype

from ..reference import check_norm, check_trust_clip
from ._functional import _compute_dtype


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    return float(value)


def check_nonnegative(name: str, value) -> None:
    """A finite number >= 0 (lr, eps, weight_decay, momentum_decay), else a ValueError/TypeError naming it."""
    value = _check_real(name, value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_lr(lr) -> None:
    """lr: a finite number >= 0, or a 1-element floating tensor holding one (read once, at construction)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"lr as a Tensor must have 1 floating-point element, got shape {tuple(lr.shape)} "
                             f"and dtype {lr.dtype}")
        value = float(lr.detach().cpu())
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"lr must be a finite number >= 0, got tensor({value!r})")
        return
    check_nonnegative("lr", lr)


def check_beta(name: str, value) -> None:
    value = _check_real(name, value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_optional_bool(name: str, value) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be None, True or False, got {value!r}")


def state_dtype(p: Tensor) -> torch.dtype:
    """Moments are fp32 for fp16/bf16 parameters, else in the parameter's dtype."""
    return _compute_dtype(p.dtype)


class LayerwiseOptimizer(Optimizer):
    """Base of Lamb and Lars: per-group validation, the foreach default, parameter checks, state_dict."""

    _name = "LayerwiseOptimizer"
    # Floating state kept at a fixed dtype on the host (never cast to the parameter's dtype or device).
    _host_float64_state: tuple[str, ...] = ()
    # Floating state on the parameter's device in the state dtype (fp32 for fp16/bf16 parameters).
    _device_state: tuple[str, ...] = ()
    # Group options that a pickled optimizer may lack (saved before they existed), with their defaults.
    _option_defaults: dict = {"norm": "l2", "trust_clip": None, "layer_adaptation": True, "maximize": False,
                              "foreach": None, "fused": None}

    def _check_group(self, group: dict) -> None:
        raise NotImplementedError

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self._option_defaults.items():
                group.setdefault(key, value)
            # A state dict may hold the counters as numbers (torch's test_load_nontensor_step does so; older
            # or hand-made ones too): back to host tensors, as torch.optim.Adam's __setstate__ does.
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_get_scalar_dtype())
                for key in self._host_float64_state:
                    if key in p_state and not torch.is_tensor(p_state[key]):
                        p_state[key] = torch.tensor(float(p_state[key]), dtype=torch.float64)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # Validate the group's options (defaults filled in): per-group overrides get the same checks.
        self._check_group(group)
        group["norm"] = check_norm(group["norm"])
        group["trust_clip"] = check_trust_clip(group["trust_clip"])
        check_lr(group["lr"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_bool("layer_adaptation", group["layer_adaptation"])
        check_bool("maximize", group["maximize"])
        check_optional_bool("foreach", group["foreach"])
        check_optional_bool("fused", group["fused"])
        if group["fused"] and group["foreach"]:
            raise ValueError("fused=True and foreach=True cannot both be set; choose one path")
        for p in group["params"]:
            if torch.is_complex(p):
                raise TypeError(f"{self._name} does not support complex parameters (got one of dtype {p.dtype} "
                                f"and shape {tuple(p.shape)}); pass torch.view_as_real(p) instead")
            if not p.is_floating_point():
                raise TypeError(f"{self._name} needs floating-point parameters, got dtype {p.dtype}")

    def _params_with_grad(self, group: dict, params: list, grads: list):
        """Yields (p, its state) for each parameter of ``group`` that has a gradient, after checking the gradient
        and appending p to ``params`` and its gradient to ``grads``."""
        for p in group["params"]:
            if p.grad is None:
                continue
            self._check_grad(p)
            if group["fused"]:
                # torch.optim's check and message (e.g. for meta tensors), before any state is created.
                _device_dtype_check_for_fused(p)
            params.append(p)
            grads.append(p.grad)
            yield p, self.state[p]

    def _check_grad(self, p: Tensor) -> None:
        if p.grad.is_sparse:
            raise TypeError(f"{self._name} does not support sparse gradients (parameter of shape "
                            f"{tuple(p.shape)} has a {p.grad.layout} gradient); use dense gradients, e.g. "
                            f"nn.Embedding(sparse=False)")
        if torch.is_complex(p.grad):
            raise TypeError(f"{self._name} does not support complex gradients (dtype {p.grad.dtype})")

    @staticmethod
    def _use_foreach(group: dict, params: list[Tensor]) -> bool:
        """foreach=None picks the multi-tensor path (on CPU too, unlike torch.optim's GPU-only default)."""
        if group["foreach"] is not None:
            return group["foreach"]
        return not torch.jit.is_scripting() and all(type(p) in _foreach_supported_types for p in params)

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, keeping each state tensor's dtype and device rule.

        torch casts every floating state tensor to its parameter's dtype and device. Here the moments of
        fp16/bf16 parameters stay fp32 and the Nesterov product stays a float64 host tensor, so they are
        restored from the saved values (a lossless copy) after torch's loading.
        """
        saved_state = {k: dict(v) for k, v in state_dict["state"].items()}
        saved_ids = list(chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        super().load_state_dict(state_dict)
        params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        id_map = dict(zip(saved_ids, params))
        for k, values in saved_state.items():
            if k not in id_map:
                continue
            p = id_map[k]
            state = self.state[p]
            for key, value in values.items():
                if not torch.is_tensor(value):
                    continue
                if key in self._host_float64_state:
                    state[key] = value.to(device="cpu", dtype=torch.float64, copy=True)
                elif key in self._device_state or key == "trust_ratio":
                    state[key] = value.to(device=p.device, dtype=state_dtype(p), copy=True)
