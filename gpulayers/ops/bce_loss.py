"""Binary cross-entropy on logits (PyTorch's ``F.binary_cross_entropy_with_logits``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from .._checks import check_pair_of_floats, check_same_device
from .loss import LossCache, check_reduction, reduce_loss, scale_gradient

__all__ = ["bce_with_logits_forward", "bce_with_logits_backward"]


def _check_broadcast(name: str, what: str, arr: Any, input: Any) -> Any:
    """``arr`` (or None) floating, on the input's device, broadcasting to the input's shape; cast to its dtype."""
    if arr is None:
        return None
    if not hasattr(arr, "dtype") or np.dtype(arr.dtype).kind != "f":
        got = getattr(arr, "dtype", type(arr).__name__)
        raise TypeError(f"{name}: expected a floating-point {what} array, got {got}")
    try:
        shape = np.broadcast_shapes(tuple(arr.shape), tuple(input.shape))
    except ValueError:
        shape = None
    if shape != tuple(input.shape):
        raise ValueError(
            f"{name}: expected a {what} that broadcasts to the input's shape {tuple(input.shape)}, "
            f"got shape {tuple(arr.shape)}"
        )
    check_same_device(name, input, arr, what, same_dtype=False)
    return arr.astype(input.dtype, copy=False)


def bce_with_logits_forward(
    input: Any,
    target: Any,
    weight: Any = None,
    reduction: str = "mean",
    pos_weight: Any = None,
    *,
    name: str = "binary_cross_entropy_with_logits",
) -> tuple[Any, LossCache]:
    """``-weight * (pos_weight * y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))``, reduced.

    Computed without overflow as PyTorch does: with ``l = 1 + (pos_weight - 1) * y``,
    ``loss = (1 - y) * x + l * softplus(-x)`` and ``softplus(-x) = max(-x, 0) + log1p(exp(-|x|))``.

    Args:
        input: logits of any shape (floating).
        target: same shape, values in [0, 1] (floating; cast to the input's dtype).
        weight: rescaling weight broadcasting to the input's shape, or None.
        reduction: ``"mean"`` (default, over every element), ``"sum"`` or ``"none"``.
        pos_weight: weight of the positive term, broadcasting to the input's shape (typically
            ``(C,)`` for the last axis), or None.
        name: who is calling, for error messages.

    Returns:
        ``(loss, cache)``; ``loss`` is 0-d for "mean"/"sum", the input's shape for "none".
    """
    check_pair_of_floats(name, input, target)
    check_reduction(name, reduction)
    weight = _check_broadcast(name, "weight", weight, input)
    pos_weight = _check_broadcast(name, "pos_weight", pos_weight, input)
    xp = backend.get_array_module(input)
    y = target.astype(input.dtype, copy=False)
    zero = input.dtype.type(0)
    softplus_neg = xp.maximum(-input, zero) + xp.log1p(xp.exp(-xp.abs(input)))
    log_weight = None if pos_weight is None else 1 + (pos_weight - 1) * y
    loss = (1 - y) * input + (softplus_neg if log_weight is None else log_weight * softplus_neg)
    if weight is not None:
        loss = loss * weight
    loss = loss.astype(input.dtype, copy=False)
    cache = LossCache(name, reduction, weight=weight, input=input, y=y, log_weight=log_weight)
    return reduce_loss(loss, reduction), cache


def bce_with_logits_backward(cache: LossCache, grad_output: Any = None) -> Any:
    """Gradient w.r.t. the input: ``weight * ((1 - y) - l * sigmoid(-x))``, scaled for the reduction."""
    xp = backend.get_array_module(cache.input)
    x, y = cache.input, cache.y
    e = xp.exp(-xp.abs(x))
    one = x.dtype.type(1)
    sigmoid_neg = xp.where(x >= 0, e / (one + e), one / (one + e))  # sigmoid(-x) without overflow
    lw = cache.log_weight
    grad = (1 - y) - (sigmoid_neg if lw is None else lw * sigmoid_neg)
    if cache.weight is not None:
        grad = grad * cache.weight
    return scale_gradient(grad.astype(x.dtype, copy=False), cache, grad_output, class_axis=False)
