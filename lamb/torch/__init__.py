"""LAMB and LARS for PyTorch: ``torch.optim.Optimizer`` s that follow :mod:`lamb.reference` exactly.

- :class:`Lamb`: the paper's Algorithm 2, with ``norm``, ``bias_correction``, ``trust_clip``, the Nesterov
  variants ``nesterov="n"|"nn"`` (N-LAMB, NN-LAMB) and per-group ``layer_adaptation``/``weight_decay``.
- :class:`Lars`: the paper's Algorithm 1 (the trust ratio normalizes the momentum).
- :func:`param_groups`: BERT's recipe (no decay and no adaptation for biases and normalization weights).
- :func:`lamb` and :func:`lars`: the functional step on lists of tensors (single-tensor, foreach, fused).

Reference: You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76 minutes*, ICLR 2020.
"""

from ._functional import NESTEROV_VARIANTS, NORMS, lamb, lars
from .groups import NORMALIZATION_LAYERS, param_groups
from .lamb import Lamb
from .lars import Lars

__all__ = ["Lamb", "Lars", "param_groups", "lamb", "lars", "NORMS", "NESTEROV_VARIANTS", "NORMALIZATION_LAYERS"]
