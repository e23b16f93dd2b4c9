"""conv2d and linear as implicit GEMM: the launchers of ``cuda_kernels/conv2d_igemm.cu``.

No column matrix and no cuBLAS: each kernel gathers its operand tiles straight from the NCHW
arrays into shared memory (see the kernel file). That keeps a training step free of library
calls that CUDA-graph capture refuses, and its memory to the output plus what backward keeps.

Every function takes validated arguments (int pairs, matching float dtypes, C-contiguous or
not) and is written against the input's array module, so the harness in
``tests/kernel_harness`` can run the same launch code on NumPy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend, kernels
from ._window import LaunchGeometry, int32s

__all__ = [
    "TILE",
    "conv2d_backward_data",
    "conv2d_backward_weight",
    "conv2d_backward_weight_bias",
    "conv2d_forward",
    "fits",
    "linear_backward",
    "linear_forward",
    "weight_split",
]

_FILE = "conv2d_igemm.cu"

#: Output tile (rows, columns) and reduction step of every kernel; 256 threads per block.
TILE = (64, 64, 16)
_THREADS = 256

#: Blocks the weight gradient aims for when it splits its reduction (enough for a large GPU).
_WEIGHT_BLOCKS = 512

#: Largest buffer (bytes) of per-chunk partial weight gradients.
_PARTIAL_BUDGET_BYTES = 64 * 2**20


def _shape_args(s: LaunchGeometry) -> tuple:
    """The sizes every implicit-GEMM kernel takes, in the kernels' argument order."""
    return int32s(
        s.batch,
        s.channels,
        s.height,
        s.width,
        s.out_channels,
        s.out_h,
        s.out_w,
        s.kernel_h,
        s.kernel_w,
        s.stride_h,
        s.stride_w,
        s.pad_h,
        s.pad_w,
        s.dilation_h,
        s.dilation_w,
        s.groups,
    )


def fits(x_shape, out_hw) -> bool:
    """Whether the kernels' 32-bit flat positions (``N*H*W`` and ``N*OH*OW``) can index this input."""
    n, _, h, w = (int(v) for v in x_shape)
    return n * max(h * w, int(out_hw[0]) * int(out_hw[1])) < 2**31


