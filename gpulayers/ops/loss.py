"""Losses: cross-entropy over raw logits (class indices or class probabilities), mean squared
error, and the helpers that the other losses share (reductions, class targets, upstream gradients).

Each returns the loss as an array (0-d for ``reduction="mean"``/``"sum"``) on the input's device,
so that a caller decides when, if ever, the value goes to the host.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_pair_of_floats, check_same_device
from . import cross_entropy_cuda

__all__ = [
    "REDUCTIONS",
    "check_reduction",
    "check_label_smoothing",
    "check_ignore_index",
    "class_weight",
    "class_targets",
    "label_range_error",
    "reduce_loss",
    "scale_gradient",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "mse_loss_forward",
    "mse_loss_backward",
]

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(name: str, reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: expected reduction 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def check_label_smoothing(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected label_smoothing in [0, 1], got {value!r}")
    return float(value)


def check_ignore_index(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected ignore_index to be an int, got {value!r}")
    return int(value)


def class_weight(name: str, weight: Any, logits: Any) -> Any:
    """The per-class ``weight`` (or None) checked against ``(C,)`` and cast to the logits' dtype."""
    if weight is None:
        return None
    if not hasattr(weight, "dtype") or np.dtype(weight.dtype).kind != "f":
        got = getattr(weight, "dtype", type(weight).__name__)
        raise TypeError(f"{name}: expected a floating-point weight array of shape (C,), got {got}")
    num_classes = logits.shape[1]
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"{name}: expected a weight of shape ({num_classes},) (one per class), got {tuple(weight.shape)}"
        )
    check_same_device(name, logits, weight, "weight", same_dtype=False)
    return weight.astype(logits.dtype, copy=False)


def label_range_error(name: str, target: Any, num_classes: int, ignore_index: int | None = None) -> ValueError:
    """The error for class indices outside [0, num_classes), naming the offending values."""
    t = backend.to_numpy(target)
    bad = t[((t < 0) | (t >= num_classes)) & (t != ignore_index if ignore_index is not None else True)]
    shown = ", ".join(str(int(v)) for v in np.unique(bad)[:5])
    also = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
    return ValueError(
        f"{name}: expected class indices in [0, {num_classes - 1}]{also} (the logits have {num_classes} classes), "
        f"got {shown} (target min {int(t.min())}, max {int(t.max())})"
    )


def _check_logits(name: str, logits: Any, what: str = "logits") -> None:
    if not hasattr(logits, "dtype") or np.dtype(logits.dtype).kind != "f":
        got = getattr(logits, "dtype", type(logits).__name__)
        raise TypeError(f"{name}: expected floating-point {what} (float32 or float64), got {got}")
    if logits.ndim < 2:
        raise ValueError(f"{name}: expected {what} of shape (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}")


def _check_index_target(name: str, logits: Any, target: Any, probabilities_ok: bool) -> bool:
    """Checks ``target``; True when it holds class probabilities (a float array of the logits' shape)."""
    if not hasattr(target, "dtype"):
        raise TypeError(f"{name}: expected an integer array of class indices, got {type(target).__name__}")
    want = (logits.shape[0],) + tuple(logits.shape[2:])
    kind = np.dtype(target.dtype).kind
    if probabilities_ok and kind == "f" and tuple(target.shape) == tuple(logits.shape):
        check_same_device(name, logits, target, "target", same_dtype=False)
        return True
    if kind not in "iu":
        also = f" or class probabilities of the logits' shape {tuple(logits.shape)}" if probabilities_ok else ""
        raise TypeError(
            f"{name}: expected integer class indices (int64 or int32){also} as target, got dtype {target.dtype} "
            f"of shape {tuple(target.shape)}"
        )
    if tuple(target.shape) != want:
        raise ValueError(
            f"{name}: expected target of shape {want} for input of shape {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}"
        )
    check_same_device(name, logits, target, "target", same_dtype=False)
    return False


