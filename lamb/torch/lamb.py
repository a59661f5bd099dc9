r"""``Lamb``: the paper's Algorithm 2 (and N-LAMB, NN-LAMB) as a ``torch.optim.Optimizer``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _get_scalar_dtype

from ._base import LayerwiseOptimizer, check_beta, check_nonnegative, state_dtype
from ._functional import lamb
from ..reference import check_nesterov

__all__ = ["Lamb"]


class Lamb(LayerwiseOptimizer):
    r"""LAMB (You et al., ICLR 2020, Algorithm 2), with the paper's variants as options.

    For each parameter tensor ("layer" :math:`i`) with gradient :math:`g_t`, at step :math:`t`:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t)
            \qquad\text{(with bias\_correction; paper, Figure 2)} \\
        r_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon), \qquad u_t = r_t + \lambda x_t \\
        x_{t+1}^{(i)} &= x_t^{(i)} - \eta_t\, \rho_t^{(i)} u_t^{(i)}, \qquad
            \rho_t^{(i)} = \frac{\phi(\|x_t^{(i)}\|)}{\|u_t^{(i)}\|}

    with :math:`\rho = 1` where :math:`\|x\| = 0` or :math:`\|u\| = 0` (the official implementation's rule:
    zero-initialised layers still move, nothing divides by zero). :math:`\epsilon` is outside the square root,
    as in ``torch.optim.AdamW``: with ``layer_adaptation=False`` (:math:`\rho = 1`) this *is* AdamW, and the
    tests check it against ``torch.optim.AdamW`` and :func:`lamb.reference.adamw`.

    Nesterov variants (the paper's appendix, after Dozat 2016), with the schedule
    :math:`\beta_{1,t} = \beta_1 (1 - \tfrac12 0.96^{t\psi})` (``momentum_decay`` :math:`=\psi`; ``None`` gives
    :math:`\beta_{1,t} = \beta_1`) and :math:`P_1(t) = \prod_{i \le t} \beta_{1,i}`:

    .. math::
        \hat m_t &= \frac{\beta_{1,t+1} m_t}{1 - P_1(t+1)} + \frac{(1-\beta_{1,t}) g_t}{1 - P_1(t)} \\
        \text{N-LAMB:}\quad \hat v_t &= \frac{\beta_2 v_t}{1 - \beta_2^t}, \qquad
        \text{NN-LAMB:}\quad \hat v_t = \frac{\beta_2 v_t}{1 - \beta_2^{t+1}} + \frac{(1-\beta_2) g_t^2}{1 - \beta_2^t}

    (without bias correction the denominators are 1), then :math:`r_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon)`
    and the same layer-wise update. These are :func:`lamb.reference.nlamb` and :func:`lamb.reference.nnlamb`.

    Args:
        params: parameters or param groups (dicts). Every option below can be set per group, e.g. by
            :func:`lamb.torch.param_groups` (BERT's recipe: no decay and no adaptation for biases and norms).
        lr: :math:`\eta_t`, a float or a 1-element tensor (works with ``torch.optim.lr_scheduler``). Default 1e-3.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999).
        eps: :math:`\epsilon`, added to :math:`\sqrt{\hat v_t}`. Default 1e-6 (the official code's).
            With ``eps=0`` a coordinate whose gradients were all zero divides 0 by 0.
        weight_decay: :math:`\lambda`, decoupled, inside :math:`u_t`. Default 0.01 (BERT's).
        norm: ``"l2"`` (default), ``"l1"`` or ``"linf"``: the norm :math:`\|\cdot\|` of the trust ratio
            (paper, Figure 3).
        bias_correction: divide the moments by :math:`1 - \beta^t` (the paper's "adam-correction";
            Figure 2 turns it off). Default True.
        trust_clip: ``None`` (default) for :math:`\phi(z) = z`, what the authors' code uses, or a pair
            :math:`(\gamma_l, \gamma_u)`, :math:`0 \le \gamma_l \le \gamma_u \le \infty`, for
            :math:`\phi(z) = \min(\max(z, \gamma_l), \gamma_u)` (Algorithm 2's scaling function).
        nesterov: ``None`` (LAMB), ``"n"`` (N-LAMB) or ``"nn"`` (NN-LAMB).
        momentum_decay: :math:`\psi` of the Nesterov schedule, default 4e-3 (as ``torch.optim.NAdam``);
            ``None`` for a constant :math:`\beta_1`. Unused without ``nesterov``.
        layer_adaptation: False forces :math:`\rho = 1` (the group then follows AdamW). Default True.
        maximize: ascend instead of descend (:math:`g \to -g`). Default False.
        foreach: ``None`` (default) or True for the multi-tensor path; False for the single-tensor loop. A
            default construction (``foreach=None, fused=None``) takes the foreach path on CPUs and GPUs alike;
            on a CPU with a C++ compiler, ``fused=True`` is the fastest exact path (about 4x foreach on
            BERT-base shapes), so pass it explicitly there.
        fused: True for the fused path: on the CPU (float32/float64) a C++ kernel that steps every layer in
            one call, two passes per layer, built with the system's compiler on first use (about a second,
            then cached; see ``lamb.torch._cpu_fused``); on GPUs and for fp16/bf16 a ``torch.compile`` d
            two-pass kernel per layer, whose first step compiles it (seconds to tens of seconds, once per
            process and variant). Not for DTensor parameters.

    State per parameter: ``step`` (a float host tensor, as ``torch.optim.Adam``'s), ``exp_avg``
    (:math:`m_t`) and ``exp_avg_sq`` (:math:`v_t`) (fp32 for fp16/bf16 parameters), ``mu_product``
    (:math:`P_1(t)`, float64 on the host, only with ``nesterov``), and ``trust_ratio``: the
    :math:`\rho_t^{(i)}` of the last step, a 0-d tensor on the parameter's device. Reading it is the caller's
    choice; the optimizer never does (no device sync).

    Zero gradients do not make a no-op step: from a fresh state, with ``weight_decay`` :math:`\lambda > 0`, the
    update :math:`u_t = r_t + \lambda x_t` is :math:`\lambda x_t` (:math:`m = v = 0` give :math:`r_t = 0`), and the trust
    ratio scales it to :math:`\eta \|x_t\|`, so the weights shrink by the factor :math:`1 - \eta` per step
    whatever :math:`\lambda` is. PyTorch's "zero gradients change nothing" check holds for ``weight_decay=0``
    (the default 0.01 is BERT's).

    Mixed precision: fp16/bf16 parameters get fp32 moments, fp32 norms and fp32 arithmetic, rounded once
    when written back. ``torch.amp.GradScaler`` works as with ``torch.optim.AdamW`` (foreach): ``scaler.step``
    unscales the gradients and skips the step when one is not finite. FSDP2 (``fully_shard``, DTensor
    parameters): the norms are of the whole layer, all-reduced over the shards. DDP needs nothing.

    Example::

        opt = Lamb(param_groups(model, weight_decay=0.01), lr=1e-3)
        loss = model(batch).loss; loss.backward(); opt.step(); opt.zero_grad()
        ratios = [opt.state[p]["trust_ratio"] for p in model.parameters()]  # device tensors
    """

    _name = "Lamb"
    _option_defaults = {**LayerwiseOptimizer._option_defaults, "bias_correction": True, "nesterov": None,
                        "momentum_decay": 4e-3}
    _host_float64_state = ("mu_product",)
    _device_state = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: ParamsT, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, *, norm: str = "l2", bias_correction: bool = True,
                 trust_clip: tuple[float, float] | None = None, nesterov: str | None = None,
                 momentum_decay: float | None = 4e-3, layer_adaptation: bool = True, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, norm=norm,
                        bias_correction=bias_correction, trust_clip=trust_clip, nesterov=nesterov,
                        momentum_decay=momentum_decay, layer_adaptation=layer_adaptation, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        check_beta("betas[0] (beta1)", betas[0])
        check_beta("betas[1] (beta2)", betas[1])
        group["betas"] = (float(betas[0]), float(betas[1]))
        check_nonnegative("eps", group["eps"])
        check_nesterov(group["nesterov"])
        if group["momentum_decay"] is not None:
            check_nonnegative("momentum_decay", group["momentum_decay"])
        if not isinstance(group["bias_correction"], bool):
            raise TypeError(f"bias_correction must be True or False, got {group['bias_correction']!r}")

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, state_steps, mu_products) -> None:
        """Collect the parameters that have a gradient and their state (created on first use)."""
        for p, state in self._params_with_grad(group, params, grads):
            if len(state) == 0:
                # A host counter, as torch.optim.Adam's without capturable: reading it syncs nothing.
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype(p),
                                                       memory_format=torch.preserve_format)
            if group["nesterov"] is not None and "mu_product" not in state:
                # P1(t) so far, exact in float64 (torch.optim.NAdam's float32 product drifts by ~1e-10).
                state["mu_product"] = torch.tensor(1.0, dtype=torch.float64)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            state_steps.append(state["step"])
            mu_products.append(state.get("mu_product"))

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, state_steps, mu_products = [], [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, state_steps, mu_products)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            ratios = lamb(
                params, grads, exp_avgs, exp_avg_sqs, state_steps,
                mu_products if group["nesterov"] is not None else None,
                lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                bias_correction=group["bias_correction"], norm=group["norm"], trust_clip=group["trust_clip"],
                nesterov=group["nesterov"], momentum_decay=group["momentum_decay"],
                layer_adaptation=group["layer_adaptation"], maximize=group["maximize"],
                foreach=self._use_foreach(group, params) if not group["fused"] else False,
                fused=bool(group["fused"]),
            )
            for p, rho in zip(params, ratios):
                self.state[p]["trust_ratio"] = rho
        return loss
