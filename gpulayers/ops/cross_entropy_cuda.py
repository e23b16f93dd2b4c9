"""Cross-entropy on the GPU: the launchers of ``cuda_kernels/cross_entropy.cu``.

Called by :mod:`gpulayers.ops.loss` for CuPy (N, C) logits: one launch computes the per-sample
losses, the reduced loss (a 0-d array left on the device) and the label check; one launch
computes the gradient. Nothing is read on the host: an out-of-range label makes the loss NaN
and sets ``cache.invalid`` (a device int32 flag) for the caller to read when it wants.

Written against the arrays' module, so the same launchers run on NumPy arrays when
:func:`gpulayers.kernels.get_function` is replaced by the CPU emulation of the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, kernels

__all__ = ["FORWARD_THREADS", "cross_entropy_backward", "cross_entropy_forward", "supported"]

_FILE = "cross_entropy.cu"

#: Threads of the forward kernel's single block (CE_THREADS in the kernel file).
FORWARD_THREADS = 256

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


@dataclass(frozen=True)
class FusedCrossEntropyCache:
    """What the fused forward keeps for its backward kernel."""

    fused = True

    name: str
    reduction: str
    invalid: Any  # device int32 flag, nonzero after an out-of-range label
    logits: Any
    target: Any
    weight: Any
    ignore_index: int | None
    lse: Any  # 2 per sample: the max logit and the log-sum-exp of the shifted logits
    scale: Any
    smoothing: float


def supported(logits: Any, target: Any, weight: Any = None) -> bool:
    """True for C-contiguous float32/float64 CuPy logits (N, C), C >= 1, integer target (N,) and a
    contiguous weight (C,) of the logits' dtype (or None), all on one device."""
    if not backend.is_cuda_array(logits) or logits.ndim != 2 or logits.shape[1] < 1:
        return False
    if np.dtype(logits.dtype).name not in kernels.KERNEL_DTYPES or not logits.flags.c_contiguous:
        return False
    if type(target) is not type(logits) or target.ndim != 1 or target.device != logits.device:
        return False
    return weight is None or (
        type(weight) is type(logits)
        and weight.dtype == logits.dtype
        and weight.shape == (logits.shape[1],)
        and weight.flags.c_contiguous
        and weight.device == logits.device
    )


def cross_entropy_forward(
    logits: Any, target: Any, *, reduction: str, smoothing: float, weight: Any, ignore_index: int | None, name: str
) -> tuple[Any, FusedCrossEntropyCache]:
    """The loss (0-d for "mean"/"sum", (N,) for "none") and the cache for the backward.

    Every option is passed by name, already checked by the caller (:mod:`gpulayers.ops.loss`):
    ``smoothing`` the label smoothing, ``ignore_index`` None for none, ``name`` for the messages.
    """
    xp = backend.get_array_module(logits)
    n, c = (int(v) for v in logits.shape)
    dtype = logits.dtype
    with backend.device_scope(logits):
        target = xp.ascontiguousarray(target, dtype=np.int64)
        lse = xp.empty(2 * n, dtype=dtype)  # per sample: the max logit and log(sum exp(z - max))
        per_sample = xp.empty(n, dtype=dtype)
        loss = xp.empty((), dtype=dtype)
        scale = xp.empty(2, dtype=dtype)
        invalid = xp.empty((), dtype=np.int32)
        args = (
            logits,
            target,
            lse if weight is None else weight,  # never read without has_weight
            lse,
            per_sample,
            loss,
            scale,
            invalid,
            np.int32(n),
            np.int32(c),
            dtype.type(smoothing),
            np.int32(weight is not None),
            np.int32(ignore_index is not None),
            np.int64(0 if ignore_index is None else ignore_index),
            np.int32(_REDUCTIONS[reduction]),
        )
        kernels.get_function(_FILE, "cross_entropy_forward_kernel", dtype)((1,), (FORWARD_THREADS,), args)
    cache = FusedCrossEntropyCache(
        name, reduction, invalid, logits, target, weight, ignore_index, lse, scale, float(smoothing)
    )
    return (per_sample if reduction == "none" else loss), cache


def cross_entropy_backward(cache: FusedCrossEntropyCache, upstream: Any = None) -> Any:
    """d loss / d logits; ``upstream`` is None (1), a 0-d device array, or (N,) for "none"."""
    logits, target, weight = cache.logits, cache.target, cache.weight
    xp = backend.get_array_module(logits)
    dtype = logits.dtype
    mode = 0 if upstream is None else 2 if cache.reduction == "none" else 1
    ignore_index = cache.ignore_index
    with backend.device_scope(logits):
        if upstream is not None:
            upstream = xp.ascontiguousarray(upstream, dtype=dtype)
        grad = xp.empty_like(logits)
        args = (
            logits,
            target,
            grad if weight is None else weight,
            cache.lse,
            cache.scale,
            grad if upstream is None else upstream,  # never read in mode 0
            grad,
            np.int64(grad.size),
            np.int32(logits.shape[1]),
            dtype.type(cache.smoothing),
            np.int32(weight is not None),
            np.int32(ignore_index is not None),
            np.int64(0 if ignore_index is None else ignore_index),
            np.int32(mode),
        )
        kernels.launch(_FILE, "cross_entropy_backward_kernel", dtype, int(grad.size), args)
    return grad
