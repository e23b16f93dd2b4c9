"""2-D average pooling and adaptive average pooling, forward and backward.

``y, cache = avg_pool2d_forward(x, kernel_size, ...)`` and ``dx = avg_pool2d_backward(dy, cache)``;
the same pair for ``adaptive_avg_pool2d``. Both are written against the array module of the
input and run on either device (no custom kernel: sums of strided views and small matmuls).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from .._checks import check_bool, check_input, grad_marker
from ._window import offset_views
from .max_pool2d import (
    PoolArgs,
    PoolCache,
    _check_backward,
    _crop,
    _padded,
    _padded_shape,
    pool_arguments,
    pooled_output_size,
)

__all__ = [
    "adaptive_output_size",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward",
    "adaptive_avg_pool2d_backward",
]


# -- average pooling ---------------------------------------------------------------------------------


def _avg_divisor(xp, shape: tuple, a: PoolArgs, out: tuple[int, int], count_include_pad: bool, dtype) -> Any:
    """PyTorch's per-window divisor: windows clipped to the padded extent, or to the real pixels."""

    def per_axis(size: int, k: int, s: int, p: int, o: int) -> np.ndarray:
        start = np.arange(o) * s - p
        end = np.minimum(start + k, size + p)
        if count_include_pad:
            return end - start
        return np.minimum(end, size) - np.maximum(start, 0)

    rows = per_axis(shape[2], a.kernel[0], a.stride[0], a.padding[0], out[0])
    cols = per_axis(shape[3], a.kernel[1], a.stride[1], a.padding[1], out[1])
    return xp.asarray(np.outer(rows, cols).astype(dtype))


def avg_pool2d_forward(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    *,
    name: str = "avg_pool2d",
) -> tuple[Any, PoolCache]:
    """Average pooling of an NCHW batch, PyTorch's ``F.avg_pool2d``.

    Args:
        x: input ``(N, C, H, W)``, float32 or float64, NumPy or CuPy.
        kernel_size: int or pair.
        stride: int or pair; None means ``kernel_size``.
        padding: implicit zero padding, at most half the kernel. Defaults to 0.
        ceil_mode: round the output size up. Defaults to False.
        count_include_pad: divide by the window size including padding (but never beyond the
            padded input); False divides by the number of real pixels. Defaults to True.
        name: who is calling, for error messages (a layer passes its class name).

    Returns:
        ``(y, cache)``.

    Shape:
        ``OH = floor_or_ceil((H + 2*ph - kh) / sh) + 1``, likewise ``OW``.
    """
    check_input(name, x, 4, "(N, C, H, W)")
    a = pool_arguments(name, kernel_size, stride, padding, 1, ceil_mode)
    count_include_pad = check_bool(name, "count_include_pad", count_include_pad)
    out = pooled_output_size(name, x, a)
    xp = backend.get_array_module(x)
    with backend.device_scope(x):
        buf = _padded(xp.ascontiguousarray(x), a, out, 0.0)
        total = None
        for _, _, view in offset_views(buf, a.kernel, a.stride, a.dilation, out):
            total = view.copy() if total is None else xp.add(total, view, out=total)
        divisor = _avg_divisor(xp, x.shape, a, out, count_include_pad, x.dtype)
        total /= divisor
    return total, PoolCache(divisor, a, tuple(x.shape), tuple(total.shape), grad_marker(x), name)


def avg_pool2d_backward(dy: Any, cache: PoolCache | None) -> Any:
    """Gradient of :func:`avg_pool2d_forward`: each window spreads ``dy / divisor`` over its pixels."""
    dy = _check_backward("avg_pool2d", dy, cache)
    xp = backend.get_array_module(dy)
    a = cache.a
    with backend.device_scope(dy):
        share = dy / cache.data
        dx = xp.zeros(_padded_shape(cache.in_shape, a, cache.out_shape[2:]), dtype=dy.dtype)
        for _, _, view in offset_views(dx, a.kernel, a.stride, a.dilation, cache.out_shape[2:]):
            view += share
        return _crop(dx, a, cache.in_shape)


# -- adaptive average pooling ------------------------------------------------------------------------


def adaptive_output_size(name: str, output_size: Any, in_hw: tuple[int, int] | None = None) -> tuple:
    """``output_size`` as a pair; None entries keep the input size (when ``in_hw`` is given)."""
    if output_size is None or isinstance(output_size, (int, np.integer)):
        sizes = (output_size, output_size)
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        sizes = tuple(output_size)
    else:
        raise TypeError(f"{name}: expected output_size to be an int, None or a pair, got {output_size!r}")
    for s in sizes:
        if s is not None and (not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1):
            raise ValueError(f"{name}: expected output_size entries >= 1 (or None), got {output_size!r}")
    if in_hw is None:
        return sizes
    return tuple(int(in_hw[i]) if s is None else int(s) for i, s in enumerate(sizes))


def _adaptive_matrix(size: int, out: int, dtype) -> np.ndarray:
    """``(out, size)``: row i averages input [floor(i*size/out), ceil((i+1)*size/out))."""
    i = np.arange(out)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    pos = np.arange(size)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def adaptive_avg_pool2d_forward(
    x: Any, output_size: Any, *, name: str = "adaptive_avg_pool2d"
) -> tuple[Any, PoolCache]:
    """Adaptive average pooling, PyTorch's ``F.adaptive_avg_pool2d``: ``y = Ah @ x @ Aw^T``.

    Args:
        x: input ``(N, C, H, W)``, float32 or float64, NumPy or CuPy.
        output_size: int or pair ``(oh, ow)``; None keeps that input size.
        name: who is calling, for error messages (a layer passes its class name).

    Returns:
        ``(y, cache)``.

    Shape:
        ``(N, C, oh, ow)``; output cell ``i`` averages rows ``[floor(i*H/oh), ceil((i+1)*H/oh))``.
    """
    check_input(name, x, 4, "(N, C, H, W)")
    h, w = x.shape[2], x.shape[3]
    if h < 1 or w < 1:
        raise ValueError(f"{name}: expected a non-empty image (H, W >= 1), got input shape {tuple(x.shape)}")
    oh, ow = adaptive_output_size(name, output_size, x.shape[2:])
    xp = backend.get_array_module(x)
    with backend.device_scope(x):
        if (oh, ow) == (1, 1):  # global average pool: a plain mean is faster and exact (no matrices)
            ah = aw = None
            y = x.mean(axis=(2, 3), keepdims=True)
        else:
            ah = xp.asarray(_adaptive_matrix(h, oh, x.dtype))
            aw = xp.asarray(_adaptive_matrix(w, ow, x.dtype))
            y = xp.matmul(xp.matmul(ah, x), aw.T)
    return y, PoolCache((ah, aw), None, tuple(x.shape), tuple(y.shape), grad_marker(x), name)


def adaptive_avg_pool2d_backward(dy: Any, cache: PoolCache | None) -> Any:
    """Gradient of :func:`adaptive_avg_pool2d_forward`: ``dx = Ah^T @ dy @ Aw``."""
    dy = _check_backward("adaptive_avg_pool2d", dy, cache)
    xp = backend.get_array_module(dy)
    ah, aw = cache.data
    with backend.device_scope(dy):
        if cache.out_shape[2:] == (1, 1):  # each input's share, written straight into a new array
            return xp.divide(xp.broadcast_to(dy, cache.in_shape), cache.in_shape[2] * cache.in_shape[3])
        return xp.ascontiguousarray(xp.matmul(xp.matmul(ah.T, dy), aw))
