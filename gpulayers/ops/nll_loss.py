"""Negative log-likelihood over log-probabilities and class indices (PyTorch's ``F.nll_loss``)."""

from __future__ import annotations

from typing import Any

from .. import backend
from .loss import (
    LossCache,
    _check_index_target,
    _check_logits,
    check_ignore_index,
    check_reduction,
    class_targets,
    class_weight,
    label_range_error,
    reduce_loss,
    scale_gradient,
)

__all__ = ["nll_loss_forward", "nll_loss_backward"]


def nll_loss_forward(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    check_labels: bool = True,
    name: str = "nll_loss",
) -> tuple[Any, LossCache]:
    """``loss_i = -weight[t_i] * input[i, t_i]``, 0 where ``t_i == ignore_index``.

    "mean" divides the sum by ``sum_i weight[t_i]`` over the samples not ignored (NaN when there
    are none), as PyTorch does; "sum" sums; "none" keeps the per-sample losses.

    Args:
        input: (N, C) or (N, C, d1, ...) log-probabilities (e.g. from :func:`log_softmax_forward`).
        target: (N,) or (N, d1, ...) integer class indices in [0, C), or ``ignore_index``.
        weight: per-class weights ``(C,)``, or None.
        ignore_index: class index whose samples count for nothing. Defaults to -100.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        check_labels: raise on out-of-range labels here (else ``cache.invalid`` tells).
        name: who is calling, for error messages.

    Returns:
        ``(loss, cache)``; ``loss`` is 0-d for "mean"/"sum", of the target's shape for "none".
    """
    _check_logits(name, input, "input")
    _check_index_target(name, input, target, probabilities_ok=False)
    check_reduction(name, reduction)
    ignore_index = check_ignore_index(name, ignore_index)
    weight = class_weight(name, weight, input)
    xp = backend.get_array_module(input)
    t = class_targets(input, target, weight, ignore_index)
    if check_labels and bool(t["invalid"]):
        raise label_range_error(name, target, input.shape[1], ignore_index)
    per_sample = (-xp.take_along_axis(input, t["index"], axis=1)[:, 0] * t["w_t"]).astype(input.dtype, copy=False)
    denominator = t["w_t"].sum() if reduction == "mean" else None
    cache = LossCache(
        name,
        reduction,
        t["invalid"],
        denominator,
        index=t["index"],
        w_t=t["w_t"],
        shape=tuple(input.shape),
        dtype=input.dtype,
    )
    return reduce_loss(per_sample, reduction, denominator), cache


def nll_loss_backward(cache: LossCache, grad_output: Any = None) -> Any:
    """Gradient of :func:`nll_loss_forward` w.r.t. the input: ``-weight[t_i]`` at the target class, scaled."""
    xp = backend.get_array_module(cache.w_t)
    shape = cache.shape
    classes = xp.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    grad = (classes == cache.index).astype(cache.dtype) * -xp.expand_dims(cache.w_t, 1)
    return scale_gradient(grad, cache, grad_output)
