"""Batch normalisation in training mode on the GPU: the launchers of ``cuda_kernels/batch_norm.cu``.

Called by :mod:`gpulayers.ops.normalization` for CuPy input when batch statistics are used:
two launches forward (statistics and running-statistics update, then the normalisation, with an
optional fused ReLU) and two backward (the per-channel sums, then ``dx``), instead of some twenty
element-wise CuPy launches each way. Deterministic (fixed-order reductions, no atomics).

Written against the arrays' module, so the same launchers run on NumPy arrays when
:func:`gpulayers.kernels.get_function` is replaced by the CPU emulation of the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, kernels

__all__ = ["REDUCE_THREADS", "FusedBatchNormCache", "batch_norm_backward", "batch_norm_forward", "supported"]

_FILE = "batch_norm.cu"

#: Threads per block of the per-channel reduction kernels (BN_THREADS in the kernel file).
REDUCE_THREADS = 256


@dataclass(frozen=True, slots=True)
class FusedBatchNormCache:
    """What the fused forward keeps for its backward kernels; ``name`` is who ran forward."""

    x: Any
    y: Any
    mean: Any
    invstd: Any
    weight: Any
    has_bias: bool
    relu: bool
    name: str


def supported(x: Any, *arrays: Any) -> bool:
    """True for a C-contiguous float32/float64 CuPy ``x`` of rank >= 2 with at least two values per
    channel, and per-channel ``arrays`` (or None) of its dtype, contiguous, on its device."""
    if not backend.is_cuda_array(x) or x.ndim < 2 or np.dtype(x.dtype).name not in kernels.KERNEL_DTYPES:
        return False
    if not x.flags.c_contiguous or x.size == 0 or x.size // x.shape[1] < 2:
        return False
    return all(
        a is None
        or (type(a) is type(x) and a.dtype == x.dtype and a.shape == (x.shape[1],) and a.flags.c_contiguous
            and a.device == x.device)
        for a in arrays
    )  # fmt: skip


def _layout(x: Any) -> tuple[int, int, int]:
    n, c = int(x.shape[0]), int(x.shape[1])
    return n, c, int(x.size) // max(n * c, 1)


def _reduce_grid(channels: int) -> tuple[tuple[int], tuple[int]]:
    return (min(channels, kernels.MAX_GRID),), (REDUCE_THREADS,)


def batch_norm_forward(
    x: Any,
    weight: Any,
    bias: Any,
    running: tuple[Any, Any, Any] | None,
    momentum: float | None,
    eps: float,
    *,
    relu: bool = False,
    name: str = "batch_norm",
) -> tuple[Any, FusedBatchNormCache]:
    """Training-mode batch norm of ``x`` (N, C, *) with batch statistics; ``relu`` fuses a ReLU.

    ``running`` is ``(running_mean, running_var, num_batches_tracked)``, updated in place (the
    counter, a 0-d int64 array, may be None unless ``momentum`` is None), or None for no running
    statistics. Returns ``(y, cache)``; ``name`` is kept for the backward's messages.
    """
    running_mean, running_var, num_batches_tracked = (None, None, None) if running is None else running
    xp = backend.get_array_module(x)
    n, c, plane = _layout(x)
    dtype = x.dtype
    update = running_mean is not None
    track = num_batches_tracked is not None
    if momentum is None and update and not track:
        raise ValueError("batch_norm: momentum=None (cumulative average) needs num_batches_tracked")
    with backend.device_scope(x):
        mean = xp.empty(c, dtype=dtype)
        invstd = xp.empty(c, dtype=dtype)
        y = xp.empty_like(x)
        counter = num_batches_tracked if track else _dummy_counter(xp)
        stats_args = (
            x,
            mean,
            invstd,
            running_mean if update else mean,  # never touched without update_running
            running_var if update else invstd,
            counter,
            np.int32(n),
            np.int32(c),
            np.int64(plane),
            dtype.type(eps),
            dtype.type(0.0 if momentum is None else momentum),
            np.int32(update),
            np.int32(momentum is None),
        )
        grid, block = _reduce_grid(c)
        kernels.get_function(_FILE, "batch_norm_stats_kernel", dtype)(grid, block, stats_args)
        apply_args = (
            x,
            mean,
            invstd,
            mean if weight is None else weight,
            mean if bias is None else bias,
            y,
            counter,
            np.int64(x.size),
            np.int32(c),
            np.int64(plane),
            np.int32(weight is not None),
            np.int32(bias is not None),
            np.int32(bool(relu)),
            np.int32(update and track),
        )
        kernels.launch(_FILE, "batch_norm_apply_kernel", dtype, int(x.size), apply_args)
    return y, FusedBatchNormCache(x, y, mean, invstd, weight, bias is not None, bool(relu), name)


def batch_norm_backward(dy: Any, cache: FusedBatchNormCache, relu: bool | None = None) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`batch_norm_forward`; with the forward's ``relu``
    (None: the one recorded in ``cache``), ``dy`` is masked where the output is <= 0 first."""
    relu = cache.relu if relu is None else relu
    xp = backend.get_array_module(dy)
    x, y, mean, invstd, weight = cache.x, cache.y, cache.mean, cache.invstd, cache.weight
    n, c, plane = _layout(x)
    dtype = x.dtype
    with backend.device_scope(x):
        dy = xp.ascontiguousarray(dy, dtype=dtype)
        dweight = xp.empty(c, dtype=dtype)
        dbias = xp.empty(c, dtype=dtype)
        coef_b = xp.empty(c, dtype=dtype)
        coef_c = xp.empty(c, dtype=dtype)
        dx = xp.empty_like(x)
        w = mean if weight is None else weight
        reduce_args = (dy, x, y, mean, invstd, w, dweight, dbias, coef_b, coef_c, np.int32(n), np.int32(c),
                       np.int64(plane), np.int32(weight is not None), np.int32(bool(relu)))  # fmt: skip
        grid, block = _reduce_grid(c)
        kernels.get_function(_FILE, "batch_norm_backward_reduce_kernel", dtype)(grid, block, reduce_args)
        apply_args = (dy, x, y, mean, invstd, w, coef_b, coef_c, dx, np.int64(x.size), np.int32(c), np.int64(plane),
                      np.int32(weight is not None), np.int32(bool(relu)))  # fmt: skip
        kernels.launch(_FILE, "batch_norm_backward_apply_kernel", dtype, int(x.size), apply_args)
    return dx, (dweight if weight is not None else None), (dbias if cache.has_bias else None)


_counters: dict[int, Any] = {}


def _dummy_counter(xp) -> Any:
    """A 0-d int64 array standing in for an absent num_batches_tracked (never read or written)."""
    key = xp.cuda.Device().id if xp is not np else -1
    arr = _counters.get(key)
    if arr is None:
        arr = xp.empty((), dtype=np.int64)
        _counters[key] = arr
    return arr
