"""Losses: cross-entropy over raw logits with integer class indices, and mean squared error.

Both return the loss as an array (0-d for ``reduction="mean"``/``"sum"``) on the input's device,
so that a caller decides when, if ever, the value goes to the host.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .. import backend

__all__ = [
    "REDUCTIONS",
    "check_reduction",
    "check_label_smoothing",
    "label_range_error",
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


def _check_same_device(name: str, a: Any, b: Any, what: str) -> None:
    da, db = backend.device_of(a), backend.device_of(b)
    if da != db:
        raise RuntimeError(f"{name}: input is on {da} but the {what} is on {db}; move one with gl.to_device")


def label_range_error(name: str, target: Any, num_classes: int) -> ValueError:
    """The error for class indices outside [0, num_classes), naming the offending values."""
    t = backend.to_numpy(target)
    bad = t[(t < 0) | (t >= num_classes)]
    shown = ", ".join(str(int(v)) for v in np.unique(bad)[:5])
    return ValueError(
        f"{name}: expected class indices in [0, {num_classes - 1}] (the logits have {num_classes} classes), "
        f"got {shown} (target min {int(t.min())}, max {int(t.max())})"
    )


def _check_ce_inputs(name: str, logits: Any, target: Any) -> None:
    if not hasattr(logits, "dtype") or np.dtype(logits.dtype).kind != "f":
        got = getattr(logits, "dtype", type(logits).__name__)
        raise TypeError(f"{name}: expected floating-point logits (float32 or float64), got {got}")
    if logits.ndim < 2:
        raise ValueError(f"{name}: expected logits of shape (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}")
    if not hasattr(target, "dtype"):
        raise TypeError(f"{name}: expected an integer array of class indices, got {type(target).__name__}")
    if np.dtype(target.dtype).kind not in "iu":
        raise TypeError(
            f"{name}: expected integer class indices (int64 or int32) as target, got dtype {target.dtype} "
            "(class-probability targets are not supported)"
        )
    want = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != want:
        raise ValueError(
            f"{name}: expected target of shape {want} for logits of shape {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}"
        )
    _check_same_device(name, logits, target, "target")


def cross_entropy_forward(
    logits: Any,
    target: Any,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    check_labels: bool = True,
) -> tuple[Any, dict]:
    """Cross-entropy of raw ``logits`` against integer class indices (PyTorch's ``F.cross_entropy``).

    With ``log p = log_softmax(logits)`` (stabilised by subtracting the per-sample maximum), the
    per-sample loss is ``(1 - s) * -log p[target] + s / C * -sum_c log p[c]`` for label smoothing
    ``s`` and ``C`` classes; ``reduction`` averages, sums, or keeps the per-sample losses.

    Args:
        logits: (N, C) or (N, C, d1, ...) floating array.
        target: (N,) or (N, d1, ...) integer class indices in [0, C).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        label_smoothing: ``s`` in [0, 1]. Defaults to 0.
        check_labels: raise on out-of-range labels here. Passing False leaves the check to the
            caller through ``cache["invalid"]`` (a 0-d bool array on the device), which lets a GPU
            caller fetch it with the loss in one transfer.

    Returns:
        ``(loss, cache)``: ``loss`` is 0-d for "mean"/"sum", of the target's shape for "none",
        in the logits' dtype. An empty batch gives NaN for "mean" and 0 for "sum" (as PyTorch).

    Shape:
        - logits: (N, C) or (N, C, d1, ...)
        - target: (N,) or (N, d1, ...)
    """
    name = "cross_entropy"
    _check_ce_inputs(name, logits, target)
    check_reduction(name, reduction)
    smoothing = check_label_smoothing(name, label_smoothing)
    xp = backend.get_array_module(logits)
    num_classes = logits.shape[1]
    invalid = xp.any((target < 0) | (target >= num_classes)) if target.size else xp.zeros((), dtype=bool)
    if check_labels and bool(invalid):
        raise label_range_error(name, target, num_classes)

    idx = xp.expand_dims(target.astype(xp.int64), 1)
    safe_idx = xp.clip(idx, 0, max(num_classes - 1, 0))  # never gather out of bounds, even unchecked
    shifted = logits - logits.max(axis=1, keepdims=True) if logits.size else logits
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - xp.log(sum_exp)
    per_sample = -xp.take_along_axis(log_probs, safe_idx, axis=1)[:, 0]
    if smoothing > 0:
        smooth = -log_probs.sum(axis=1)
        per_sample = (1 - smoothing) * per_sample + (smoothing / num_classes) * smooth
    per_sample = per_sample.astype(logits.dtype, copy=False)

    count = int(target.size)
    if reduction == "none":
        loss = per_sample
    elif reduction == "sum":
        loss = per_sample.sum()
    elif count == 0:
        loss = xp.full((), np.nan, dtype=logits.dtype)
    else:
        loss = per_sample.mean()
    cache = {
        "probs": exp / sum_exp,
        "index": safe_idx,
        "reduction": reduction,
        "smoothing": smoothing,
        "count": count,
        "invalid": invalid,
    }
    return loss, cache


def _upstream(grad_output: Any, reduction: str, per_sample_shape: tuple[int, ...], like: Any) -> Any:
    """The upstream gradient broadcastable against (N, 1, d1, ...), or None for 1."""
    if grad_output is None:
        return None
    xp = backend.get_array_module(like)
    if reduction == "none":
        if tuple(getattr(grad_output, "shape", ())) != per_sample_shape:
            raise ValueError(
                f"loss backward: expected grad_output of shape {per_sample_shape} for reduction='none', "
                f"got {tuple(getattr(grad_output, 'shape', ()))}"
            )
        return xp.asarray(grad_output, dtype=like.dtype)
    if getattr(grad_output, "size", 1) != 1:
        raise ValueError(
            f"loss backward: expected a scalar grad_output for reduction={reduction!r}, "
            f"got shape {tuple(grad_output.shape)}"
        )
    return xp.asarray(grad_output, dtype=like.dtype).reshape(())


def cross_entropy_backward(cache: dict, grad_output: Any = None) -> Any:
    """Gradient of :func:`cross_entropy_forward` w.r.t. the logits.

    ``softmax(logits) - ((1 - s) * onehot(target) + s / C)``, divided by the number of samples
    for "mean", times ``grad_output`` when given (a scalar for "mean"/"sum", an array of the
    target's shape for "none"; 1 when omitted).
    """
    xp = backend.get_array_module(cache["probs"])
    probs, index, smoothing = cache["probs"], cache["index"], cache["smoothing"]
    num_classes = probs.shape[1]
    classes = xp.arange(num_classes).reshape((1, num_classes) + (1,) * (probs.ndim - 2))
    grad = probs - (1 - smoothing) * (classes == index).astype(probs.dtype)
    if smoothing > 0:
        grad -= smoothing / num_classes
    if cache["reduction"] == "mean" and cache["count"] > 0:
        grad /= cache["count"]
    per_sample_shape = (probs.shape[0],) + tuple(probs.shape[2:])
    g = _upstream(grad_output, cache["reduction"], per_sample_shape, probs)
    if g is not None:
        grad *= xp.expand_dims(g, 1) if g.ndim else g
    return grad


def mse_loss_forward(input: Any, target: Any, reduction: str = "mean") -> tuple[Any, dict]:
    """Mean squared error ``(input - target) ** 2``, reduced (PyTorch's ``F.mse_loss``).

    ``input`` and ``target`` must have the same shape (no broadcasting); ``target`` is cast to
    ``input``'s dtype.

    Returns:
        ``(loss, cache)``: 0-d for "mean"/"sum", ``input``'s shape for "none".

    Shape:
        - input: (*)
        - target: same as input
    """
    name = "mse_loss"
    for what, arr in (("input", input), ("target", target)):
        if not hasattr(arr, "dtype") or np.dtype(arr.dtype).kind != "f":
            got = getattr(arr, "dtype", type(arr).__name__)
            raise TypeError(f"{name}: expected a floating-point {what} (float32 or float64), got {got}")
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(
            f"{name}: expected target of the input's shape {tuple(input.shape)}, got {tuple(target.shape)} "
            "(no broadcasting)"
        )
    _check_same_device(name, input, target, "target")
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
    return loss, {"diff": diff, "reduction": reduction}


def mse_loss_backward(cache: dict, grad_output: Any = None) -> Any:
    """Gradient of :func:`mse_loss_forward` w.r.t. the input: ``2 * (input - target)``, scaled."""
    diff = cache["diff"]
    grad = 2 * diff
    if cache["reduction"] == "mean" and diff.size > 0:
        grad /= diff.size
    g = _upstream(grad_output, cache["reduction"], tuple(diff.shape), diff)
    if g is not None:
        grad *= g
    return grad