def _tiles(rows: int, cols: int, groups: int) -> int:
    bm, bn, _ = TILE
    return groups * -(-rows // bm) * -(-cols // bn)


def _launch(kernel: str, dtype: Any, tiles: int, args: tuple) -> None:
    if tiles <= 0:
        return
    function = kernels.get_function(_FILE, kernel, dtype)
    function((min(tiles, kernels.MAX_GRID),), (_THREADS,), args)


def weight_split(s: LaunchGeometry, itemsize: int) -> tuple[int, int]:
    """``(splits, chunk)``: the weight gradient's reduction over ``N*OH*OW`` positions in
    ``splits`` chunks of ``chunk`` positions (a multiple of the reduction step).

    A function of the shape alone, never of the grid, so the sum's order and bits are fixed.
    """
    step = TILE[2]
    positions = s.batch * s.out_h * s.out_w
    depth = s.channels // s.groups * s.kernel_h * s.kernel_w
    tiles = _tiles(s.out_channels // s.groups, depth, s.groups)
    splits = max(1, min(-(-positions // step), -(-_WEIGHT_BLOCKS // tiles)))
    splits = max(1, min(splits, _PARTIAL_BUDGET_BYTES // max(1, s.out_channels * depth * itemsize)))
    chunk = -(-positions // splits)
    chunk = -(-chunk // step) * step
    return max(1, -(-positions // chunk)), chunk


def conv2d_forward(x, weight, bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """``y`` of a convolution (bias added in the kernel's epilogue)."""
    xp = backend.get_array_module(x)
    kernels.name_expression("conv2d", x.dtype)  # float32 / float64 only
    s = LaunchGeometry.conv(x.shape, weight.shape, stride, padding, dilation, groups)
    with backend.device_scope(x):  # first: contiguous copies land on x's device
        x = xp.ascontiguousarray(x)
        weight = xp.ascontiguousarray(weight, dtype=x.dtype)
        has_bias = bias is not None
        bias = xp.ascontiguousarray(bias, dtype=x.dtype) if has_bias else weight  # never read without bias
        y = xp.empty((s.batch, s.out_channels, s.out_h, s.out_w), dtype=x.dtype)
        tiles = _tiles(s.out_channels // s.groups, s.batch * s.out_h * s.out_w, s.groups)
        _launch(
            "conv2d_igemm_forward_kernel", x.dtype, tiles, (x, weight, bias, y, *_shape_args(s), np.int32(has_bias))
        )
    return y


def conv2d_backward_data(dy, weight, x_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """``dx`` of a convolution, as a gather (every element written once, no atomics)."""
    xp = backend.get_array_module(dy)
    s = LaunchGeometry.conv(x_shape, weight.shape, stride, padding, dilation, groups)
    with backend.device_scope(dy):
        dy = xp.ascontiguousarray(dy)
        weight = xp.ascontiguousarray(weight, dtype=dy.dtype)
        dx = xp.empty(tuple(int(v) for v in x_shape), dtype=dy.dtype)
        tiles = _tiles(s.channels // s.groups, s.batch * s.height * s.width, s.groups)
        _launch("conv2d_igemm_backward_data_kernel", dy.dtype, tiles, (dy, weight, dx, *_shape_args(s)))
    return dx


def conv2d_backward_weight(x, dy, weight_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """``dW`` of a convolution: chunked reduction, chunks added in a fixed order."""
    return conv2d_backward_weight_bias(x, dy, weight_shape, stride, padding, dilation, groups, bias=False)[0]


def conv2d_backward_weight_bias(
    x, dy, weight_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, *, bias=True
):
    """``(dW, db)`` of a convolution in the same launches (``db`` None without ``bias``): the
    weight kernel's first column tiles also sum ``dy`` per channel, chunks added in a fixed order."""
    xp = backend.get_array_module(x)
    s = LaunchGeometry.conv(x.shape, weight_shape, stride, padding, dilation, groups)
    depth = s.channels // s.groups * s.kernel_h * s.kernel_w
    weight_shape = tuple(int(v) for v in weight_shape)
    weight_size = s.out_channels * depth
    with backend.device_scope(x):
        x = xp.ascontiguousarray(x)
        dy = xp.ascontiguousarray(dy, dtype=x.dtype)
        if s.batch * s.out_h * s.out_w == 0:
            db = xp.zeros(s.out_channels, dtype=x.dtype) if bias else None
            return xp.zeros(weight_shape, dtype=x.dtype), db
        splits, chunk = weight_split(s, x.dtype.itemsize)
        out = xp.empty(weight_size + (s.out_channels if bias else 0), dtype=x.dtype)  # dW, then db
        partial = out if splits == 1 else xp.empty((splits, out.size), dtype=x.dtype)
        tiles = splits * _tiles(s.out_channels // s.groups, depth, s.groups)
        args = (x, dy, partial, *_shape_args(s), np.int32(splits), np.int64(chunk), np.int32(bias))
        _launch("conv2d_igemm_backward_weight_kernel", x.dtype, tiles, args)
        if splits > 1:
            args = (partial, out, np.int64(out.size), np.int32(splits))
            kernels.launch(_FILE, "conv2d_igemm_reduce_kernel", x.dtype, out.size, args)
    dw = out[:weight_size].reshape(weight_shape)
    return dw, (out[weight_size:] if bias else None)


# A linear layer is a 1x1 convolution of a 1x1 image: (N, in) is (N, in, 1, 1) in memory.
_ONE = ((1, 1), (0, 0), (1, 1), 1)


def linear_forward(x, weight, bias):
    """``x @ weight.T + bias`` for ``x`` of shape ``(N, in)`` and ``weight`` ``(out, in)``."""
    n, i = (int(v) for v in x.shape)
    o = int(weight.shape[0])
    y = conv2d_forward(x.reshape(n, i, 1, 1), weight.reshape(o, i, 1, 1), bias, *_ONE)
    return y.reshape(n, o)


def linear_backward(dy, x, weight, need_input_grad: bool = True, bias: bool = False):
    """``(dx, dW, db)`` of :func:`linear_forward`; ``dx`` None if not needed, ``db`` (the column sum
    of ``dy``, from the weight gradient's launches) None without ``bias``."""
    n, i = (int(v) for v in x.shape)
    o = int(weight.shape[0])
    dy4 = dy.reshape(n, o, 1, 1)
    dx = None
    if need_input_grad:
        dx = conv2d_backward_data(dy4, weight.reshape(o, i, 1, 1), (n, i, 1, 1), *_ONE).reshape(n, i)
    dw, db = conv2d_backward_weight_bias(x.reshape(n, i, 1, 1), dy4, (o, i, 1, 1), *_ONE, bias=bias)
    return dx, dw.reshape(o, i), db
