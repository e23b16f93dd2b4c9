"""Group normalisation (PyTorch's ``F.group_norm``): the channels of each sample split into groups,
each group normalised over its channels and spatial positions, then a per-channel scale and shift.

The rows of the view ``(N * groups, C / groups * spatial)`` are normalised by the core shared
with layer normalisation (:mod:`gpulayers.ops.layer_norm`). xp-generic: NumPy or CuPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_channels, check_floating
from .layer_norm import RowNormCache, check_backward, check_eps, check_param, normalize_rows, normalize_rows_backward

__all__ = ["group_norm_forward", "group_norm_backward"]


def group_norm_forward(
    x: Any,
    num_groups: int,
    weight: Any = None,
    bias: Any = None,
    eps: float = 1e-5,
    *,
    num_channels: int | None = None,
    name: str = "group_norm",
) -> tuple[Any, RowNormCache]:
    """Normalise each group of ``C / num_groups`` channels per sample, then ``* weight + bias`` per channel.

    Args:
        x: ``(N, C, *)`` floating input, C divisible by ``num_groups``.
        num_groups: the number of groups.
        weight: per-channel scale ``(C,)``, or None.
        bias: per-channel shift ``(C,)``, or None.
        eps: added to the variance. Defaults to 1e-5.
        num_channels: the channel count the caller was built for (checked against ``x``), or None.
        name: who is calling, for error messages.

    Returns:
        ``(y, cache)``; ``y`` has the shape and dtype of ``x``.

    Shape:
        - x: (N, C, *)
        - y: same as x
    """
    check_floating(name, x)
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
        raise ValueError(f"{name}: expected num_groups to be a positive int, got {num_groups!r}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected an input of shape (N, C, *), got shape {tuple(x.shape)}")
    if num_channels is not None:
        check_channels(name, x, num_channels)
    n, c = int(x.shape[0]), int(x.shape[1])
    if c % num_groups:
        raise ValueError(
            f"{name}: expected the channel count to be divisible by num_groups={num_groups}, "
            f"got {c} channels (input shape {tuple(x.shape)})"
        )
    eps = check_eps(name, eps)
    check_param(name, x, weight, "weight", (c,))
    check_param(name, x, bias, "bias", (c,))
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    xhat, invstd = normalize_rows(x.reshape(n * num_groups, (c // num_groups) * spatial), eps)
    bshape = (1, c, 1)
    y = xhat.reshape(n, c, spatial)
    if weight is not None:
        y = y * weight.reshape(bshape)
    if bias is not None:
        y = y + bias.reshape(bshape)
    cache = RowNormCache(xhat, invstd, weight, bias is not None, tuple(x.shape), name)
    return y.reshape(x.shape).astype(x.dtype, copy=False), cache


def group_norm_backward(dy: Any, cache: RowNormCache) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`group_norm_forward` (None where it had none)."""
    check_backward("group_norm", dy, cache)
    xhat, invstd, weight = cache.xhat, cache.invstd, cache.weight
    n, c = cache.x_shape[:2]
    dy3 = dy.reshape(n, c, int(np.prod(cache.x_shape[2:], dtype=np.int64)))  # explicit: N may be 0
    dweight = None if weight is None else (dy3 * xhat.reshape(dy3.shape)).sum(axis=(0, 2))
    dbias = dy3.sum(axis=(0, 2)) if cache.has_bias else None
    g = dy3 if weight is None else dy3 * weight.reshape(1, c, 1)
    dx = normalize_rows_backward(g.reshape(xhat.shape), xhat, invstd)
    return dx.reshape(cache.x_shape).astype(dy.dtype, copy=False), dweight, dbias
