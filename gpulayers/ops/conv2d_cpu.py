"""2-D convolution on NumPy arrays: im2col and GEMM per block of samples, the blocks over threads.

The batch is cut into blocks of whole samples whose columns take about ``COLUMN_BLOCK_BYTES``
(see :func:`gpulayers.threads.run_blocks`). Each block builds its column matrix with one
strided copy, multiplies it with the weight through single-threaded BLAS, and in backward
scatters its column gradient back with one strided ``+=`` per kernel offset (the positions of a
single offset never repeat, so the in-place add is exact). A block's temporaries stay in the
core's cache, and the threads of :mod:`gpulayers.threads` run the blocks side by side.

The weight gradient is one partial product per block, summed in block order: the blocks depend
only on the shapes, so the result is bitwise the same on any number of threads.

Within a block the columns are laid out per sample or for the whole block at once, whichever
moves less memory for the shape at hand (see :func:`_use_sample_major`).

Stride-1 convolutions whose output is as wide as their input (3x3 with padding 1, "same", 1x1,
and their dilated forms: the common case) take a faster route, the *flat-run columns* (the
section of that name below): the columns are copied as whole contiguous runs, a few samples at
a time so that they stay in L2, the bias is a GEMM row, and ``dx`` is a convolution of ``dy``
or a col2im of contiguous adds. On a 2-core Xeon it ran the reference CNN's 32->64 channel
layer's forward in 0.8x and its backward in 0.9x of this general path's time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import threads
from ._window import offset_views

if TYPE_CHECKING:
    from .conv2d import ConvArgs

__all__ = ["CpuConvCache", "forward", "backward", "input_grad", "weight_grad"]

# Sample-major columns while C/groups*kh*kw times this stays below OH*OW (see _use_sample_major).
SAMPLE_MAJOR_MAX_RATIO = 2.0
# Forward takes per-sample GEMMs from this many output pixels on.
FORWARD_SAMPLE_MAJOR_MIN_PIXELS = 128
# Bytes of one block's column matrix at most: GEMMs large enough for BLAS, temporaries that stay in
# the caches. Fewer, larger blocks cost less per sample (measured on a 2-core Xeon: 4 MiB blocks ran
# a 32->64 channel backward at 14x14 in two thirds of the time of 1 MiB blocks).
COLUMN_BLOCK_BYTES = 1 << 22
# Blocks a batch is cut into at least (when it has that many samples).
MIN_BLOCKS = 2


@dataclass(frozen=True, slots=True)
class CpuConvCache:
    """What :func:`backward` needs: the input (its columns are rebuilt in backward, not kept)."""

    x: np.ndarray
    weight: np.ndarray
    has_bias: bool
    a: ConvArgs


def _use_sample_major(rows: int, pixels: int) -> bool:
    """Column layout: per-sample GEMMs, or one GEMM per group over the whole block.

    Sample-major columns ``(N, C*kh*kw, OH*OW)`` give the output in NCHW directly but leave
    ``dW`` as N partial products to sum (N*O*rows values); channel-major columns
    ``(C*kh*kw, N*OH*OW)`` make every product one GEMM at the price of transposing the output
    and its gradient (N*O*OH*OW values each). Pick whichever moves less memory.
    """
    return rows * SAMPLE_MAJOR_MAX_RATIO < pixels


def _forward_sample_major(rows: int, pixels: int) -> bool:
    """Forward needs no ``dW``: per-sample GEMMs (NCHW output, no transpose) unless the images are tiny."""
    return _use_sample_major(rows, pixels) or pixels >= FORWARD_SAMPLE_MAJOR_MIN_PIXELS


def _column_bytes(x_shape: tuple, kernel: tuple[int, int], a: ConvArgs, itemsize: int) -> int:
    """Bytes of one sample's columns (the largest temporary of a block)."""
    return x_shape[1] * kernel[0] * kernel[1] * a.out_size[0] * a.out_size[1] * itemsize