def class_targets(logits: Any, target: Any, weight: Any, ignore_index: int) -> dict:
    """What the index-target losses share, for ``target`` ``(N, d1, ...)`` against ``(N, C, d1, ...)``.

    Returns a dict: ``index`` (the targets as ``(N, 1, d1, ...)`` int64, clipped into range so that
    a gather never leaves the array), ``w_t`` (each sample's class weight, 0 where ignored, in
    the logits' dtype), ``valid`` (not ignored) and ``invalid`` (a 0-d bool array: some label
    other than ``ignore_index`` is out of range).
    """
    xp = backend.get_array_module(logits)
    num_classes = logits.shape[1]
    valid = target != ignore_index
    out_of_range = valid & ((target < 0) | (target >= num_classes))
    invalid = xp.any(out_of_range) if target.size else xp.zeros((), dtype=bool)
    safe = xp.where(valid, xp.clip(target.astype(xp.int64), 0, max(num_classes - 1, 0)), 0)
    if weight is None:
        w_t = valid.astype(logits.dtype)
    else:
        w_t = xp.where(valid, xp.take(weight, safe), logits.dtype.type(0))
    return {"index": xp.expand_dims(safe, 1), "w_t": w_t, "valid": valid, "invalid": invalid}


def reduce_loss(per_sample: Any, reduction: str, denominator: Any = None) -> Any:
    """``per_sample`` as is ("none"), summed, or summed and divided by ``denominator`` ("mean";
    the element count when None). A mean over nothing is NaN, as in PyTorch."""
    xp = backend.get_array_module(per_sample)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    if denominator is None:
        if per_sample.size == 0:
            return xp.full((), np.nan, dtype=per_sample.dtype)
        return total / per_sample.size
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 is NaN (all ignored), without a warning
        return (total / denominator).astype(per_sample.dtype, copy=False)


def _upstream(name: str, grad_output: Any, reduction: str, per_sample_shape: tuple[int, ...], like: Any) -> Any:
    """The upstream gradient as an array of the per-sample shape ("none") or 0-d, or None for 1."""
    if grad_output is None:
        return None
    xp = backend.get_array_module(like)
    if reduction == "none":
        if tuple(getattr(grad_output, "shape", ())) != per_sample_shape:
            raise ValueError(
                f"{name}.backward: expected grad_output of shape {per_sample_shape} for reduction='none', "
                f"got {tuple(getattr(grad_output, 'shape', ()))}"
            )
        return xp.asarray(grad_output, dtype=like.dtype)
    if getattr(grad_output, "size", 1) != 1:
        raise ValueError(
            f"{name}.backward: expected a scalar grad_output for reduction={reduction!r}, "
            f"got shape {tuple(grad_output.shape)}"
        )
    return xp.asarray(grad_output, dtype=like.dtype).reshape(())


@dataclass(frozen=True)
class LossCache:
    """What a loss forward on the array path keeps for backward; each loss sets the fields its
    backward reads (the others stay None).

    Attributes:
        name: who called, for messages. reduction: "mean", "sum" or "none".
        invalid: a 0-d array, nonzero when a class index was out of range (class losses).
        denominator: the "mean" divisor when it is not the per-sample count (class weights).
        probs, wq: cross-entropy's softmax and, for class-probability targets, the weighted targets.
        index, w_t, valid, weight, smoothing: class-index losses' targets, their weights and options.
        shape, dtype: NLL's input; diff: MSE's ``input - target``; input, y, log_weight: BCE's.
    """

    fused = False  # the GPU's fused cross-entropy keeps its own cache (``cross_entropy_cuda``)

    name: str
    reduction: str
    invalid: Any = None
    denominator: Any = None
    probs: Any = None
    wq: Any = None
    index: Any = None
    w_t: Any = None
    valid: Any = None
    weight: Any = None
    smoothing: float = 0.0
    shape: tuple | None = None
    dtype: Any = None
    diff: Any = None
    input: Any = None
    y: Any = None
    log_weight: Any = None


def scale_gradient(grad: Any, cache: LossCache, grad_output: Any, class_axis: bool = True) -> Any:
    """``grad`` (the gradient of the per-sample losses, summed) scaled for the reduction in place.

    "mean" divides by ``cache.denominator`` (or the per-sample count when None); the upstream
    ``grad_output`` multiplies (per sample for "none", broadcast over the class axis when
    ``class_axis``).
    """
    xp = backend.get_array_module(grad)
    reduction = cache.reduction
    if reduction == "mean":
        denominator = cache.denominator
        if denominator is None:
            count = grad.size // (grad.shape[1] if class_axis and grad.ndim > 1 else 1)
            if count:
                grad /= count
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                grad /= denominator
    shape = ((grad.shape[0],) + tuple(grad.shape[2:])) if class_axis else tuple(grad.shape)
    g = _upstream(cache.name, grad_output, reduction, shape, grad)
    if g is not None:
        grad *= xp.expand_dims(g, 1) if (g.ndim and class_axis) else g
    return grad


