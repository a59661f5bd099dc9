r"""``Lars``: LARS as the LAMB paper's Algorithm 1 states it, as a ``torch.optim.Optimizer``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._base import LayerwiseOptimizer, check_beta, state_dtype
from ._functional import lars

__all__ = ["Lars"]


class Lars(LayerwiseOptimizer):
    r"""LARS, the paper's Algorithm 1: the trust ratio normalizes the momentum.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)(g_t + \lambda x_t), \qquad m_0 = 0 \\
        u_t &= m_t \qquad\text{or, with nesterov=True,}\qquad u_t = \beta_1 m_t + (1-\beta_1)(g_t + \lambda x_t) \\
        x_{t+1}^{(i)} &= x_t^{(i)} - \eta_t \frac{\phi(\|x_t^{(i)}\|)}{\|u_t^{(i)}\|} u_t^{(i)}

    with the trust ratio 1 where :math:`\|x\| = 0` or :math:`\|u\| = 0`. This is :func:`lamb.reference.lars`
    (the Nesterov form is defined here; see below).

    **The exact map to torch.optim.SGD.** Because :math:`m_0 = 0`, :math:`m_t = (1-\beta_1) b_t` where
    :math:`b_t = \beta_1 b_{t-1} + (g_t + \lambda x_t)`, :math:`b_1 = g_1 + \lambda x_1`, is ``SGD``'s
    heavy-ball buffer (dampening 0, L2 weight decay). Hence with ``layer_adaptation=False``::

        Lars(params, lr=eta, momentum=beta1, weight_decay=lam)
            == torch.optim.SGD(params, lr=eta * (1 - beta1), momentum=beta1, weight_decay=lam)

    and the same with ``nesterov=True`` on both sides: SGD's Nesterov direction
    :math:`g_t + \lambda x_t + \beta_1 b_t` times :math:`(1-\beta_1)` is the :math:`u_t` above. With layer
    adaptation on, the factor :math:`(1-\beta_1)` cancels in :math:`u / \|u\|`, so LARS is scale-free in it.

    This is *not* the 2017 LARS (You, Gitman and Ginsburg; ``optax.lars``), which scales the gradient by the
    trust ratio before the momentum (:func:`lamb.reference.lars_2017`).

    Args:
        params: parameters or param groups; every option can be set per group.
        lr: :math:`\eta_t` (float or 1-element tensor). Default 1e-3, as ``torch.optim.SGD`` (so that param
            groups may each set their own); LARS's learning rate depends on the batch size, so set it.
        momentum: :math:`\beta_1` in [0, 1). Default 0.9.
        weight_decay: :math:`\lambda`, added to the gradient inside the momentum (Algorithm 1). Default 0.
        norm: ``"l2"`` (default), ``"l1"`` or ``"linf"``.
        trust_clip: ``None`` for :math:`\phi(z) = z`, or :math:`(\gamma_l, \gamma_u)` to clip :math:`\|x\|`.
        nesterov: use the look-ahead :math:`u_t` above. Default False.
        layer_adaptation: False makes the trust ratio 1 (momentum SGD, see above). Default True.
        maximize, foreach, fused: as in :class:`lamb.torch.Lamb`.

    State per parameter: ``exp_avg`` (:math:`m_t`, fp32 for fp16/bf16 parameters) and ``trust_ratio`` (the
    last step's, a 0-d device tensor).
    """

    _name = "Lars"
    _option_defaults = {**LayerwiseOptimizer._option_defaults, "nesterov": False}
    _device_state = ("exp_avg",)

    def __init__(self, params: ParamsT, lr: float | Tensor = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0, *,
                 norm: str = "l2", trust_clip: tuple[float, float] | None = None, nesterov: bool = False,
                 layer_adaptation: bool = True, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, norm=norm, trust_clip=trust_clip,
                        nesterov=nesterov, layer_adaptation=layer_adaptation, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        check_beta("momentum", group["momentum"])
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"nesterov must be True or False for Lars, got {group['nesterov']!r}")

    def _init_group(self, group, params, grads, momenta) -> None:
        for p, state in self._params_with_grad(group, params, grads):
            if len(state) == 0:
                state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
            momenta.append(state["exp_avg"])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, momenta = [], [], []
            self._init_group(group, params, grads, momenta)
            if not params:
                continue
            ratios = lars(
                params, grads, momenta, lr=group["lr"], beta1=group["momentum"],
                weight_decay=group["weight_decay"], norm=group["norm"], trust_clip=group["trust_clip"],
                nesterov=group["nesterov"], layer_adaptation=group["layer_adaptation"],
                maximize=group["maximize"],
                foreach=self._use_foreach(group, params) if not group["fused"] else False,
                fused=bool(group["fused"]),
            )
            for p, rho in zip(params, ratios):
                self.state[p]["trust_ratio"] = rho
        return loss
