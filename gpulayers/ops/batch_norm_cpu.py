"""Batch normalisation on NumPy arrays: block-wise passes over the batch (see :mod:`gpulayers.threads`).

Forward reads the input twice (the statistics, then the normalisation) and writes the output
once; backward reads the gradient and the input twice and writes the input gradient once.
Every temporary is one block's worth and stays in cache. Reductions are per sample first
(``(N, C)`` partial results, each from one sample's own values) and then summed over the batch in
order, in float64, so the result does not depend on how the blocks are shared among threads.
The centred input is not kept: backward uses the saved input.

The per-channel coefficients are spread into ``(1, C, L)`` rows once per call (:func:`_rows`):
NumPy multiplies a block by such a row about 1.6x faster than by a broadcast ``(1, C, 1)``
array, whose stride-0 inner axis takes its slower general loop.

**One pass or two for the statistics.** The sums of ``x`` and ``x * x`` come from one pass; the
variance ``E[x^2] - mean^2`` loses precision only when ``mean^2`` is large against the variance.
Where ``mean^2 > 16 * var`` in some channel (:data:`ONE_PASS_MAX_RATIO`) a second pass sums
``(x - mean)^2`` instead, as PyTorch does throughout. Backward follows the forward's choice:
``sum((x - mean) * g)`` is ``sum(x * g) - mean * sum(g)`` (no subtraction pass) in the same case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import threads
from .activation import relu_grad_block
from .max_pool2d import PoolArgs, TileScatter, max_pool_block

__all__ = [
    "CpuBatchNormCache",
    "PooledOutput",
    "channel_mean_var",
    "normalize",
    "backward",
    "ONE_PASS_MAX_RATIO",
]

#: The one-pass variance is kept when ``mean^2 <= ONE_PASS_MAX_RATIO * var`` in every channel.
#: Its relative error grows with that ratio: measured on float32 (64, 8, 196) inputs, at most
#: 5e-8 at ratio 1, 6e-7 at 16 and 2e-6 at 64, against 3e-8 for two passes (float32 itself
#: rounds at 6e-8). Convolution outputs after a ReLU often have ratios of 1 to 10.
ONE_PASS_MAX_RATIO = 16.0


@dataclass(frozen=True, slots=True)
class PooledOutput:
    """A max pool run on the (ReLU'd) output inside the forward's blocks (:func:`normalize`)."""

    a: PoolArgs
    argmax: np.ndarray  # the winning kernel offset per window
    out: np.ndarray  # the pooled output (its sign is the ReLU mask of each window's winner)


@dataclass(frozen=True, slots=True)
class CpuBatchNormCache:
    """What :func:`backward` needs (``mean`` is the one the forward subtracted)."""

    x: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    weight: np.ndarray | None
    has_bias: bool
    batch_stats: bool
    count: int
    name: str
    relu_out: np.ndarray | None = None  # the output, when a ReLU was applied to it
    uncentred: bool = False  # backward may use sum(x * g) - mean * sum(g) (see the module's docstring)
    pool: PooledOutput | None = None  # a max pool the forward applied after the ReLU


def _view3(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], x.shape[1], -1)


def _sample_bytes(x: np.ndarray) -> int:
    return x.itemsize * (x.size // max(x.shape[0], 1))


def _rows(v: np.ndarray, length: int, dtype) -> np.ndarray:
    """A per-channel vector ``(C,)`` spread into contiguous ``(1, C, length)`` rows."""
    return np.repeat(np.asarray(v, dtype=dtype), length).reshape(1, -1, length)


def uncentred_ok(mean: np.ndarray, var: np.ndarray) -> bool:
    """Whether sums of ``x`` (uncentred) keep their precision: ``mean^2 <= ratio * var`` everywhere."""
    with np.errstate(over="ignore", invalid="ignore"):
        m, v = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
        return bool((np.isfinite(v) & (m * m <= ONE_PASS_MAX_RATIO * v)).all())


def channel_mean_var(x: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance: one pass for the sums of ``x`` and ``x^2``, and a
    second for the squared deviations where the first would lose precision (module docstring)."""
    x3 = _view3(x)
    n, c, length = x3.shape
    partial = np.empty((2, n, c), dtype=x.dtype)

    def sums(start: int, stop: int) -> None:
        block = x3[start:stop]
        np.einsum("ncl->nc", block, out=partial[0, start:stop])
        np.einsum("ncl,ncl->nc", block, block, out=partial[1, start:stop])

    threads.run_blocks(sums, n, _sample_bytes(x))
    with np.errstate(over="ignore", invalid="ignore"):
        total = partial.sum(axis=1, dtype=np.float64) / count
        mean64 = total[0]
        var64 = np.maximum(total[1] - mean64 * mean64, 0.0)
    mean = mean64.astype(x.dtype)
    if uncentred_ok(mean64, var64):
        return mean, var64.astype(x.dtype)
    mean_rows = _rows(mean, length, x.dtype)

    def squares(start: int, stop: int) -> None:
        dev = np.subtract(x3[start:stop], mean_rows)
        np.einsum("ncl,ncl->nc", dev, dev, out=partial[1, start:stop])

    threads.run_blocks(squares, n, _sample_bytes(x))
    var = (partial[1].sum(axis=0, dtype=np.float64) / count).astype(x.dtype)
    return mean, var


def _normalizer(x, mean, var, scale, bias, count, relu):
    """``apply(start, stop, out)``: samples ``start:stop`` of ``x`` normalised into ``out`` (see :func:`normalize`)."""
    x3 = _view3(x)
    length = x3.shape[2]
    zero = x.dtype.type(0)
    with np.errstate(over="ignore", invalid="ignore"):
        bound = (np.abs(mean, dtype=np.float64) + np.sqrt(var * np.float64(count))) * np.abs(scale, dtype=np.float64)
        shift = -mean * scale if bias is None else bias - mean * scale
        fast = bool((bound < np.finfo(x.dtype).max / 4).all() and np.isfinite(shift).all())
    scale_rows = _rows(scale, length, x.dtype)
    if fast:
        shift_rows = _rows(shift, length, x.dtype)
    else:
        mean_rows = _rows(mean, length, x.dtype)
        bias_rows = None if bias is None else _rows(bias, length, x.dtype)

    def apply(start: int, stop: int, out: np.ndarray) -> None:
        if fast:
            np.multiply(x3[start:stop], scale_rows, out=out)
            np.add(out, shift_rows, out=out)
        else:
            np.subtract(x3[start:stop], mean_rows, out=out)
            np.multiply(out, scale_rows, out=out)
            if bias_rows is not None:
                np.add(out, bias_rows, out=out)
        if relu:  # ReLU's own operation (NaN kept), while the block is in cache
            np.maximum(out, zero, out=out)

    return apply


def normalize(
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None,
    count: int,
    relu: bool = False,
    pool: PoolArgs | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(y, None)``: ``(x - mean) * scale + bias`` per channel, into a new array, then ``max(., 0)``
    with ``relu``. With a ``pool`` (and ``relu``) whose windows tile the input
    (:func:`gpulayers.ops.max_pool2d.tiles_input`): ``(pooled, argmax)``, each block pooled while
    it is in cache, and the normalised input itself never written out.

    Computed as ``x * scale + shift`` with ``shift = bias - mean * scale`` (two operations per
    value, PyTorch's CPU form) unless ``x * scale`` could overflow: ``|x - mean|`` is at most
    ``sqrt(count * var)``, which bounds ``|x|``. The pooling is
    :func:`gpulayers.ops.max_pool2d.max_pool_block`'s, lean pass first and the careful one (NaN,
    -inf) only when the pooled output shows either, as in ``max_pool2d_forward``.
    """
    apply = _normalizer(x, mean, var, scale, bias, count, relu)
    if pool is None:
        y = np.empty_like(x)
        y3 = _view3(y)
        threads.run_blocks(lambda start, stop: apply(start, stop, y3[start:stop]), x.shape[0], _sample_bytes(x))
        return y, None
    a = pool
    n, c, h, w = x.shape
    out_size = (h // a.kernel[0], w // a.kernel[1])
    pooled = np.empty((n, c, *out_size), dtype=x.dtype)
    argmax = np.empty(pooled.shape, dtype=np.int8 if a.kernel[0] * a.kernel[1] <= 127 else np.int32)

    def run(careful: bool) -> None:
        def block(start: int, stop: int) -> None:
            y = np.empty((stop - start, c, h * w), dtype=x.dtype)  # one block, freed (and reused) at once
            apply(start, stop, y)
            max_pool_block(
                y.reshape(stop - start, c, h, w), a, out_size, None, careful, pooled[start:stop], argmax[start:stop]
            )

        threads.run_blocks(block, n, _sample_bytes(x))

    run(False)
    low = pooled.min() if pooled.size else 0.0
    if np.isnan(low) or low == -np.inf:
        run(True)
    return pooled, argmax


def backward(dy: np.ndarray, cache: CpuBatchNormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dx, sum(dy * xhat), sum(dy))`` per channel (the last two are dweight and dbias).

    When the forward applied a ReLU (``cache.relu_out``), ``dy`` is first zeroed where that
    output is <= 0, block by block, as ReLU's backward does. With batch statistics
    ``dx = a * dy + b * (x - mean) + c`` with per-channel ``a, b, c`` (the compact form of
    :func:`gpulayers.ops.normalization.batch_norm_backward`), computed as
    ``a * dy + b * x + (c - b * mean)`` when ``cache.uncentred``; else ``dx = a * dy``.

    When the forward also pooled (``cache.pool``), ``dy`` is the pooled output's gradient: each
    block masks it by the ReLU at the windows' winners (the pooled output's sign) and spreads it
    back to the winners (max pooling's backward) before the sums, all in cache.
    """
    x3, dy3 = _view3(cache.x), _view3(dy)
    n, c, length = x3.shape
    dtype = dy.dtype
    uncentred = cache.uncentred
    mean_rows = None if uncentred else _rows(cache.mean, length, dtype)
    partial = np.empty((2, n, c), dtype=dtype)
    dx = np.empty_like(cache.x)
    dx3 = _view3(dx)
    relu_out3 = None if cache.relu_out is None else _view3(cache.relu_out)
    pool = cache.pool
    if pool is not None:  # for the blocks of run_blocks(sums, ...) below
        unpool = TileScatter(pool.a, cache.x.shape, pool.out.shape[2:], threads.batch_blocks(n, _sample_bytes(cache.x)))

    def block_sums(g: np.ndarray, start: int, stop: int) -> None:
        np.einsum("ncl->nc", g, out=partial[0, start:stop])
        dev = x3[start:stop] if uncentred else np.subtract(x3[start:stop], mean_rows)
        np.einsum("ncl,ncl->nc", dev, g, out=partial[1, start:stop])

    def masked(start: int, stop: int, finite: bool | None) -> np.ndarray:
        """The block's output gradient masked by the ReLU (and spread back over the pool's
        windows, when the forward pooled), in ``dx``'s block, which grads() then reads."""
        if pool is None:
            g = dx3[start:stop]
            relu_grad_block(dy3[start:stop], relu_out3[start:stop], g, finite=finite)
            return g
        g = dy[start:stop]
        pooled_grad = np.empty_like(g)
        relu_grad_block(g, pool.out[start:stop], pooled_grad, finite=finite)
        unpool(pooled_grad, pool.argmax[start:stop], dx[start:stop])
        return dx3[start:stop]

    def sums(start: int, stop: int) -> None:
        if relu_out3 is None and pool is None:
            block_sums(dy3[start:stop], start, stop)
            return
        # The fast multiply by the mask is exact unless dy has an inf or a NaN, and then the
        # block's sums show it: the block is masked again with where() and summed again.
        with np.errstate(over="ignore", invalid="ignore"):
            block_sums(masked(start, stop, True), start, stop)
            if not np.isfinite(partial[:, start:stop]).all():
                block_sums(masked(start, stop, None), start, stop)

    threads.run_blocks(sums, n, _sample_bytes(cache.x))
    with np.errstate(over="ignore", invalid="ignore"):
        total = partial.sum(axis=1, dtype=np.float64)
        dbias64 = total[0]
        dy_centred = total[1] - cache.mean * dbias64 if uncentred else total[1]
        invstd = cache.invstd.astype(np.float64)
        dweight64 = dy_centred * invstd
        a64 = invstd if cache.weight is None else cache.weight * invstd
    a_rows = _rows(a64, length, dtype)
    grad3 = dy3 if relu_out3 is None and pool is None else dx3  # the (masked, unpooled) output gradient
    if cache.batch_stats:
        with np.errstate(over="ignore", invalid="ignore"):
            b64 = -a64 * invstd * dweight64 / cache.count
            c64 = -a64 * dbias64 / cache.count
            if uncentred:
                c64 = c64 - b64 * cache.mean
        b_rows, c_rows = _rows(b64, length, dtype), _rows(c64, length, dtype)

        def grads(start: int, stop: int) -> None:
            out = dx3[start:stop]
            np.multiply(grad3[start:stop], a_rows, out=out)
            dev = np.multiply(x3[start:stop], b_rows) if uncentred else np.subtract(x3[start:stop], mean_rows)
            if not uncentred:
                np.multiply(dev, b_rows, out=dev)
            np.add(out, dev, out=out)
            np.add(out, c_rows, out=out)

    else:

        def grads(start: int, stop: int) -> None:
            np.multiply(grad3[start:stop], a_rows, out=dx3[start:stop])

    threads.run_blocks(grads, n, _sample_bytes(cache.x))
    return dx, dweight64.astype(dtype), dbias64.astype(dtype)