def _class_vector(v: Any, ndim: int) -> Any:
    """A ``(C,)`` vector shaped to broadcast over ``(N, C, d1, ...)``."""
    return v.reshape((1, v.shape[0]) + (1,) * (ndim - 2))


def cross_entropy_forward(
    logits: Any,
    target: Any,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    weight: Any = None,
    ignore_index: int = -100,
    check_labels: bool = True,
    name: str = "cross_entropy",
) -> tuple[Any, LossCache]:
    """Cross-entropy of raw ``logits`` (PyTorch's ``F.cross_entropy``), with PyTorch's formulas.

    With ``log p = log_softmax(logits)`` (stabilised by the per-sample maximum), ``w`` the class
    weights (1 when None), ``s`` the label smoothing and ``C`` classes:

    * class indices ``t``: ``loss_i = (1 - s) * -w[t_i] log p[t_i] + s / C * -sum_c w_c log p[c]``,
      0 where ``t_i == ignore_index``; "mean" divides the sum by ``sum_i w[t_i]`` over the samples
      not ignored (NaN when there are none);
    * class probabilities ``q`` (a float target of the logits' shape): ``q' = (1 - s) q + s / C``,
      ``loss_i = -sum_c w_c q'_c log p[c]``; "mean" divides by the number of samples.

    Args:
        logits: (N, C) or (N, C, d1, ...) floating array.
        target: (N,) or (N, d1, ...) integer class indices in [0, C) (or ``ignore_index``), or
            class probabilities of the logits' shape.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        label_smoothing: ``s`` in [0, 1]. Defaults to 0.
        weight: per-class weights ``(C,)``, or None.
        ignore_index: class index whose samples count for nothing. Defaults to -100.
        check_labels: raise on out-of-range labels here. Passing False leaves the check to the
            caller through ``cache.invalid`` (a 0-d array on the device, nonzero for a bad
            label). On the GPU, (N, C) logits with class indices take a fused kernel that checks
            on the device without a host synchronisation: a bad label makes its loss, the reduced
            loss and its gradient row NaN and sets ``cache.invalid``; nothing is raised here.
        name: who is calling, for error messages.

    Returns:
        ``(loss, cache)``: ``loss`` is 0-d for "mean"/"sum", per sample for "none", in the
        logits' dtype. An empty batch gives NaN for "mean" and 0 for "sum" (as PyTorch).

    Shape:
        - logits: (N, C) or (N, C, d1, ...)
        - target: (N,) or (N, d1, ...), or (N, C, d1, ...) probabilities
    """
    _check_logits(name, logits)
    probabilities = _check_index_target(name, logits, target, probabilities_ok=True)
    check_reduction(name, reduction)
    smoothing = check_label_smoothing(name, label_smoothing)
    ignore_index = check_ignore_index(name, ignore_index)
    weight = class_weight(name, weight, logits)
    if not probabilities and cross_entropy_cuda.supported(logits, target, weight):
        options = dict(reduction=reduction, smoothing=smoothing, weight=weight, ignore_index=ignore_index, name=name)
        return cross_entropy_cuda.cross_entropy_forward(logits, target, **options)
    xp = backend.get_array_module(logits)
    num_classes = logits.shape[1]
    shifted = logits - logits.max(axis=1, keepdims=True) if logits.size else logits
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - xp.log(sum_exp)
    probs = exp / sum_exp
    wide = None if weight is None else _class_vector(weight, logits.ndim)

    if probabilities:
        q = target.astype(logits.dtype, copy=False)
        if smoothing > 0:
            q = q * (1 - smoothing) + smoothing / num_classes
        wq = q if wide is None else q * wide
        per_sample = -(log_probs * wq).sum(axis=1)
        cache = LossCache(name, reduction, xp.zeros((), dtype=bool), probs=probs, wq=wq)
        return reduce_loss(per_sample, reduction), cache

    t = class_targets(logits, target, weight, ignore_index)
    if check_labels and bool(t["invalid"]):
        raise label_range_error(name, target, num_classes, ignore_index)
    per_sample = -xp.take_along_axis(log_probs, t["index"], axis=1)[:, 0] * t["w_t"]
    if smoothing > 0:
        smooth = -(log_probs if wide is None else log_probs * wide).sum(axis=1)
        smooth = xp.where(t["valid"], smooth, logits.dtype.type(0))
        per_sample = (1 - smoothing) * per_sample + (smoothing / num_classes) * smooth
    per_sample = per_sample.astype(logits.dtype, copy=False)
    denominator = t["w_t"].sum() if reduction == "mean" else None
    if reduction == "mean" and target.size == 0:
        loss = xp.full((), np.nan, dtype=logits.dtype)
    else:
        loss = reduce_loss(per_sample, reduction, denominator)
    cache = LossCache(
        name,
        reduction,
        t["invalid"],
        denominator,
        probs=probs,
        index=t["index"],
        w_t=t["w_t"],
        valid=t["valid"],
        weight=weight,
        smoothing=smoothing,
    )
    return loss, cache


