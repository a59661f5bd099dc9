"""``param_groups``: BERT's two parameter groups for LAMB (decay and adaptation, or neither)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["param_groups", "NORMALIZATION_LAYERS"]

# Module types whose parameters are normalization weights (scales and shifts), by type rather than by name.
NORMALIZATION_LAYERS: tuple[type, ...] = tuple(
    t for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*d
        nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", None),
    ) if t is not None
)


def param_groups(model: nn.Module, weight_decay: float = 0.01,
                 no_decay: Iterable[str] = ("bias", "norm"),
                 no_decay_types: Iterable[type] = NORMALIZATION_LAYERS) -> list[dict]:
    r"""Split a model's parameters the way BERT's LAMB recipe does, for :class:`Lamb` or :class:`Lars`.

    Returns (up to) two groups:

    - ``{"params": [...], "weight_decay": weight_decay, "layer_adaptation": True}``: every other parameter;
    - ``{"params": [...], "weight_decay": 0.0, "layer_adaptation": False}``: parameters whose qualified name
      (``"encoder.layer.0.attention.output.LayerNorm.weight"``) contains one of ``no_decay`` as a
      case-insensitive substring, or that belong directly to a module of one of ``no_decay_types``
      (LayerNorm, BatchNorm, GroupNorm, RMSNorm, ...). These get no weight decay and trust ratio 1, as in the
      official BERT/LAMB code (biases and normalization weights).

    A parameter shared between modules (tied weights) appears once, in the group of its first name. Empty
    groups are left out.
    """
    if isinstance(no_decay, str):
        raise TypeError(f"no_decay must be a collection of substrings, not the string {no_decay!r} "
                        f"(which would match character by character); write ({no_decay!r},)")
    patterns = tuple(s.lower() for s in no_decay)
    types = tuple(no_decay_types)
    decay, excluded, seen = [], [], set()
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, types) or any(s in name.lower() for s in patterns):
                excluded.append(p)
            else:
                decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "layer_adaptation": True})
    if excluded:
        groups.append({"params": excluded, "weight_decay": 0.0, "layer_adaptation": False})
    return groups
