r"""LAMB and LARS for JAX, as optax transformations that follow :mod:`lamb.reference` exactly.

- :func:`lamb`: the paper's Algorithm 2, with ``norm``, ``bias_correction``, ``trust_clip``, the Nesterov
  variants ``nesterov="n"|"nn"`` (N-LAMB, NN-LAMB), weight-decay and layer-adaptation masks.
- :func:`lars`: the paper's Algorithm 1 (the trust ratio normalizes the momentum; not ``optax.lars``).
- The building blocks, usable in ``optax.chain``: :func:`scale_by_adam` (with a bias-correction switch),
  :func:`scale_by_nesterov_adam`, :func:`scale_by_ema_momentum`, :func:`scale_by_trust_ratio`.

Example::

    import optax
    from lamb import jax as lj

    not_bias = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    tx = lj.lamb(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000), weight_decay=0.01,
                 mask=not_bias, layer_adaptation_mask=not_bias)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    ratios = optax.tree_utils.tree_get(state, "trust_ratio")   # last step's per-layer trust ratios

Reference: You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76 minutes*, ICLR 2020.
"""

from .aliases import lamb, lars
from .transforms import (NESTEROV_VARIANTS, NORMS, ScaleByEmaMomentumState, ScaleByNesterovAdamState,
                         ScaleByTrustRatioState, layer_norm, momentum_schedule, scale_by_adam,
                         scale_by_ema_momentum, scale_by_nesterov_adam, scale_by_trust_ratio, trust_ratio)

__all__ = [
    "lamb", "lars",
    "scale_by_adam", "scale_by_nesterov_adam", "scale_by_ema_momentum", "scale_by_trust_ratio",
    "ScaleByNesterovAdamState", "ScaleByEmaMomentumState", "ScaleByTrustRatioState",
    "layer_norm", "trust_ratio", "momentum_schedule", "NORMS", "NESTEROV_VARIANTS",
]
