"""max_pool2d on the GPU: the launchers of ``cuda_kernels/max_pool2d.cu``.

Called by :mod:`gpulayers.ops.max_pool2d` for CuPy arrays, after validation and with the output
size already chosen (``ceil_mode`` enters only through it). Forward saves the argmax of every
window as an int32 index into its input plane; backward is a gather over it, deterministic
and equal to PyTorch's scatter (same summation order).

Written against the array module of the input, so the same code runs with NumPy arrays when
:func:`gpulayers.kernels.get_function` is replaced by a CPU emulation of the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, kernels
from ._window import LaunchGeometry

__all__ = ["max_pool2d_backward", "max_pool2d_forward"]

_FILE = "max_pool2d.cu"
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class _PoolCache:
    argmax: Any  # int32 (N, C, out_h, out_w): flat index into the input plane
    x_shape: tuple[int, int, int, int]
    dtype: Any
    geometry: LaunchGeometry


def _geometry_args(g: LaunchGeometry) -> tuple:
    """The argument tail of both kernels, in C order: height, width, out_h, out_w, then the window."""
    window = g.window_args()  # kernel, stride, padding, dilation (h, w each), out_h, out_w
    return (np.int32(g.height), np.int32(g.width)) + window[-2:] + window[:-2]


def _launch_forward(x, y, argmax, g: LaunchGeometry) -> None:
    total = y.size
    args = (x, y, argmax, np.int64(total)) + _geometry_args(g)
    kernels.launch(_FILE, "max_pool2d_forward_kernel", x.dtype, total, args)


def _launch_backward(dy, argmax, x_grad, g: LaunchGeometry) -> None:
    total = x_grad.size
    args = (dy, argmax, x_grad, np.int64(total)) + _geometry_args(g)
    kernels.launch(_FILE, "max_pool2d_backward_kernel", dy.dtype, total, args)


def max_pool2d_forward(
    x,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
):
    """Forward max_pool2d of validated arguments (int pairs); returns ``(y, cache)``.

    Args:
        x: input ``(N, C, H, W)``, float32 or float64 (any strides).
        kernel, stride, padding, dilation: ``(h, w)`` pairs.
        out_size: ``(out_h, out_w)``, from the floor or ceil output-size rule.

    Shape:
        y: ``(N, C, out_h, out_w)``.
    """
    xp = backend.get_array_module(x)
    kernels.name_expression("max_pool2d", x.dtype)  # float32 / float64 only
    n, c, h, w = (int(v) for v in x.shape)
    g = LaunchGeometry.pool(x.shape, kernel, stride, padding, dilation, out_size)
    # The argmax is an int32 plane index (an empty window's index may lie a little past the plane).
    if (h + g.pad_h + g.dilation_h + 1) * (w + g.pad_w + g.dilation_w + 1) > _INT32_MAX:
        raise ValueError(f"max_pool2d: an input plane of {h}x{w} is too large for the CUDA kernel's int32 indices")
    with backend.device_scope(x):  # first: a contiguous copy of a strided x lands on x's device
        x = xp.ascontiguousarray(x)
        y = xp.empty((n, c, g.out_h, g.out_w), dtype=x.dtype)
        argmax = xp.empty((n, c, g.out_h, g.out_w), dtype=np.int32)
        _launch_forward(x, y, argmax, g)
    return y, _PoolCache(argmax, (n, c, h, w), x.dtype, g)


def max_pool2d_backward(dy, cache: _PoolCache):
    """Gradient w.r.t. the input of :func:`max_pool2d_forward` for ``dy``."""
    xp = backend.get_array_module(dy)
    with backend.device_scope(dy):
        dy = xp.ascontiguousarray(dy, dtype=cache.dtype)
        dx = xp.empty(cache.x_shape, dtype=cache.dtype)
        _launch_backward(dy, cache.argmax, dx, cache.geometry)
    return dx
