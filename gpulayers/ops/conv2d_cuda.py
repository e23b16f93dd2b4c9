"""conv2d on the GPU: the launchers of ``cuda_kernels/conv2d.cu`` and cuBLAS GEMMs through CuPy.

Called by :mod:`gpulayers.ops.conv2d` for CuPy arrays, after validation. Three algorithms
(:func:`gpulayers.cuda.set_conv_algorithm` picks; :func:`choose_algorithm` applies it):

* ``"implicit_gemm"``: the kernels of ``cuda_kernels/conv2d_igemm.cu``
  (:mod:`gpulayers.ops.conv2d_igemm_cuda`); no column matrix, no cuBLAS.
* ``"im2col"``: ``im2col`` into a group-major column matrix of shape
  ``(C * kh * kw, N * OH * OW)``, one (batched-over-groups) GEMM with the weight, then a
  kernel that transposes the channel-major product to NCHW and adds the bias. Backward:
  ``dW`` by GEMM, ``dcol`` by GEMM and ``col2im`` (a gather) for ``dx``, ``db`` by a sum.
  The column matrix is built for at most :data:`COL_BUDGET_BYTES` at a time (the batch is
  processed in chunks beyond that) and kept for backward when one chunk covers the batch.
* ``"direct"``, chosen by ``"auto"`` when each output channel reads a single input channel
  (``in_channels / groups == 1``: depthwise convolutions and one-channel inputs), where the
  GEMMs would be tiny and memory-bound: one thread per output / input / weight element.

Everything is written against the array module of the input, so the same code runs with
NumPy arrays when :func:`gpulayers.kernels.get_function` is replaced by a CPU emulation of
the kernels (as ``tests/test_kernels_harness.py`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, cuda, kernels
from . import conv2d_igemm_cuda
from ._window import LaunchGeometry

__all__ = [
    "COL_BUDGET_BYTES",
    "choose_algorithm",
    "conv2d_backward",
    "conv2d_backward_data",
    "conv2d_backward_weight",
    "conv2d_forward",
]

_FILE = "conv2d.cu"

#: Largest column matrix (bytes) built at once; bigger batches are processed in chunks.
COL_BUDGET_BYTES = 512 * 2**20

#: Largest buffer (bytes) of per-lane partial weight gradients on the direct path.
_PARTIAL_BUDGET_BYTES = 64 * 2**20


@dataclass(frozen=True, slots=True)
class _ConvCache:
    x: Any
    weight: Any
    has_bias: bool
    geometry: LaunchGeometry
    algorithm: str
    col: Any  # the GEMM path's column matrix when it covers the whole batch, else None


def _i32(value: int) -> np.int32:
    return np.int32(value)


# ----------------------------------------------------------------------------------------------
# One launcher per kernel
# ----------------------------------------------------------------------------------------------
def _launch_im2col(x, col, batch: int, g: LaunchGeometry) -> None:
    total = g.channels * batch * g.plane_out
    args = (x, col, np.int64(total), _i32(batch), _i32(g.channels), _i32(g.height), _i32(g.width))
    kernels.launch(_FILE, "im2col_kernel", x.dtype, total, args + g.window_args())


def _launch_col2im(col, x_grad, batch: int, g: LaunchGeometry) -> None:
    total = x_grad.size
    args = (col, x_grad, np.int64(total), _i32(batch), _i32(g.channels), _i32(g.height), _i32(g.width))
    kernels.launch(_FILE, "col2im_kernel", col.dtype, total, args + g.window_args())


def _bias_and_output(bias, stand_in, y) -> tuple:
    """The ``bias, y, total, has_bias`` arguments of the forward kernels; ``stand_in`` (any array
    of the dtype) takes the place of an absent bias, which the kernel never reads."""
    return (stand_in if bias is None else bias), y, np.int64(y.size), _i32(bias is not None)


def _launch_gemm_to_nchw(gemm_out, bias, y, batch: int, g: LaunchGeometry) -> None:
    args = (gemm_out, *_bias_and_output(bias, gemm_out, y), _i32(batch), _i32(g.out_channels), np.int64(g.plane_out))
    kernels.launch(_FILE, "gemm_to_nchw_kernel", y.dtype, y.size, args)


def _launch_direct_forward(x, weight, bias, y, g: LaunchGeometry) -> None:
    shape = (_i32(g.channels), _i32(g.height), _i32(g.width), _i32(g.out_channels), _i32(g.groups))
    args = (x, weight, *_bias_and_output(bias, weight, y), *shape)
    kernels.launch(_FILE, "conv2d_direct_forward_kernel", x.dtype, y.size, args + g.window_args())


def _launch_direct_backward_data(dy, weight, x_grad, g: LaunchGeometry) -> None:
    total = x_grad.size
    args = (
        dy,
        weight,
        x_grad,
        np.int64(total),
        _i32(g.channels),
        _i32(g.height),
        _i32(g.width),
        _i32(g.out_channels),
        _i32(g.groups),
    )
    kernels.launch(_FILE, "conv2d_direct_backward_data_kernel", dy.dtype, total, args + g.window_args())


def _launch_direct_backward_weight(x, dy, partial, lanes: int, g: LaunchGeometry) -> None:
    total = partial.size
    args = (
        x,
        dy,
        partial,
        np.int64(total),
        _i32(lanes),
        _i32(g.batch),
        _i32(g.channels),
        _i32(g.height),
        _i32(g.width),
        _i32(g.out_channels),
        _i32(g.groups),
    )
    kernels.launch(_FILE, "conv2d_direct_backward_weight_kernel", x.dtype, total, args + g.window_args())


# ----------------------------------------------------------------------------------------------
# The op
# ----------------------------------------------------------------------------------------------
def choose_algorithm(channels: int, groups: int, flops: float = 0.0) -> str:
    """The algorithm set by :func:`gpulayers.cuda.set_conv_algorithm`; for ``"auto"``, ``"direct"``
    when each output channel reads one input channel, else implicit GEMM for a forward product
    under :data:`gpulayers.cuda.IMPLICIT_GEMM_MAX_FLOPS` and im2col + cuBLAS above it."""
    chosen = cuda.get_conv_algorithm()
    if chosen != "auto":
        return chosen
    if channels // groups == 1:
        return "direct"
    return "im2col" if flops >= cuda.IMPLICIT_GEMM_MAX_FLOPS else cuda.DEFAULT_GEMM


def _flops(g: LaunchGeometry) -> float:
    """Multiply-adds times two of the forward product."""
    return 2.0 * g.batch * g.out_h * g.out_w * g.out_channels * (g.channels // g.groups) * g.kernel_h * g.kernel_w


def _batch_chunk(g: LaunchGeometry, itemsize: int) -> int:
    """Samples per column matrix so that it stays within COL_BUDGET_BYTES (at least one)."""
    per_sample = g.channels * g.kernel_h * g.kernel_w * g.plane_out * itemsize
    return max(1, min(g.batch, COL_BUDGET_BYTES // max(1, per_sample)))


def _direct_lanes(g: LaunchGeometry, itemsize: int) -> int:
    """Partial sums per weight element on the direct path: a function of the shape only."""
    positions = g.batch * g.plane_out
    lanes = min(1024, max(1, positions // 32))
    weight_size = g.out_channels * g.in_per_group * g.kernel_h * g.kernel_w
    return max(1, min(lanes, _PARTIAL_BUDGET_BYTES // (weight_size * itemsize)))


def conv2d_forward(
    x,
    weight,
    bias,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    *,
    algorithm: str | None = None,
):
    """Forward conv2d of validated arguments (int pairs); returns ``(y, cache)``.

    Args:
        x: input ``(N, C, H, W)``, float32 or float64 (any strides).
        weight: ``(out_channels, C / groups, kh, kw)``, same dtype.
        bias: ``(out_channels,)`` or None.
        stride, padding, dilation: ``(h, w)`` pairs.
        groups: number of groups.
        algorithm: ``"implicit_gemm"``, ``"im2col"``, ``"direct"`` or None for :func:`choose_algorithm`.

    Shape:
        y: ``(N, out_channels, (H + 2 p - d (k - 1) - 1) // s + 1, ...)`` per axis.
    """
    xp = backend.get_array_module(x)
    kernels.name_expression("conv2d", x.dtype)  # float32 / float64 only, before any allocation
    g = LaunchGeometry.conv(x.shape, weight.shape, stride, padding, dilation, groups)
    n, oc, oh, ow = g.batch, g.out_channels, g.out_h, g.out_w
    algorithm = algorithm or choose_algorithm(g.channels, g.groups, _flops(g))
    if algorithm == "implicit_gemm" and not conv2d_igemm_cuda.fits(x.shape, (oh, ow)):
        algorithm = "im2col"  # beyond the kernels' 32-bit flat positions
    if algorithm not in ("implicit_gemm", "im2col", "direct"):
        raise ValueError(f"conv2d: expected algorithm 'implicit_gemm', 'im2col' or 'direct', got {algorithm!r}")

    col = None
    with backend.device_scope(x):  # first: contiguous copies land on x's device
        x = xp.ascontiguousarray(x)
        weight = xp.ascontiguousarray(weight, dtype=x.dtype)
        bias = None if bias is None else xp.ascontiguousarray(bias, dtype=x.dtype)
        if algorithm == "implicit_gemm":
            y = conv2d_igemm_cuda.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
            return y, _ConvCache(x, weight, bias is not None, g, algorithm, None)
        y = xp.empty((n, oc, oh, ow), dtype=x.dtype)
        if algorithm == "direct":
            _launch_direct_forward(x, weight, bias, y, g)
        elif n > 0:
            col = _gemm_forward(xp, x, weight, bias, y, g)
    return y, _ConvCache(x, weight, bias is not None, g, algorithm, col)


def _gemm_forward(xp, x, weight, bias, y, g: LaunchGeometry):
    k = g.in_per_group * g.kernel_h * g.kernel_w
    w_mat = weight.reshape(g.groups, g.out_per_group, k)
    chunk = _batch_chunk(g, x.dtype.itemsize)
    col = None
    # Batch chunks bound the column matrix's memory; usually one iteration.
    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        col = xp.empty((g.channels * g.kernel_h * g.kernel_w, nb * g.plane_out), dtype=x.dtype)
        _launch_im2col(x[n0 : n0 + nb], col, nb, g)
        gemm_out = xp.matmul(w_mat, col.reshape(g.groups, k, nb * g.plane_out))  # (groups, oc/g, nb*P)
        _launch_gemm_to_nchw(gemm_out, bias, y[n0 : n0 + nb], nb, g)
    return col if chunk >= g.batch else None


def conv2d_backward(dy, cache: _ConvCache, input_grad: bool = True):
    """Gradients ``(dx, dw, db)`` of :func:`conv2d_forward` for ``dy``; ``db`` is None without bias,
    ``dx`` without ``input_grad`` (its launches skipped)."""
    xp = backend.get_array_module(dy)
    x, weight, g = cache.x, cache.weight, cache.geometry
    db = None
    with backend.device_scope(x):
        dy = xp.ascontiguousarray(dy, dtype=x.dtype)
        if g.batch == 0:
            dx = xp.empty_like(x)
            dw = xp.zeros_like(weight)
            db = xp.zeros(g.out_channels, dtype=x.dtype) if cache.has_bias else None
        elif cache.algorithm == "implicit_gemm":
            window = ((g.stride_h, g.stride_w), (g.pad_h, g.pad_w), (g.dilation_h, g.dilation_w), g.groups)
            dx = conv2d_igemm_cuda.conv2d_backward_data(dy, weight, x.shape, *window) if input_grad else None
            dw, db = conv2d_igemm_cuda.conv2d_backward_weight_bias(x, dy, weight.shape, *window, bias=cache.has_bias)
        elif cache.algorithm == "direct":
            dx = None
            if input_grad:
                dx = xp.empty_like(x)
                _launch_direct_backward_data(dy, weight, dx, g)
            dw, db = _direct_weight_bias(xp, x, dy, weight.shape, g, cache.has_bias)
        else:
            dx, dw = _gemm_backward(xp, dy, cache)
            db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return (dx if input_grad else None), dw, db


def _direct_weight_bias(xp, x, dy, weight_shape, g: LaunchGeometry, bias: bool):
    """``(dW, db)`` on the direct path: per-lane partial sums, then one reduction over the lanes.

    With ``bias``, the kernel's rows past the weight's elements hold the per-lane sums of ``dy``
    per output channel, so the same reduction gives the bias gradient.
    """
    lanes = _direct_lanes(g, x.dtype.itemsize)
    weight_size = int(np.prod(weight_shape))
    partial = xp.empty((weight_size + (g.out_channels if bias else 0), lanes), dtype=x.dtype)
    _launch_direct_backward_weight(x, dy, partial, lanes, g)
    sums = partial.sum(axis=1)
    return sums[:weight_size].reshape(weight_shape), (sums[weight_size:] if bias else None)


def _gemm_backward(xp, dy, cache: _ConvCache):
    x, weight, g = cache.x, cache.weight, cache.geometry
    k = g.in_per_group * g.kernel_h * g.kernel_w
    w_t = weight.reshape(g.groups, g.out_per_group, k).transpose(0, 2, 1)  # (groups, K, oc/g)
    dx = xp.empty_like(x)
    dw = None
    chunk = _batch_chunk(g, x.dtype.itemsize)
    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        cols = nb * g.plane_out
        col = cache.col
        if col is None:  # not kept (the batch needed several chunks): rebuild this chunk's
            col = xp.empty((g.channels * g.kernel_h * g.kernel_w, cols), dtype=x.dtype)
            _launch_im2col(x[n0 : n0 + nb], col, nb, g)
        dy_t = _channel_major(xp, dy, n0, nb, g)
        dw_part = xp.matmul(dy_t, col.reshape(g.groups, k, cols).transpose(0, 2, 1))  # (groups, oc/g, K)
        dw = dw_part if dw is None else dw + dw_part
        dcol = xp.matmul(w_t, dy_t)  # (groups, K, nb*P)
        _launch_col2im(dcol, dx[n0 : n0 + nb], nb, g)
    return dx, dw.reshape(weight.shape)


# ----------------------------------------------------------------------------------------------
# The two halves of backward on their own (the forward and backward of ConvTranspose2d)
# ----------------------------------------------------------------------------------------------
def _channel_major(xp, dy, n0: int, nb: int, g: LaunchGeometry):
    """Samples ``n0:n0+nb`` of ``dy`` as the channel-major GEMM operand ``(groups, oc/g, nb*P)``."""
    dy_t = xp.ascontiguousarray(dy[n0 : n0 + nb].reshape(nb, g.out_channels, g.plane_out).transpose(1, 0, 2))
    return dy_t.reshape(g.groups, g.out_per_group, nb * g.plane_out)


def _gradient_geometry(
    what: str, x_shape, weight_shape, dy, stride, padding, dilation, groups, algorithm
) -> tuple[LaunchGeometry, str]:
    """The launch geometry of a gradient computed without the forward's cache, after checking that
    ``dy`` has the convolution's output shape, and the algorithm (``algorithm``, else the choice)."""
    g = LaunchGeometry.conv(x_shape, weight_shape, stride, padding, dilation, groups)
    if tuple(dy.shape) != (g.batch, g.out_channels, g.out_h, g.out_w):
        raise ValueError(f"{what}: dy of shape {tuple(dy.shape)} does not fit the input {x_shape}")
    return g, algorithm or choose_algorithm(g.channels, g.groups, _flops(g))


def conv2d_backward_data(dy, weight, x_shape, stride, padding, dilation, groups, *, algorithm=None):
    """``dx`` of a convolution of an input of ``x_shape`` for ``dy``, without the forward's cache.

    ``dy`` must have the convolution's output size; the algorithm as :func:`choose_algorithm`.
    """
    xp = backend.get_array_module(dy)
    kernels.name_expression("conv2d", dy.dtype)  # float32 / float64 only
    args = (x_shape, weight.shape, dy, stride, padding, dilation, groups, algorithm)
    g, algorithm = _gradient_geometry("conv2d_backward_data", *args)
    with backend.device_scope(dy):  # first: contiguous copies land on dy's device
        dy = xp.ascontiguousarray(dy)
        weight = xp.ascontiguousarray(weight, dtype=dy.dtype)
        if algorithm == "implicit_gemm":
            return conv2d_igemm_cuda.conv2d_backward_data(dy, weight, x_shape, stride, padding, dilation, groups)
        dx = xp.empty(tuple(int(v) for v in x_shape), dtype=dy.dtype)
        if g.batch == 0:
            return dx
        if algorithm == "direct":
            _launch_direct_backward_data(dy, weight, dx, g)
            return dx
        k = g.in_per_group * g.kernel_h * g.kernel_w
        w_t = weight.reshape(g.groups, g.out_per_group, k).transpose(0, 2, 1)  # (groups, K, oc/g)
        chunk = _batch_chunk(g, dy.dtype.itemsize)
        for n0 in range(0, g.batch, chunk):
            nb = min(chunk, g.batch - n0)
            dcol = xp.matmul(w_t, _channel_major(xp, dy, n0, nb, g))  # (groups, K, nb*P)
            _launch_col2im(dcol, dx[n0 : n0 + nb], nb, g)
    return dx


def conv2d_backward_weight(x, dy, weight_shape, stride, padding, dilation, groups, *, algorithm=None):
    """``dW`` of a convolution of ``x`` for ``dy``, without the forward's cache."""
    xp = backend.get_array_module(x)
    kernels.name_expression("conv2d", x.dtype)
    args = (x.shape, weight_shape, dy, stride, padding, dilation, groups, algorithm)
    g, algorithm = _gradient_geometry("conv2d_backward_weight", *args)
    weight_shape = tuple(int(v) for v in weight_shape)
    with backend.device_scope(x):  # first: contiguous copies land on x's device
        x = xp.ascontiguousarray(x)
        dy = xp.ascontiguousarray(dy, dtype=x.dtype)
        if algorithm == "implicit_gemm":
            return conv2d_igemm_cuda.conv2d_backward_weight(x, dy, weight_shape, stride, padding, dilation, groups)
        if g.batch == 0:
            return xp.zeros(weight_shape, dtype=x.dtype)
        if algorithm == "direct":
            return _direct_weight_bias(xp, x, dy, weight_shape, g, False)[0]
        k = g.in_per_group * g.kernel_h * g.kernel_w
        dw = None
        chunk = _batch_chunk(g, x.dtype.itemsize)
        for n0 in range(0, g.batch, chunk):
            nb = min(chunk, g.batch - n0)
            col = xp.empty((g.channels * g.kernel_h * g.kernel_w, nb * g.plane_out), dtype=x.dtype)
            _launch_im2col(x[n0 : n0 + nb], col, nb, g)
            part = xp.matmul(_channel_major(xp, dy, n0, nb, g), col.reshape(g.groups, k, -1).transpose(0, 2, 1))
            dw = part if dw is None else dw + part
    return dw.reshape(weight_shape)
