"""2-D max pooling, forward and backward, and the window helpers the average pools share.

``y, cache = max_pool2d_forward(x, kernel_size, ...)`` and ``dx = max_pool2d_backward(dy, cache)``.
Every loop below runs over the kernel offsets only: each offset reads one strided
``(N, C, OH, OW)`` view of the (padded) input.

Max pooling follows PyTorch's CPU kernel exactly: padding never wins (it acts as -inf, and
the window's first real pixel is the starting candidate), ties go to the first maximum in
row-major window order, and a NaN always takes over (so the *last* NaN of a window is the
one that receives the gradient). CuPy inputs go to the CUDA kernel in ``max_pool2d_cuda``.

On NumPy the cache holds, per window, the winner's offset in its window (int8), except where the
windows tile the (padded) input (stride = kernel, no dilation): there the forward keeps the
winner's absolute flat index into the padded gradient (``intp``), so that backward is only a
zero fill and one scatter per block (see ``_max_forward_cpu``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, threads
from .._checks import check_bool, check_grad, check_input, grad_marker, no_forward, pair, pooled_size
from ._window import offset_views

__all__ = [
    "PoolArgs",
    "pooled_output_size",
    "pool_arguments",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "tiles_input",
    "max_pool_block",
    "TileScatter",
]


@dataclass(frozen=True)
class PoolArgs:
    """Validated pooling geometry."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool


