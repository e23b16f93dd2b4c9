"""Batch normalisation over the channel axis 1 of (N, C), (N, C, L) or (N, C, H, W) input.

One xp-generic implementation (NumPy or CuPy): the statistics are reductions over every axis
but the channel axis, computed in the input dtype with the two-pass variance (mean first, then
the mean of squared deviations), as PyTorch does. See ``torch.nn.functional.batch_norm``.

Float32 input near the top of its range (|x| ~ 1e38) would overflow a float32 sum or square;
such channels are summed in float64 instead (on NumPy only when the fast float32 reductions
overflow; on CuPy always, which costs no extra pass), so the mean and the running statistics
stay finite wherever the true values are representable.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_channels, check_grad, check_input, check_same_device
from . import batch_norm_cpu, batch_norm_cuda
from .max_pool2d import tiles_input

__all__ = ["batch_norm_forward", "batch_norm_backward", "BatchNormCache"]

_LAYOUTS = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)"}


@dataclass(frozen=True, slots=True)
class BatchNormCache:
    """What :func:`batch_norm_backward` needs; ``name`` is who ran forward (for its messages)."""

    centred: Any  # x - mean, the shape of the input
    invstd: Any
    weight: Any
    has_bias: bool
    batch_stats: bool
    bshape: tuple
    count: int
    name: str
    relu_out: Any = None  # the output, when a ReLU was applied to it (its mask is the gradient's)


def _check_arrays(name: str, x: Any, ndim: tuple[int, ...], per_channel: dict[str, Any]) -> None:
    """The input's rank and dtype, and every per-channel array against the channel count and device."""
    check_input(name, x, ndim, " or ".join(_LAYOUTS.get(r, f"({r}-D)") for r in ndim))
    given = {what: arr for what, arr in per_channel.items() if arr is not None}
    if not given:
        return
    first = next(iter(given.values()))
    check_channels(name, x, int(first.shape[0]) if first.ndim else -1, axis=1, what="features (axis 1)")
    for what, arr in given.items():
        if tuple(arr.shape) != (x.shape[1],):
            raise ValueError(f"{name}: expected {what} of shape ({x.shape[1]},), got {tuple(arr.shape)}")
        check_same_device(name, x, arr, what)


def _layout(x: Any) -> tuple[tuple[int, ...], int]:
    """The broadcast shape of a per-channel vector, and the number of values per channel."""
    bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    count = int(np.prod(x.shape, dtype=np.int64)) // max(x.shape[1], 1) if x.shape[1] else 0
    return bshape, count


def _per_channel(x: Any) -> Any:
    """``x`` viewed as (N, C, L): every reduction below runs over N and L."""
    return x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64)))


def _channel_sum(x: Any) -> Any:
    """Per-channel sum, (C,): along the contiguous L axis, then over N.

    On NumPy the L axis is summed as a matrix-vector product with ones (BLAS), about twice as
    fast as ``sum(axis=2)`` at a convolution's sizes; CuPy keeps its reduction kernel.
    """
    x3 = _per_channel(x)
    if isinstance(x3, np.ndarray) and x3.dtype.kind == "f" and x3.shape[2] > 1:
        return np.matmul(x3, np.ones(x3.shape[2], dtype=x3.dtype)).sum(axis=0)
    return x3.sum(axis=2).sum(axis=0)


def _channel_dot(a: Any, b: Any) -> Any:
    """Per-channel ``sum(a * b)``, (C,), as batched dot products (no full-size temporary)."""
    xp = backend.get_array_module(a)
    a3, b3 = _per_channel(a), _per_channel(b)
    return xp.matmul(a3[:, :, None, :], b3[:, :, :, None]).reshape(a3.shape[0], a3.shape[1]).sum(axis=0)