def cross_entropy_backward(cache: Any, grad_output: Any = None) -> Any:
    """Gradient of :func:`cross_entropy_forward` w.r.t. the logits.

    Class indices: ``(1 - s) w_t (p - onehot(t)) + s / C (p sum(w) - w)`` per sample not ignored;
    class probabilities: ``p sum(w q') - w q'``. Then divided by the "mean" denominator and
    multiplied by ``grad_output`` when given (a scalar for "mean"/"sum", an array of the per-sample
    shape for "none"; 1 when omitted).
    """
    if cache.fused:
        logits = cache.logits
        upstream = _upstream(cache.name, grad_output, cache.reduction, (logits.shape[0],), logits)
        return cross_entropy_cuda.cross_entropy_backward(cache, upstream)
    xp = backend.get_array_module(cache.probs)
    probs = cache.probs
    if cache.wq is not None:
        wq = cache.wq
        grad = probs * wq.sum(axis=1, keepdims=True) - wq
        return scale_gradient(grad, cache, grad_output)
    num_classes = probs.shape[1]
    smoothing, weight, w_t = cache.smoothing, cache.weight, xp.expand_dims(cache.w_t, 1)
    classes = xp.arange(num_classes).reshape((1, num_classes) + (1,) * (probs.ndim - 2))
    onehot = (classes == cache.index).astype(probs.dtype)
    if smoothing == 0:
        grad = (probs - onehot) * w_t
    else:
        valid = xp.expand_dims(cache.valid, 1).astype(probs.dtype)
        total = float(num_classes) if weight is None else weight.sum()
        wide = 1 if weight is None else _class_vector(weight, probs.ndim)
        coef = (1 - smoothing) * w_t + (smoothing / num_classes) * total * valid
        grad = probs * coef - (1 - smoothing) * w_t * onehot - (smoothing / num_classes) * (wide * valid)
    return scale_gradient(grad.astype(probs.dtype, copy=False), cache, grad_output)


def mse_loss_forward(
    input: Any, target: Any, reduction: str = "mean", *, name: str = "mse_loss"
) -> tuple[Any, LossCache]:
    """Mean squared error ``(input - target) ** 2``, reduced (PyTorch's ``F.mse_loss``).

    ``input`` and ``target`` must have the same shape (no broadcasting); ``target`` is cast to
    ``input``'s dtype. ``name`` is who is calling, for error messages (a layer passes its class name).

    Returns:
        ``(loss, cache)``: 0-d for "mean"/"sum", ``input``'s shape for "none".

    Shape:
        - input: (*)
        - target: same as input
    """
    check_pair_of_floats(name, input, target, " (no broadcasting)")
    check_reduction(name, reduction)
    xp = backend.get_array_module(input)
    diff = input - target.astype(input.dtype, copy=False)
    sq = diff * diff
    if reduction == "none":
        loss = sq
    elif reduction == "sum":
        loss = sq.sum()
    elif sq.size == 0:
        loss = xp.full((), np.nan, dtype=input.dtype)
    else:
        loss = sq.mean()
    return loss, LossCache(name, reduction, diff=diff)


def mse_loss_backward(cache: LossCache, grad_output: Any = None) -> Any:
    """Gradient of :func:`mse_loss_forward` w.r.t. the input: ``2 * (input - target)``, scaled."""
    diff = cache.diff
    grad = 2 * diff
    if cache.reduction == "mean" and diff.size > 0:
        grad /= diff.size
    g = _upstream(cache.name, grad_output, cache.reduction, tuple(diff.shape), diff)
    if g is not None:
        grad *= g
    return grad
