"""Batch normalisation on NumPy arrays: block-wise passes over the batch (see :mod:`gpulayers.threads`).

Forward reads the input three times (sum, squared deviations, normalisation) and writes the
output once; backward reads the gradient and the input twice and writes the input gradient
once. Every temporary is one block's worth and stays in cache. Reductions are per sample first
(``(N, C)`` partial results, each from one sample's own values) and then summed over the batch in
order, so the result does not depend on how the blocks are shared among threads. The centred
input is not kept: backward recomputes ``x - mean`` from the saved input, block by block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import threads
from .activation import relu_grad_block

__all__ = ["CpuBatchNormCache", "channel_mean_var", "normalize", "backward"]


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


def _view3(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], x.shape[1], -1)


def _sample_bytes(x: np.ndarray) -> int:
    return x.itemsize * (x.size // max(x.shape[0], 1))


def channel_mean_var(x: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance (two passes: the mean, then the squared deviations)."""
    x3 = _view3(x)
    n, c, _ = x3.shape
    partial = np.empty((n, c), dtype=x.dtype)

    def sums(start: int, stop: int) -> None:
        np.einsum("ncl->nc", x3[start:stop], out=partial[start:stop])

    threads.run_blocks(sums, n, _sample_bytes(x))
    mean = (partial.sum(axis=0) / x.dtype.type(count)).astype(x.dtype, copy=False)
    mean3 = mean.reshape(1, c, 1)

    def squares(start: int, stop: int) -> None:
        dev = np.subtract(x3[start:stop], mean3)
        np.einsum("ncl,ncl->nc", dev, dev, out=partial[start:stop])

    threads.run_blocks(squares, n, _sample_bytes(x))
    var = (partial.sum(axis=0) / x.dtype.type(count)).astype(x.dtype, copy=False)
    return mean, var


def normalize(
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None,
    count: int,
    relu: bool = False,
) -> np.ndarray:
    """``(x - mean) * scale + bias`` per channel, into a new array; then ``max(., 0)`` with ``relu``.

    Computed as ``x * scale + shift`` with ``shift = bias - mean * scale`` (two operations per
    value, PyTorch's CPU form) unless ``x * scale`` could overflow: ``|x - mean|`` is at most
    ``sqrt(count * var)``, which bounds ``|x|``.
    """
    x3 = _view3(x)
    c = x3.shape[1]
    y = np.empty_like(x)
    y3 = _view3(y)
    mean3, scale3 = mean.reshape(1, c, 1), scale.reshape(1, c, 1)
    bias3 = None if bias is None else bias.reshape(1, c, 1)
    zero = x.dtype.type(0)
    with np.errstate(over="ignore", invalid="ignore"):
        bound = (np.abs(mean, dtype=np.float64) + np.sqrt(var * np.float64(count))) * np.abs(scale, dtype=np.float64)
        shift3 = -mean3 * scale3 if bias3 is None else bias3 - mean3 * scale3
        fast = bool((bound < np.finfo(x.dtype).max / 4).all() and np.isfinite(shift3).all())

    def apply(start: int, stop: int) -> None:
        out = y3[start:stop]
        if fast:
            np.multiply(x3[start:stop], scale3, out=out)
            np.add(out, shift3, out=out)
        else:
            np.subtract(x3[start:stop], mean3, out=out)
            np.multiply(out, scale3, out=out)
            if bias3 is not None:
                np.add(out, bias3, out=out)
        if relu:  # ReLU's own operation (NaN kept), while the block is in cache
            np.maximum(out, zero, out=out)

    threads.run_blocks(apply, x3.shape[0], _sample_bytes(x))
    return y


def backward(dy: np.ndarray, cache: CpuBatchNormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dx, sum(dy * xhat), sum(dy))`` per channel (the last two are dweight and dbias).

    When the forward applied a ReLU (``cache.relu_out``), ``dy`` is first zeroed where that
    output is <= 0, block by block, as ReLU's backward does. With batch statistics
    ``dx = a * dy + b * (x - mean) + c`` with per-channel ``a, b, c`` (the compact form of
    :func:`gpulayers.ops.normalization.batch_norm_backward`); else ``dx = a * dy``.
    """
    x3, dy3 = _view3(cache.x), _view3(dy)
    n, c, _ = x3.shape
    mean3 = cache.mean.reshape(1, c, 1)
    partial = np.empty((2, n, c), dtype=dy.dtype)
    dx = np.empty_like(dy)
    dx3 = _view3(dx)
    relu_out3 = None if cache.relu_out is None else _view3(cache.relu_out)

    def block_sums(g: np.ndarray, start: int, stop: int) -> None:
        np.einsum("ncl->nc", g, out=partial[0, start:stop])
        dev = np.subtract(x3[start:stop], mean3)
        np.einsum("ncl,ncl->nc", dev, g, out=partial[1, start:stop])

    def sums(start: int, stop: int) -> None:
        if relu_out3 is None:
            block_sums(dy3[start:stop], start, stop)
            return
        # The masked gradient goes to dx's block, which grads() then reads. The fast multiply by
        # the mask is exact unless dy has an inf or a NaN, and then the block's sums show it:
        # the block is masked again with where() and summed again.
        g = dx3[start:stop]
        relu_grad_block(dy3[start:stop], relu_out3[start:stop], g, finite=True)
        with np.errstate(over="ignore", invalid="ignore"):
            block_sums(g, start, stop)
            if np.isfinite(partial[:, start:stop]).all():
                return
            relu_grad_block(dy3[start:stop], relu_out3[start:stop], g)
            block_sums(g, start, stop)

    threads.run_blocks(sums, n, _sample_bytes(dy))
    total = partial.sum(axis=1)
    dbias, dy_centred = total[0], total[1]
    invstd = cache.invstd
    dweight = dy_centred * invstd
    a = invstd if cache.weight is None else cache.weight * invstd
    a3 = a.reshape(1, c, 1)
    grad3 = dy3 if relu_out3 is None else dx3  # the (masked) output gradient
    if cache.batch_stats:
        b3 = (-a * invstd * dweight / cache.count).reshape(1, c, 1)
        c3 = (-a * dbias / cache.count).reshape(1, c, 1)

        def grads(start: int, stop: int) -> None:
            out = dx3[start:stop]
            np.multiply(grad3[start:stop], a3, out=out)
            dev = np.subtract(x3[start:stop], mean3)
            np.multiply(dev, b3, out=dev)
            np.add(out, dev, out=out)
            np.add(out, c3, out=out)

    else:

        def grads(start: int, stop: int) -> None:
            np.multiply(grad3[start:stop], a3, out=dx3[start:stop])

    threads.run_blocks(grads, n, _sample_bytes(dy))
    return dx, dweight.astype(dy.dtype, copy=False), dbias