def _safe_stats(x: Any, count: int, bshape: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """Per-channel mean, centred input and biased variance without intermediate overflow.

    The sum accumulates in float64; the squared deviations are scaled by ``1/sqrt(count)``
    before squaring, so a square overflows only when the variance itself would.
    """
    mean = (_per_channel(x).sum(axis=2, dtype=np.float64).sum(axis=0) / count).astype(x.dtype)
    centred = x - mean.reshape(bshape)
    scaled = centred * x.dtype.type(1.0 / np.sqrt(count))
    var = _channel_dot(scaled, scaled).astype(x.dtype, copy=False)
    return mean, centred, var


def _fast_stats(x: Any, count: int, bshape: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """Two-pass statistics in the input dtype (mean first, then the mean squared deviation)."""
    mean = (_channel_sum(x) / count).astype(x.dtype, copy=False)
    centred = x - mean.reshape(bshape)
    var = (_channel_dot(centred, centred) / count).astype(x.dtype, copy=False)
    return mean, centred, var


def _batch_stats(x: Any, count: int, bshape: tuple[int, ...]) -> tuple[Any, Any, Any]:
    if backend.is_cuda_array(x):  # no host synchronisation for an overflow check
        return _safe_stats(x, count, bshape)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, centred, var = _fast_stats(x, count, bshape)
        if np.isfinite(mean).all() and np.isfinite(var).all():
            return mean, centred, var
        return _safe_stats(x, count, bshape)


def _cpu_batch_stats(x: np.ndarray, count: int, bshape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance of a NumPy input; the overflow-safe reductions when float32 overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, var = batch_norm_cpu.channel_mean_var(x, count)
        if np.isfinite(mean).all() and np.isfinite(var).all():
            return mean, var
        mean, _, var = _safe_stats(x, count, bshape)
    return mean, var


def _fusable(x: Any, weight: Any, bias: Any, running: tuple[Any, Any, Any] | None) -> bool:
    """True when the fused GPU kernels take this call (CuPy, contiguous, matching parameter arrays);
    ``running`` is ``(running_mean, running_var, num_batches_tracked)`` to update, or None."""
    running_mean, running_var, counter = (None, None, None) if running is None else running
    if not batch_norm_cuda.supported(x, weight, bias, running_mean, running_var):
        return False
    return counter is None or (
        type(counter) is type(x) and counter.dtype == np.int64 and counter.shape == () and counter.device == x.device
    )


def batch_norm_forward(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: bool,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Any = None,
    *,
    name: str = "batch_norm",
    ndim: tuple[int, ...] = (2, 3, 4),
    relu: bool = False,
    pool: Any = None,
) -> tuple[Any, BatchNormCache]:
    """Normalise ``x`` per channel, then scale by ``weight`` and shift by ``bias``.

    Batch statistics are used when ``training`` is true or no running statistics are given
    (``running_mean is None``); otherwise the running statistics. In training with running
    statistics, ``running_mean``/``running_var`` are updated **in place** with the batch mean and
    the unbiased batch variance: ``r = (1 - f) * r + f * batch`` with ``f = momentum``, or
    ``f = 1 / num_batches_tracked`` (a cumulative average) when ``momentum`` is None.
    ``num_batches_tracked`` (a 0-d int64 array), when given, is incremented in place.

    Args:
        x: input of shape (N, C), (N, C, L) or (N, C, H, W).
        weight: scale (C,), or None for no affine scale.
        bias: shift (C,), or None.
        running_mean: (C,) running mean, or None to always use batch statistics.
        running_var: (C,) running variance, or None.
        training: use (and track) batch statistics.
        momentum: running-average factor, or None for a cumulative average.
        eps: added to the variance before the square root; must be > 0.
        num_batches_tracked: 0-d int64 counter (required when ``momentum`` is None).
        name: who is calling, for error messages (a layer passes its class name).
        ndim: the input ranks accepted (a layer narrows them).
        relu: also apply ``max(y, 0)`` (NaN kept), in the same pass (the GPU kernel, or the CPU
            path's blocks); the backward then masks ``dy`` where the output is <= 0, as ReLU's
            backward does.

    Returns:
        ``(y, cache)``; ``y`` has the shape and dtype of ``x``.

    Shape:
        - x: (N, C, *) with * empty, (L,) or (H, W)
        - y: same as x
    """
    per_channel = {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var}
    _check_arrays(name, x, ndim, per_channel)
    xp = backend.get_array_module(x)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"{name}: expected eps > 0, got {eps!r}")
    bshape, count = _layout(x)
    use_batch_stats = bool(training) or running_mean is None
    update = bool(training) and running_mean is not None
    running = (running_mean, running_var, num_batches_tracked) if update else None
    if use_batch_stats and _fusable(x, weight, bias, running):
        # The GPU's two fused launches (statistics with the running update, then the normalisation).
        return batch_norm_cuda.batch_norm_forward(x, weight, bias, running, momentum, eps, relu=relu, name=name)

    if use_batch_stats and count == 1:
        raise ValueError(
            f"{name}: expected more than 1 value per channel when training, got input size {tuple(x.shape)}"
        )
    on_cpu = not backend.is_cuda_array(x) and count > 0
    if on_cpu:
        x = np.ascontiguousarray(x)
        if use_batch_stats:
            mean, var = _cpu_batch_stats(x, count, bshape)
        else:
            mean, var = running_mean.copy(), running_var
    elif use_batch_stats:
        if count == 0:  # empty batch: nothing to normalise, running statistics left as they are
            mean = xp.zeros(x.shape[1], dtype=x.dtype)
            var = xp.ones(x.shape[1], dtype=x.dtype)
            centred = x
        else:
            mean, centred, var = _batch_stats(x, count, bshape)
    else:
        mean = running_mean
        var = running_var
        centred = x - mean.reshape(bshape)

    if update:
        if num_batches_tracked is not None:
            num_batches_tracked += 1
        if count > 0:
            if momentum is None:
                if num_batches_tracked is None:
                    raise ValueError(f"{name}: momentum=None (cumulative average) needs num_batches_tracked")
                # Kept on the device: 1 / count as a 0-d array, no host round trip.
                factor = 1.0 / num_batches_tracked.astype(running_mean.dtype)
            else:
                factor = float(momentum)
            unbiased = var * (count / (count - 1))
            running_mean[...] = (1 - factor) * running_mean + factor * mean
            running_var[...] = (1 - factor) * running_var + factor * unbiased

    invstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)
    # y = centred * (weight * invstd) + bias: per-channel coefficients, two passes over the data.
    scale = invstd if weight is None else weight * invstd
    if on_cpu:  # block-wise passes that keep the input, not the centred copy
        pool = pool if relu and pool is not None and x.ndim == 4 and tiles_input(x.shape, pool) else None
        y, argmax = batch_norm_cpu.normalize(x, mean, var, scale, bias, count, relu, pool)
        pooled = None if pool is None else batch_norm_cpu.PooledOutput(pool, argmax, y)
        saved = batch_norm_cpu.CpuBatchNormCache(
            x,
            mean,
            invstd,
            weight,
            bias is not None,
            use_batch_stats,
            count,
            name,
            y if relu and pooled is None else None,
            uncentred=use_batch_stats and batch_norm_cpu.uncentred_ok(mean, var),
            pool=pooled,
        )
        return y, saved
    y = centred * scale.reshape(bshape)
    if bias is not None:
        y += bias.reshape(bshape)
    relu_out = None
    if relu:
        y = relu_out = xp.maximum(y, y.dtype.type(0))
    cache = BatchNormCache(centred, invstd, weight, bias is not None, use_batch_stats, bshape, count, name, relu_out)
    return y, cache


def batch_norm_backward(dy: Any, cache: BatchNormCache) -> tuple[Any, Any, Any]:
    """Gradients of :func:`batch_norm_forward`.

    With batch statistics the mean and variance depend on ``x``, giving the compact form
    ``dx = invstd / m * (m * g - sum(g) - xhat * sum(g * xhat))`` with ``g = dy * weight`` and
    ``m`` values per channel; with running statistics ``dx = g * invstd``.

    Args:
        dy: gradient w.r.t. the output (shape of ``x``).
        cache: the cache returned by the forward pass.

    Returns:
        ``(dx, dweight, dbias)``; ``dweight``/``dbias`` are None when the forward had none.
    """
    if isinstance(cache, batch_norm_cuda.FusedBatchNormCache):
        check_grad(cache.name, dy, cache.x.shape, cache.x)
        return batch_norm_cuda.batch_norm_backward(dy, cache)
    if isinstance(cache, batch_norm_cpu.CpuBatchNormCache):
        check_grad(cache.name, dy, cache.x.shape if cache.pool is None else cache.pool.out.shape, cache.x)
        dx, dweight, dbias = batch_norm_cpu.backward(np.ascontiguousarray(dy, dtype=cache.x.dtype), cache)
        return dx, dweight if cache.weight is not None else None, dbias if cache.has_bias else None
    centred, invstd, weight = cache.centred, cache.invstd, cache.weight
    bshape, count = cache.bshape, cache.count
    check_grad(cache.name, dy, centred.shape, centred)
    if cache.relu_out is not None:
        xp = backend.get_array_module(dy)
        dy = xp.where(cache.relu_out <= 0, dy.dtype.type(0), dy)
    dbias_full = _channel_sum(dy)
    dy_centred = _channel_dot(dy, centred)  # sum(dy * (x - mean)) per channel
    dweight_full = dy_centred * invstd  # = sum(dy * xhat)
    a = invstd if weight is None else weight * invstd
    if cache.batch_stats and count > 0:
        # The compact form expanded per channel: dx = a * dy + b * (x - mean) + c.
        b = -a * invstd * dweight_full / count
        c = -a * dbias_full / count
        dx = dy * a.reshape(bshape)
        dx += centred * b.reshape(bshape)
        dx += c.reshape(bshape)
    else:
        dx = dy * a.reshape(bshape)
    dx = dx.astype(dy.dtype, copy=False)
    dweight = dweight_full if weight is not None else None
    dbias = dbias_full if cache.has_bias else None
    return dx, dweight, dbias