def _block_bytes(x_shape: tuple, kernel: tuple[int, int], a: ConvArgs, itemsize: int) -> tuple[int, int]:
    """``(bytes per sample, bytes per block)``: blocks of at most ``COLUMN_BLOCK_BYTES``, and at least
    ``MIN_BLOCKS`` of them when the batch allows (the threads need several to share)."""
    per_sample = _column_bytes(x_shape, kernel, a, itemsize)
    return per_sample, min(COLUMN_BLOCK_BYTES, max(1, per_sample * x_shape[0] // MIN_BLOCKS))


def _blocks(x_shape: tuple, kernel: tuple[int, int], a: ConvArgs, itemsize: int) -> list[tuple[int, int]]:
    return threads.batch_blocks(x_shape[0], *_block_bytes(x_shape, kernel, a, itemsize))


def _run(fn, x_shape: tuple, kernel: tuple[int, int], a: ConvArgs, itemsize: int) -> None:
    threads.run_blocks(fn, x_shape[0], *_block_bytes(x_shape, kernel, a, itemsize))


# -- the whole batch, block by block ------------------------------------------------------------------


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, a: ConvArgs):
    """``(y, cache)`` for contiguous ``x`` and ``weight`` (padding already symmetric)."""
    out_c, _, kh, kw = weight.shape
    y = np.empty((x.shape[0], out_c, *a.out_size), dtype=x.dtype)
    if _flat(x.shape, a):
        plan = _FlatForward(weight, bias, a)

        def block(start: int, stop: int) -> None:
            plan(x[start:stop], y[start:stop])

    else:
        # The bias spread over whole rows: NumPy adds a broadcast (1, O, 1, 1) array ~1.6x slower.
        pixels = a.out_size[0] * a.out_size[1]
        bias_rows = (
            None if bias is None else np.repeat(bias.astype(x.dtype, copy=False), pixels).reshape(1, out_c, pixels)
        )

        def block(start: int, stop: int) -> None:
            _forward_block(x[start:stop], weight, bias_rows, a, y[start:stop])

    _run(block, x.shape, (kh, kw), a, x.itemsize)
    return y, CpuConvCache(x, weight, bias is not None, a)


def backward(dy: np.ndarray, cache: CpuConvCache, input_grad: bool = True):
    """``(dx, dw, db)``; ``dx`` is None without ``input_grad``."""
    x, weight, a = cache.x, cache.weight, cache.a
    dx = np.empty_like(x) if input_grad else None
    dw, db = _weight_grad_blocks(x, dy, weight.shape, a, cache.has_bias, dx, weight)
    return dx, dw, db


def input_grad(dy: np.ndarray, weight: np.ndarray, x_shape: tuple, a: ConvArgs) -> np.ndarray:
    """``dx`` alone, for an input of ``x_shape`` (the forward of a transposed convolution)."""
    _, _, kh, kw = weight.shape
    dx = np.empty(x_shape, dtype=dy.dtype)
    plan = _flat_backward(x_shape, weight.shape, weight, a, dy.itemsize, weight_grad=False, input_grad=True)

    def block(start: int, stop: int) -> None:
        if plan is not None:
            plan(None, dy[start:stop], dx[start:stop])
        else:
            _input_grad_block(dy[start:stop], weight, a, dx[start:stop])

    _run(block, x_shape, (kh, kw), a, dy.itemsize)
    return dx


def weight_grad(x: np.ndarray, dy: np.ndarray, weight_shape: tuple, a: ConvArgs) -> np.ndarray:
    """``dW`` alone (the weight gradient of a transposed convolution)."""
    return _weight_grad_blocks(x, dy, tuple(weight_shape), a, False)[0]


def _weight_grad_blocks(
    x: np.ndarray, dy: np.ndarray, weight_shape: tuple, a: ConvArgs, bias: bool, dx: Any = None, weight: Any = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(dW, db)`` as per-block partial results summed in block order (``db`` with ``bias``);
    ``dx`` filled too when given (from ``weight``)."""
    kernel = weight_shape[2:]
    blocks = _blocks(x.shape, kernel, a, x.itemsize)
    index = {start: k for k, (start, _) in enumerate(blocks)}
    partial = np.empty((len(blocks), *weight_shape), dtype=x.dtype)
    partial_db = np.empty((len(blocks), dy.shape[1]), dtype=dy.dtype) if bias else None
    sample_major = _use_sample_major(math.prod(weight_shape[1:]), a.out_size[0] * a.out_size[1])
    plan = _flat_backward(x.shape, weight_shape, weight, a, x.itemsize, weight_grad=True, input_grad=dx is not None)

    def block(start: int, stop: int) -> None:
        g = dy[start:stop]
        if partial_db is not None:
            np.einsum("ncl->c", g.reshape(*g.shape[:2], -1), out=partial_db[index[start]])
        if plan is not None:
            partial[index[start]] = plan(x[start:stop], g, None if dx is None else dx[start:stop])
            return
        grad = None if sample_major else _channel_major(g, a.groups)  # shared by both products
        cols = _im2col(x[start:stop], kernel, a, sample_major)
        partial[index[start]] = _weight_grad_block(cols, g, weight_shape, a, sample_major, grad)
        if dx is not None:  # the columns are no longer needed: their scratch takes the column gradient
            _input_grad_block(g, weight, a, dx[start:stop], grad)

    _run(block, x.shape, kernel, a, x.itemsize)
    db = None if partial_db is None else partial_db.sum(axis=0)
    return (partial[0].copy() if len(blocks) == 1 else partial.sum(axis=0)), db


# -- one block -----------------------------------------------------------------------------------------


def _forward_block(x: np.ndarray, weight: np.ndarray, bias_rows: np.ndarray | None, a: ConvArgs, y: np.ndarray) -> None:
    """One block's output into ``y``; ``bias_rows``: the bias as ``(1, O, OH*OW)`` rows, or None."""
    n = x.shape[0]
    out_c, cg, kh, kw = weight.shape
    (oh, ow), g = a.out_size, a.groups
    rows, pixels = cg * kh * kw, oh * ow
    sample_major = _forward_sample_major(rows, pixels)
    cols = _im2col(x, (kh, kw), a, sample_major)
    w_mat = weight.reshape(g, out_c // g, rows)
    if sample_major:
        # (G, O/G, rows) @ (N, G, rows, OH*OW) -> (N, G, O/G, OH*OW): NCHW directly.
        np.matmul(w_mat, cols.reshape(n, g, rows, pixels), out=y.reshape(n, g, out_c // g, pixels))
        if bias_rows is not None:
            np.add(y.reshape(n, out_c, pixels), bias_rows, out=y.reshape(n, out_c, pixels))
        return
    # (G, O/G, rows) @ (G, rows, N*OH*OW) -> (O, N, OH, OW), then to NCHW (adding the bias on the way).
    prod = threads.workspace("conv2d.product", (g, out_c // g, n * pixels), x.dtype)
    np.matmul(w_mat, cols.reshape(g, rows, n * pixels), out=prod)
    y_t = prod.reshape(out_c, n, pixels).transpose(1, 0, 2)
    if bias_rows is not None:
        np.add(y_t, bias_rows, out=y.reshape(n, out_c, pixels))
    else:
        np.copyto(y.reshape(n, out_c, pixels), y_t)


def _channel_major(dy: np.ndarray, groups: int) -> np.ndarray:
    """``dy`` as ``(G, O/G, N*OH*OW)``: the output gradient in the channel-major column order."""
    n, out_c = dy.shape[:2]
    grad = threads.workspace("conv2d.grad", (out_c, n) + dy.shape[2:], dy.dtype)
    np.copyto(grad, dy.transpose(1, 0, 2, 3))
    return grad.reshape(groups, out_c // groups, -1)


def _weight_grad_block(
    cols: np.ndarray, dy: np.ndarray, weight_shape: tuple, a: ConvArgs, sample_major: bool, grad: Any
) -> np.ndarray:
    """The block's share of ``dW`` from its columns and output gradient (``grad``: channel-major ``dy``).

    Computed as ``dW^T = cols @ dy^T`` and transposed back: OpenBLAS runs that orientation about
    20% faster than ``dy @ cols^T`` at a 32->64 channel layer's sizes (2-core Xeon, one thread).
    """
    n = dy.shape[0]
    out_c, cg, kh, kw = weight_shape
    g, rows, pixels = a.groups, cg * kh * kw, a.out_size[0] * a.out_size[1]
    if sample_major:
        dy_t = dy.reshape(n, g, out_c // g, pixels).transpose(0, 1, 3, 2)
        dw_t = np.matmul(cols.reshape(n, g, rows, pixels), dy_t).sum(axis=0)
    else:
        dw_t = np.matmul(cols.reshape(g, rows, n * pixels), grad.transpose(0, 2, 1))
    return np.ascontiguousarray(dw_t.transpose(0, 2, 1)).reshape(weight_shape)


def _input_grad_block(dy: np.ndarray, weight: np.ndarray, a: ConvArgs, dx: np.ndarray, grad: Any = None) -> None:
    """The block's ``dx``: the column gradient ``W^T dy`` by GEMM, then col2im, into ``dx``."""
    n, c = dx.shape[:2]
    out_c, cg, kh, kw = weight.shape
    g, (oh, ow) = a.groups, a.out_size
    rows, pixels = cg * kh * kw, oh * ow
    sample_major = _use_sample_major(rows, pixels)
    w_t = weight.reshape(g, out_c // g, rows).transpose(0, 2, 1)
    if not sample_major and a.stride == (1, 1):
        _input_grad_wide(dy, w_t, (kh, kw), a, dx)
        return
    if sample_major:
        dcols = threads.workspace("conv2d.cols", (n, c, kh, kw, oh, ow), dy.dtype)
        np.matmul(w_t, dy.reshape(n, g, out_c // g, pixels), out=dcols.reshape(n, g, rows, pixels))
    else:
        grad = _channel_major(dy, g) if grad is None else grad
        dcols = threads.workspace("conv2d.cols", (c, kh, kw, n, oh, ow), dy.dtype)
        np.matmul(w_t, grad, out=dcols.reshape(g, rows, n * pixels))
    _col2im(dcols, (kh, kw), a, sample_major, dx)


def _input_grad_wide(dy: np.ndarray, w_t: np.ndarray, kernel: tuple[int, int], a: ConvArgs, dx: np.ndarray) -> None:
    """``dx`` of a stride-1 convolution, channel-major: col2im by contiguous adds over whole rows.

    The column gradient is computed on output rows as wide as the padded image (the extra
    columns of ``dy`` are zero, so their column gradients are exact zeros). Then every kernel
    offset adds one contiguous run per image plane into the flat padded image, at a fixed shift
    (``i*dh*Wp + j*dw``), instead of short strided rows. The zeros of the last runs spill at most
    ``(kw-1)*dw`` values past a plane, into the next plane's first values or a slack at the end.
    """
    n, c, h, w = dx.shape
    g, out_per_group = w_t.shape[0], w_t.shape[2]
    (kh, kw), (oh, ow), (ph, pw), (dh, dw) = kernel, a.out_size, a.padding, a.dilation
    hp, wp = h + 2 * ph, w + 2 * pw
    grad = threads.workspace("conv2d.grad_wide", (dy.shape[1], n, oh, wp), dy.dtype)
    grad[..., ow:] = 0
    np.copyto(grad[..., :ow], dy.transpose(1, 0, 2, 3))
    dcols = threads.workspace("conv2d.cols", (c, kh, kw, n, oh, wp), dy.dtype)
    np.matmul(w_t, grad.reshape(g, out_per_group, -1), out=dcols.reshape(g, w_t.shape[1], -1))
    plane, span = hp * wp, oh * wp
    flat = threads.workspace("conv2d.image", (c * n * plane + (kw - 1) * dw,), dy.dtype)
    flat.fill(0)
    item = flat.itemsize
    for i in range(kh):
        for j in range(kw):
            shift = i * dh * wp + j * dw
            runs = np.lib.stride_tricks.as_strided(flat[shift:], (c, n, span), (n * plane * item, plane * item, item))
            runs += dcols[:, i, j].reshape(c, n, span)
    image = flat[: c * n * plane].reshape(c, n, hp, wp)
    np.copyto(dx, image[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3))


def _padded_image(x: np.ndarray, a: ConvArgs, sample_major: bool) -> np.ndarray:
    """``x`` zero-padded, with the batch and channel axes in the order of the columns (a scratch array)."""
    n, c, h, w = x.shape
    ph, pw = a.padding
    if sample_major and not (ph or pw):
        return x
    image = threads.workspace(
        "conv2d.image", (n, c, h + 2 * ph, w + 2 * pw) if sample_major else (c, n, h + 2 * ph, w + 2 * pw), x.dtype
    )
    image[:, :, :ph] = 0
    image[:, :, h + ph :] = 0
    image[:, :, ph : h + ph, :pw] = 0
    image[:, :, ph : h + ph, w + pw :] = 0
    image[:, :, ph : ph + h, pw : pw + w] = x if sample_major else x.transpose(1, 0, 2, 3)
    return image


def _im2col(x: np.ndarray, kernel: tuple[int, int], a: ConvArgs, sample_major: bool) -> np.ndarray:
    """The columns ``(N, C, kh, kw, OH, OW)`` (sample-major) or ``(C, kh, kw, N, OH, OW)`` of ``x``.

    One copy from a strided view of the padded image (every window of every offset), into a
    scratch array that stays valid until the next convolution on this thread.
    """
    n, c = x.shape[:2]
    (oh, ow), (sh, sw), (dh, dw) = a.out_size, a.stride, a.dilation
    image = _padded_image(x, a, sample_major)
    s0, s1, s2, s3 = image.strides
    windows = np.lib.stride_tricks.as_strided(
        image, (image.shape[0], image.shape[1], *kernel, oh, ow), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw)
    )
    if sample_major:
        cols = threads.workspace("conv2d.cols", (n, c, *kernel, oh, ow), x.dtype)
        np.copyto(cols, windows)
    else:
        cols = threads.workspace("conv2d.cols", (c, *kernel, n, oh, ow), x.dtype)
        np.copyto(cols, windows.transpose(0, 2, 3, 1, 4, 5))
    return cols


def _col2im(dcols: np.ndarray, kernel: tuple[int, int], a: ConvArgs, sample_major: bool, dx: np.ndarray) -> None:
    """The image gradient from column gradients laid out as :func:`_im2col`'s, into ``dx``."""
    n, c, h, w = dx.shape
    ph, pw = a.padding
    image = threads.workspace(
        "conv2d.image", (n, c, h + 2 * ph, w + 2 * pw) if sample_major else (c, n, h + 2 * ph, w + 2 * pw), dcols.dtype
    )
    image.fill(0)
    for i, j, view in offset_views(image, kernel, a.stride, a.dilation, a.out_size):
        view += dcols[:, :, i, j] if sample_major else dcols[:, i, j]
    inner = image[:, :, ph : ph + h, pw : pw + w]
    np.copyto(dx, inner if sample_major else inner.transpose(1, 0, 2, 3))


# -- stride 1, output as wide as the input: the columns are runs of the flat image ---------------------
#
# A sample's zero-padded channel planes are laid out flat: rows of the input's width W one after
# the other, ``ph`` zero rows above and below, ``pw`` zeros at either end. With stride 1 and an
# output as wide as the input (OW == W, "same" padding across), kernel offset (i, j) reads, for
# output pixel ``p = oh*W + ow``, the flat value at ``i*dh*W + j*dw + p``: one contiguous run of
# OH*W values per channel and offset. The im2col copy then moves whole runs instead of rows of
# OW values, and only the values that wrapped round a row edge (the reads of the horizontal
# padding) are zeroed afterwards. Blocks are processed a few samples at a time, so that the
# columns stay in the core's L2 cache between the copy that writes them and the GEMM that reads them.

# Bytes of a chunk's columns at most, forward and backward. Measured on a 2-core Xeon (one thread,
# 32->64 channels at 14x14, 225 KiB of columns per sample): forward ran in 5.2 ms with 2 samples
# per chunk against 5.9 ms with 16; backward was fastest with 4.
FLAT_FORWARD_CHUNK_BYTES = 1 << 19
FLAT_BACKWARD_CHUNK_BYTES = 1 << 20
# dx as the convolution of dy with the flipped, transposed weight (an im2col of dy, then one GEMM
# straight into NCHW) while a group has at most this many times as many output channels as input
# channels; above it, W^T dy and a col2im. Measured on 2 threads: the backward of 64->32 and 32->32
# channels at 14x14 took 0.71x and 0.79x of the general path's time this way, while at 32->64 the
# col2im was faster than dx as a convolution.
DX_AS_CONV_MAX_RATIO = 1.5


def _flat(x_shape: tuple, a: ConvArgs) -> bool:
    """Whether the flat-run columns apply: stride 1 and an output as wide as the input."""
    return a.stride == (1, 1) and a.out_size[1] == x_shape[3]


def _dx_as_conv(weight_shape: tuple, a: ConvArgs) -> bool:
    """Whether ``dx`` is computed as a convolution of ``dy`` (see ``DX_AS_CONV_MAX_RATIO``); that needs
    ``dy``'s padding ``dh*(kh-1) - ph`` to be non-negative."""
    out_c, cg, kh, _ = weight_shape
    return a.padding[0] <= a.dilation[0] * (kh - 1) and out_c // a.groups <= DX_AS_CONV_MAX_RATIO * cg


def _flat_backward(
    x_shape: tuple, weight_shape: tuple, weight: Any, a: ConvArgs, itemsize: int, *, weight_grad: bool, input_grad: bool
) -> _FlatBackward | None:
    """The flat-run backward for these shapes, or None where the general path is faster: when the
    columns are sample-major (few rows per output pixel, see :func:`_use_sample_major`) and ``dx``
    needs a col2im (1->32 channels at 28x28: 1.06x, 3->16 at 32x32: 1.24x the general path's time)."""
    if not _flat(x_shape, a):
        return None
    as_conv = input_grad and _dx_as_conv(weight_shape, a)
    _, cg, kh, kw = weight_shape
    channel_major = not _use_sample_major(cg * kh * kw, a.out_size[0] * a.out_size[1])
    if not (as_conv or channel_major):
        return None
    return _FlatBackward(x_shape, weight_shape, weight, a, itemsize, weight_grad, input_grad, as_conv, channel_major)


class _FlatImage:
    """Scratch flat planes ``(S, C, (H + 2*ph)*W + 2*pw)`` with their zero padding written once:
    the input goes into ``interior``, and :meth:`windows` is the view of every offset's runs."""

    def __init__(self, tag: str, s: int, c: int, hw: tuple[int, int], padding: tuple[int, int], dtype: Any) -> None:
        (h, w), (ph, pw) = hw, padding
        self.buf = threads.workspace(tag, (s, c, (h + 2 * ph) * w + 2 * pw), dtype)
        start = pw + ph * w
        self.buf[:, :, :start] = 0
        self.buf[:, :, start + h * w :] = 0
        self.interior = self.buf[:, :, start : start + h * w]
        self.w = w

    def windows(self, kernel: tuple[int, int], dilation: tuple[int, int], rows: int) -> np.ndarray:
        """``(S, C, kh, kw, rows*W)``: offset ``(i, j)`` reads the run that starts ``i*dh*W + j*dw`` in."""
        buf, w = self.buf, self.w
        item = buf.itemsize
        return np.lib.stride_tricks.as_strided(
            buf,
            (*buf.shape[:2], *kernel, rows * w),
            (*buf.strides[:2], dilation[0] * w * item, dilation[1] * item, item),
        )


def _wrapped(per_offset: np.ndarray, pw: int, dw: int) -> list[np.ndarray]:
    """Views of the column values that wrapped round a row edge (the reads of the horizontal padding),
    to be zeroed; ``per_offset[j]`` holds kernel column ``j``'s values with ``(..., rows, W)`` last."""
    w, views = per_offset.shape[-1], []
    for j in range(per_offset.shape[0]):
        left, right = min(pw - j * dw, w), min(j * dw - pw, w)
        if left > 0:
            views.append(per_offset[j][..., :left])
        if right > 0:
            views.append(per_offset[j][..., w - right :])
    return views


def _chunks(n: int, size: int, scratch: Callable[[int], Any]) -> Iterator[tuple[int, int, Any]]:
    """``(start, stop, views)`` over a block's samples in chunks of ``size``; ``scratch(s)`` builds a
    chunk's views, once per chunk size (the full size, then the shorter last chunk)."""
    made: dict[int, Any] = {}
    for start in range(0, n, size):
        stop = min(start + size, n)
        if stop - start not in made:
            made = {stop - start: scratch(stop - start)}
        yield start, stop, made[stop - start]


class _FlatForward:
    """Forward of one block on the flat-run columns. Per chunk: the samples copied into the flat
    planes, one copy of every offset's runs, the wrapped values zeroed, and per-sample GEMMs straight
    into NCHW. The bias is one more GEMM row (a row of ones under the columns): +4% GEMM time at
    32->64 channels, against a separate pass over the output that cost more (30% of a 1->32 layer)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, a: ConvArgs) -> None:
        out_c, cg, kh, kw = weight.shape
        g, (oh, ow) = a.groups, a.out_size
        self.a, self.rows, self.kernel, self.out_c = a, cg * kh * kw, (kh, kw), out_c
        w_mat = weight.reshape(g, out_c // g, self.rows)
        if bias is not None:
            w_mat = np.concatenate([w_mat, bias.astype(weight.dtype, copy=False).reshape(g, out_c // g, 1)], axis=2)
        self.w_mat, self.bias = w_mat, bias is not None
        self.chunk = max(1, FLAT_FORWARD_CHUNK_BYTES // (g * w_mat.shape[2] * oh * ow * weight.itemsize))

    def _scratch(self, s: int, c: int, hw: tuple[int, int], dtype: Any) -> SimpleNamespace:
        a, (kh, kw), g = self.a, self.kernel, self.a.groups
        oh, w = a.out_size[0], hw[1]
        image = _FlatImage("conv2d.image", s, c, hw, a.padding, dtype)
        cols = threads.workspace("conv2d.cols", (s, g, self.w_mat.shape[2], oh * w), dtype)
        if self.bias:
            cols[:, :, self.rows] = 1
        body = cols[:, :, : self.rows].reshape(s, g, c // g, kh, kw, oh * w)
        windows = image.windows((kh, kw), a.dilation, oh).reshape(body.shape)
        wrapped = _wrapped(np.moveaxis(body.reshape(s, g, c // g, kh, kw, oh, w), 4, 0), a.padding[1], a.dilation[1])
        return SimpleNamespace(interior=image.interior, body=body, windows=windows, wrapped=wrapped, cols=cols)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> None:
        n, c, h, w = x.shape
        g, out_c, pixels = self.a.groups, self.out_c, self.a.out_size[0] * w
        for start, stop, v in _chunks(n, self.chunk, lambda s: self._scratch(s, c, (h, w), x.dtype)):
            s = stop - start
            np.copyto(v.interior, x[start:stop].reshape(s, c, h * w))
            np.copyto(v.body, v.windows)
            for view in v.wrapped:
                view.fill(0)
            np.matmul(self.w_mat, v.cols, out=y[start:stop].reshape(s, g, out_c // g, pixels))


class _FlatBackward:
    """Backward of one block on the flat-run columns, chunk by chunk: ``plan(x, dy, dx)`` returns the
    block's ``dW`` (None without ``weight_grad``) and fills ``dx`` when given.

    ``dW^T`` is the columns times ``dy^T``: one GEMM per chunk over channel-major columns
    ``(C*kh*kw, S*OH*W)`` and ``dy`` ``(O, S*OH*W)``, or per-sample GEMMs over sample-major ones,
    summed in a fixed order either way. ``dx`` is either the convolution of ``dy`` with the flipped,
    transposed weight (``dy``'s own flat columns, the GEMM writing NCHW directly; ``as_conv``) or
    ``W^T dy`` into the columns' scratch followed by a col2im of contiguous adds into flat planes.
    """

    def __init__(
        self,
        x_shape: tuple,
        weight_shape: tuple,
        weight: Any,
        a: ConvArgs,
        itemsize: int,
        weight_grad: bool,
        input_grad: bool,
        as_conv: bool,
        channel_major: bool,
    ) -> None:
        out_c, cg, kh, kw = weight_shape
        g, (oh, ow) = a.groups, a.out_size
        self.a, self.kernel, self.weight_shape = a, (kh, kw), tuple(weight_shape)
        self.rows, self.weight_grad, self.channel_major = cg * kh * kw, weight_grad, channel_major
        self.w_t = self.w_conv = None
        if input_grad and as_conv:  # (G, C/G, O/G*kh*kw): W[o, c, kh-1-i, kw-1-j] at [g, c, (o, i, j)]
            flipped = weight.reshape(g, out_c // g, cg, kh, kw)[:, :, :, ::-1, ::-1]
            self.w_conv = np.ascontiguousarray(flipped.transpose(0, 2, 1, 3, 4)).reshape(g, cg, out_c // g * kh * kw)
        elif input_grad:
            self.w_t = weight.reshape(g, out_c // g, self.rows).transpose(0, 2, 1)
        channels = max(x_shape[1], out_c if self.w_conv is not None else 0)
        self.chunk = max(1, FLAT_BACKWARD_CHUNK_BYTES // (channels * kh * kw * oh * ow * itemsize))

    def _scratch(self, s: int, x_shape: tuple, dy_shape: tuple, dtype: Any) -> SimpleNamespace:
        a, (kh, kw) = self.a, self.kernel
        (c, h, w), (out_c, oh) = x_shape[1:], dy_shape[1:3]
        (ph, pw), (dh, dw) = a.padding, a.dilation
        v = SimpleNamespace(grad=None)
        cm = self.channel_major
        if cm and (self.weight_grad or self.w_t is not None):  # dy channel-major, (O, S, OH*W)
            v.grad = threads.workspace("conv2d.grad", (out_c, s, oh * w), dtype)
        if self.weight_grad:
            cols_shape, kw_axis = ((c, kh, kw, s, oh, w), 2) if cm else ((s, c, kh, kw, oh, w), 3)
            image = _FlatImage("conv2d.image", s, c, (h, w), a.padding, dtype)
            v.x_in = image.interior
            v.cols = threads.workspace("conv2d.cols", cols_shape, dtype)
            windows = image.windows((kh, kw), a.dilation, oh)
            v.windows = windows.transpose(1, 2, 3, 0, 4) if cm else windows
            v.wrapped = _wrapped(np.moveaxis(v.cols, kw_axis, 0), pw, dw)
        if self.w_conv is not None:  # dx: dy padded by dh*(kh-1)-ph rows and pw columns, flipped W
            image = _FlatImage("conv2d.grad_image", s, out_c, (oh, w), (dh * (kh - 1) - ph, pw), dtype)
            v.dy_in = image.interior
            v.dy_cols = threads.workspace("conv2d.grad_cols", (s, out_c, kh, kw, h, w), dtype)
            v.dy_windows = image.windows((kh, kw), a.dilation, h)
            v.dy_wrapped = _wrapped(np.moveaxis(v.dy_cols, 3, 0), pw, dw)
        elif self.w_t is not None:  # dx: W^T dy (channel-major), then col2im into flat planes
            # the column gradient takes the columns' scratch: dW's GEMM has read them by then
            v.dcols = threads.workspace("conv2d.cols", (c, kh, kw, s, oh, w), dtype)
            v.dcol_wrapped = _wrapped(np.moveaxis(v.dcols, 2, 0), pw, dw)
            image = _FlatImage("conv2d.grad_image", s, c, (h, w), a.padding, dtype)
            v.planes, v.planes_in = image.buf, image.interior
            planes = v.planes.transpose(1, 0, 2)  # (C, S, length)
            shifts = [(i, j, i * dh * w + j * dw) for i in range(kh) for j in range(kw)]
            v.adds = [(planes[:, :, k : k + oh * w], v.dcols[:, i, j].reshape(c, s, oh * w)) for i, j, k in shifts]
        return v

    def __call__(self, x: np.ndarray | None, dy: np.ndarray, dx: np.ndarray | None) -> np.ndarray | None:
        g, rows = self.a.groups, self.rows
        n, out_c, oh, w = dy.shape
        x_shape = dx.shape if dx is not None else x.shape
        c, h, pixels = x_shape[1], x_shape[2], oh * w
        acc = None
        for start, stop, v in _chunks(n, self.chunk, lambda s: self._scratch(s, x_shape, dy.shape, dy.dtype)):
            s = stop - start
            if v.grad is not None:
                np.copyto(v.grad, dy[start:stop].reshape(s, out_c, pixels).transpose(1, 0, 2))
                grad = v.grad.reshape(g, out_c // g, s * pixels)
            else:
                grad = dy[start:stop].reshape(s, g, out_c // g, pixels)
            if self.weight_grad:
                np.copyto(v.x_in, x[start:stop].reshape(s, c, h * w))
                np.copyto(v.cols.reshape(v.windows.shape), v.windows)
                for view in v.wrapped:
                    view.fill(0)
                if self.channel_major:  # (G, rows, S*pixels) @ (G, S*pixels, O/G)
                    part = np.matmul(v.cols.reshape(g, rows, s * pixels), grad.transpose(0, 2, 1))
                else:  # (S, G, rows, pixels) @ (S, G, pixels, O/G), summed over the chunk's samples in order
                    part = np.matmul(v.cols.reshape(s, g, rows, pixels), grad.transpose(0, 1, 3, 2)).sum(axis=0)
                if acc is None:
                    acc = part
                else:
                    acc += part
            if dx is None:
                continue
            if self.w_conv is not None:
                np.copyto(v.dy_in, dy[start:stop].reshape(s, out_c, pixels))
                np.copyto(v.dy_cols.reshape(v.dy_windows.shape), v.dy_windows)
                for view in v.dy_wrapped:
                    view.fill(0)
                np.matmul(
                    self.w_conv, v.dy_cols.reshape(s, g, -1, h * w), out=dx[start:stop].reshape(s, g, c // g, h * w)
                )
            else:
                np.matmul(self.w_t, grad, out=v.dcols.reshape(g, rows, s * pixels))
                for view in v.dcol_wrapped:
                    view.fill(0)
                v.planes.fill(0)
                for target, source in v.adds:
                    target += source
                np.copyto(dx[start:stop].reshape(s, c, h * w), v.planes_in)
        if acc is None:
            return None
        return np.ascontiguousarray(acc.transpose(0, 2, 1)).reshape(self.weight_shape)