def pool_arguments(name: str, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> PoolArgs:
    """Check the pooling options (shared by the ops and the layers); stride None means kernel_size."""
    kernel = pair(name, "kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) else stride
    stride = pair(name, "stride", stride, minimum=1)
    padding = pair(name, "padding", padding, minimum=0)
    dilation = pair(name, "dilation", dilation, minimum=1)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(
            f"{name}: expected padding at most half of kernel_size {kernel} (as in PyTorch), got padding {padding}"
        )
    return PoolArgs(kernel, stride, padding, dilation, check_bool(name, "ceil_mode", ceil_mode))


def pooled_output_size(name: str, x: Any, a: PoolArgs) -> tuple[int, int]:
    h, w = x.shape[2], x.shape[3]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = a.kernel, a.stride, a.padding, a.dilation
    oh = pooled_size(name, h, kh, sh, ph, dh, a.ceil_mode, "height")
    ow = pooled_size(name, w, kw, sw, pw, dw, a.ceil_mode, "width")
    return oh, ow


def tiles_input(shape: tuple, a: PoolArgs) -> bool:
    """Whether the windows tile an input of ``shape`` exactly: stride = kernel, no padding or
    dilation, and the height and width multiples of the kernel (the fast block paths below)."""
    (kh, kw), h, w = a.kernel, shape[2], shape[3]
    return (
        a.stride == a.kernel
        and a.padding == (0, 0)
        and a.dilation == (1, 1)
        and h > 0
        and w > 0
        and h % kh == 0
        and w % kw == 0
    )


def _padded_shape(shape: tuple, a: PoolArgs, out: tuple[int, int]) -> tuple[int, int, int, int]:
    """A padded extent that every window (ceil_mode included) fits in."""
    n, c, h, w = shape
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = a.padding, a.stride, a.dilation, a.kernel
    hp = max(h + 2 * ph, (out[0] - 1) * sh + dh * (kh - 1) + 1)
    wp = max(w + 2 * pw, (out[1] - 1) * sw + dw * (kw - 1) + 1)
    return n, c, hp, wp


def _padded(x: Any, a: PoolArgs, out: tuple[int, int], fill: float) -> Any:
    """The input inside a ``fill``-padded buffer (the input itself when no padding is needed)."""
    xp = backend.get_array_module(x)
    shape = _padded_shape(x.shape, a, out)
    if shape == tuple(x.shape):
        return x
    ph, pw = a.padding
    h, w = x.shape[2], x.shape[3]
    buf = xp.full(shape, fill, dtype=x.dtype)
    buf[:, :, ph : ph + h, pw : pw + w] = x
    return buf


def _crop(buf: Any, a: PoolArgs, shape: tuple) -> Any:
    xp = backend.get_array_module(buf)
    h, w = shape[2], shape[3]
    ph, pw = a.padding
    if buf.shape[2:] == (h, w):
        return buf
    return xp.ascontiguousarray(buf[:, :, ph : ph + h, pw : pw + w])


@dataclass(frozen=True, slots=True)
class PoolCache:
    """What a pooling backward needs (``data`` is the backend's own state)."""

    data: Any
    a: Any  # the PoolArgs (None for adaptive pooling)
    in_shape: tuple
    out_shape: tuple
    x_like: Any  # a 0-size array on the input's device and dtype (for checks)
    name: str  # who ran forward, for backward's messages
    on_gpu: bool = False


def _check_backward(name: str, dy: Any, cache: PoolCache | None) -> Any:
    if cache is None:
        raise no_forward(name)
    check_grad(cache.name, dy, cache.out_shape, cache.x_like)
    xp = backend.get_array_module(dy)
    with backend.device_scope(dy):
        return xp.ascontiguousarray(dy, dtype=cache.x_like.dtype)


# -- max pooling -------------------------------------------------------------------------------------


def max_pool2d_forward(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    *,
    name: str = "max_pool2d",
) -> tuple[Any, PoolCache]:
    """Max pooling of an NCHW batch, PyTorch's ``F.max_pool2d``.

    Args:
        x: input ``(N, C, H, W)``, float32 or float64.
        kernel_size: int or pair.
        stride: int or pair; None means ``kernel_size``.
        padding: implicit -inf padding, at most half the kernel. Defaults to 0.
        dilation: spacing between window elements. Defaults to 1.
        ceil_mode: round the output size up instead of down. Defaults to False.
        name: who is calling, for error messages (a layer passes its class name).

    Returns:
        ``(y, cache)``.

    Shape:
        ``OH = floor_or_ceil((H + 2*ph - dh*(kh-1) - 1) / sh) + 1`` (a last window starting
        beyond the input and its left padding is dropped), likewise ``OW``.
    """
    check_input(name, x, 4, "(N, C, H, W)")
    a = pool_arguments(name, kernel_size, stride, padding, dilation, ceil_mode)
    out = pooled_output_size(name, x, a)
    if backend.is_cuda_array(x):
        from . import max_pool2d_cuda  # noqa: PLC0415 - the GPU module loads CuPy kernels lazily

        y, inner = max_pool2d_cuda.max_pool2d_forward(
            x, kernel=a.kernel, stride=a.stride, padding=a.padding, dilation=a.dilation, out_size=out
        )
        return y, PoolCache(inner, a, tuple(x.shape), tuple(y.shape), grad_marker(x), name, on_gpu=True)
    x = np.ascontiguousarray(x)
    y, data = _max_forward_cpu(x, a, out)
    return y, PoolCache(data, a, tuple(x.shape), tuple(y.shape), grad_marker(x), name)


def max_pool2d_backward(dy: Any, cache: PoolCache | None) -> Any:
    """Gradient of :func:`max_pool2d_forward` w.r.t. its input (one winner per window)."""
    dy = _check_backward("max_pool2d", dy, cache)
    if cache.on_gpu:
        from . import max_pool2d_cuda  # noqa: PLC0415

        return max_pool2d_cuda.max_pool2d_backward(dy, cache.data)
    a = cache.a
    (kh, kw), (oh, ow) = a.kernel, cache.out_shape[2:]
    shape = _padded_shape(cache.in_shape, a, (oh, ow))
    if _scatters(a, shape, (oh, ow)):  # windows that tile the (padded) buffer: the forward's flat indices
        return _crop(_max_backward_scatter(dy, cache.data, shape), a, cache.in_shape)
    argmax = cache.data  # each winner's offset in its window
    disjoint = a.stride[0] >= a.dilation[0] * (kh - 1) + 1 and a.stride[1] >= a.dilation[1] * (kw - 1) + 1
    dx = np.zeros(shape, dtype=dy.dtype)
    # dy * hit is fast but would turn a non-finite dy into NaN where hit is False.
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(dy.sum()))
    hit = np.empty(dy.shape, dtype=bool)
    # A float 0/1 mask: multiplying by a bool array would cast it chunk by chunk inside the loop.
    weight = np.empty(dy.shape, dtype=dy.dtype) if finite and disjoint else None
    for t, (_, _, view) in enumerate(offset_views(dx, a.kernel, a.stride, a.dilation, cache.out_shape[2:])):
        if weight is not None:  # each input position is in one window at most: straight into dx
            np.equal(argmax, t, out=weight, casting="unsafe")
            np.multiply(dy, weight, out=view)
            continue
        np.equal(argmax, t, out=hit)
        share = dy * hit if finite else np.where(hit, dy, 0)
        if disjoint:
            view[...] = share
        else:
            view += share
    return _crop(dx, a, cache.in_shape)


def _scatters(a: PoolArgs, shape: tuple, out: tuple[int, int]) -> bool:
    """Whether the standalone op's cache holds the winners' flat indices rather than their offsets:
    windows that tile the padded ``shape`` (stride = kernel, no dilation) and a non-empty batch.
    Forward and backward both ask."""
    (kh, kw), (oh, ow) = a.kernel, out
    return a.dilation == (1, 1) and a.stride == a.kernel and shape[2:] == (oh * kh, ow * kw) and shape[0] > 0


def _max_backward_scatter(dy: np.ndarray, index: np.ndarray, shape: tuple) -> np.ndarray:
    """Backward of windows that tile the padded input, from the forward's ``index`` (each winner's
    flat index in the whole padded gradient of ``shape``): per block of samples, zeros and one
    scatter (a fancy-index assignment: ``np.put`` measured ~2x slower). Exact for any value, inf
    and NaN included; the losers get +0 as in PyTorch. ``index`` is only read, so a second
    backward on the same cache gives the same gradient."""
    dx = np.empty(shape, dtype=dy.dtype)
    flat = dx.reshape(-1)

    def block(start: int, stop: int) -> None:
        _scatter(dy[start:stop], index[start:stop], dx[start:stop], flat)

    threads.run_blocks(block, shape[0], dx.itemsize * (dx.size // shape[0]))
    return dx


class TileScatter:
    """Flat indices of the winners of windows that tile the (padded) input, one block at a time,
    and max pooling's backward from their offsets.

    ``indices(argmax, start, out)`` turns a block's winning offsets into flat indices: from the
    block's first value (``start=0``, the fused BatchNorm-ReLU-pool backward in
    :mod:`gpulayers.ops.batch_norm_cpu`) or from the batch's (``start``: the block's first sample;
    the standalone op's forward, which keeps them for its backward). ``scatter(g, argmax, out)``
    builds a block's indices and then zeroes ``out`` (a C-contiguous block of whole samples) and
    writes each gradient to its window's winner; exact for any value (inf and NaN included), the
    losers get +0 as in PyTorch; measured 15-20% faster on a 2-core Xeon than one strided write per
    kernel offset.

    Offset ``t`` of a window is ``t // kw`` rows and ``t % kw`` columns into it, that is
    ``t + (t // kw) * (Wp - kw)`` values past the window's first one. The indices are ``intp``,
    which NumPy's scatter takes without a cast (with int32 the scatter measured 30-40% slower).

    Args:
        a: the pooling arguments.
        shape: the (padded) input's ``(N, C, Hp, Wp)``.
        out_size: ``(OH, OW)``.
        blocks: the blocks that will be passed (the longest one sizes a table of window starts).
    """

    def __init__(self, a: PoolArgs, shape: tuple, out_size: tuple, blocks: list[tuple[int, int]]) -> None:
        _, c, hp, wp = shape
        (kh, kw), (oh, ow) = a.kernel, out_size
        longest = max((stop - start for start, stop in blocks), default=0)
        # The first value of every window of `longest` samples, relative to a block's start.
        self.first = (
            np.arange(longest, dtype=np.intp)[:, None, None, None] * (c * hp * wp)
            + np.arange(c, dtype=np.intp)[:, None, None] * (hp * wp)
            + np.arange(oh, dtype=np.intp)[:, None] * (kh * wp)
            + np.arange(ow, dtype=np.intp) * kw
        )
        self.offsets = np.array([t + (t // kw) * (wp - kw) for t in range(kh * kw)], dtype=np.intp)
        self.sample = c * hp * wp  # values per sample

    def indices(self, argmax: np.ndarray, start: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """The flat indices of the winners of a block's windows (``argmax``: their offsets), counted
        from the first value of sample ``start`` (0: of the block), into ``out`` or a new array."""
        offsets = self.offsets + start * self.sample if start else self.offsets
        # mode="clip": the offsets are always in range, and "raise" would buffer ``out`` (~5x slower).
        index = np.take(offsets, argmax, out=out, mode="clip")
        return np.add(index, self.first[: argmax.shape[0]], out=index)

    def __call__(self, g: np.ndarray, argmax: np.ndarray, out: np.ndarray) -> None:
        _scatter(g, self.indices(argmax), out, out.reshape(-1))


def _scatter(g: np.ndarray, index: np.ndarray, out: np.ndarray, flat: np.ndarray) -> None:
    """Zero ``out`` and write each of ``g``'s values at its flat ``index`` into ``flat`` (a flat view of
    ``out``, or of the whole array ``out`` is a block of)."""
    out.fill(0)
    flat[index.reshape(-1)] = g.reshape(-1)


def _first_real_offsets(shape: tuple, a: PoolArgs, out: tuple[int, int]) -> list[np.ndarray]:
    """Per offset, the ``(OH, OW)`` grid of windows whose first real (non-padding) pixel it is."""

    def per_axis(size: int, k: int, s: int, p: int, d: int, o: int) -> np.ndarray:
        pos = np.arange(o)[None, :] * s - p + np.arange(k)[:, None] * d  # (k, o) input coordinate
        real = (pos >= 0) & (pos < size)
        first = np.argmax(real, axis=0)
        return (np.arange(k)[:, None] == first[None, :]) & real.any(axis=0)[None, :]

    rows = per_axis(shape[2], a.kernel[0], a.stride[0], a.padding[0], a.dilation[0], out[0])
    cols = per_axis(shape[3], a.kernel[1], a.stride[1], a.padding[1], a.dilation[1], out[1])
    return [rows[i][:, None] & cols[j][None, :] for i in range(a.kernel[0]) for j in range(a.kernel[1])]


def _max_forward_cpu(x: np.ndarray, a: PoolArgs, out: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Block-wise over the batch (:mod:`gpulayers.threads`): ``(y, data)``, each window's maximum
    and what backward needs of its winner:

    - where the windows tile the padded input (:func:`_scatters`), its flat index in the whole
      padded ``(N, C, Hp, Wp)`` gradient (``intp``, 8 bytes a window; the int8 offsets are then
      dropped), built from the final offsets in one more pass over the same blocks
      (:meth:`TileScatter.indices`), so that backward is a zero fill and one scatter per block;
    - otherwise its offset in its window, row-major (int8; int32 beyond 127 offsets).

    The indices move work from backward to forward. In-process A/B against the offsets (built in
    backward), 2 threads, float32, batch 64, kernel 2, medians of 600 calls on a 2-core Xeon, ms:
    32ch @28x28 backward 1.38 -> 0.64 (PyTorch 0.58), forward 1.85 -> 2.64 (PyTorch 3.91); 64ch
    @14x14 backward 0.76 -> 0.38 (PyTorch 0.30), forward 1.03 -> 1.48 (PyTorch 1.99). Building
    the indices while each block's offsets are fresh (inside the pooling pass) measured the same.
    """
    buf = _padded(x, a, out, -np.inf)
    kk = a.kernel[0] * a.kernel[1]
    y = np.empty((*x.shape[:2], *out), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int8 if kk <= 127 else np.int32)
    sample_bytes = buf.itemsize * (buf.size // max(buf.shape[0], 1))

    def run(first_real: list[np.ndarray] | None, careful: bool) -> None:
        threads.run_blocks(
            lambda start, stop: max_pool_block(
                buf[start:stop], a, out, first_real, careful, y[start:stop], argmax[start:stop]
            ),
            x.shape[0],
            sample_bytes,
        )

    # NaN and -inf need PyTorch's exact rules; plain data takes the lean path. Both give the same
    # answer unless a NaN or a -inf reaches the output (np.maximum propagates NaN; a -inf maximum
    # is where the padding rule matters), so the lean pass runs first and the careful one only
    # when its (smaller) output shows either.
    run(None, False)
    low = y.min() if y.size else 0.0
    if np.isnan(low) or low == -np.inf:
        run(_first_real_offsets(x.shape, a, out) if buf is not x else None, True)
    if not _scatters(a, buf.shape, out):
        return y, argmax
    index = np.empty(y.shape, dtype=np.intp)
    tiles = TileScatter(a, buf.shape, out, threads.batch_blocks(x.shape[0], sample_bytes))
    threads.run_blocks(
        lambda start, stop: tiles.indices(argmax[start:stop], start, out=index[start:stop]), x.shape[0], sample_bytes
    )
    return y, index


def max_pool_block(
    buf: np.ndarray,
    a: PoolArgs,
    out: tuple[int, int],
    first_real: list[np.ndarray] | None,
    careful: bool,
    y: np.ndarray,
    argmax: np.ndarray,
) -> None:
    """One block's maxima and offsets into ``y`` and ``argmax``; ``first_real`` when ``buf`` is padded."""
    index_dtype = argmax.dtype.type
    # Masked assignments (np.copyto(..., where=)) are branchy and ~20x slower than arithmetic, so
    # the running maximum is np.maximum (which also lets a NaN take over for good) and the argmax
    # is max(argmax, t * wins): offsets come in increasing order, so any win overrides.
    wins, step = np.empty(y.shape, dtype=bool), np.empty(y.shape, dtype=index_dtype)
    for t, (_, _, view) in enumerate(offset_views(buf, a.kernel, a.stride, a.dilation, out)):
        if t == 0:
            np.copyto(y, view)
            if first_real is not None:  # windows that start in the padding have no candidate yet
                argmax[...] = np.where(first_real[0], 0, -1)
            else:
                argmax.fill(0)
            continue
        np.greater(view, y, out=wins)  # strictly greater: ties keep the first maximum
        if careful:
            wins |= np.isnan(view)  # every NaN wins, so the last NaN of a window keeps the index
            if first_real is not None:
                wins |= first_real[t]  # the first real pixel is the starting candidate, even at -inf
        np.multiply(wins, index_dtype(t), out=step)
        np.maximum(argmax, step, out=argmax)
        np.maximum(y, view, out=y)
