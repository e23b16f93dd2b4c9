"""Layer normalisation over the trailing axes (PyTorch's ``F.layer_norm``), and the row core it
shares with group normalisation.

Both normalise the rows of a 2-D view ``(M, K)`` of the input: ``xhat = (x - mean) / sqrt(var + eps)``
with the biased variance (two passes: the mean, then the mean of squared deviations), then scale
and shift with the affine parameters. xp-generic: NumPy or CuPy, in the input's dtype.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_floating, check_grad, check_same_device

__all__ = ["layer_norm_forward", "layer_norm_backward", "normalize_rows", "normalize_rows_backward", "check_param"]


def normalize_rows(x2: Any, eps: float) -> tuple[Any, Any]:
    """``(xhat, invstd)`` of the rows of ``x2`` ``(M, K)``; ``invstd`` is ``(M, 1)``."""
    xp = backend.get_array_module(x2)
    k = x2.shape[1]
    if x2.size == 0:
        return x2.copy(), xp.ones((x2.shape[0], 1), dtype=x2.dtype)
    mean = x2.sum(axis=1, keepdims=True) / k
    centred = x2 - mean
    var = (centred * centred).sum(axis=1, keepdims=True) / k
    invstd = (1.0 / xp.sqrt(var + eps)).astype(x2.dtype, copy=False)
    return centred * invstd, invstd


def normalize_rows_backward(g2: Any, xhat: Any, invstd: Any) -> Any:
    """d/dx of the row normalisation for ``g2 = dL/dxhat`` ``(M, K)``:
    ``invstd * (g - mean(g) - xhat * mean(g * xhat))`` per row."""
    k = g2.shape[1]
    if g2.size == 0:
        return g2.copy()
    mean_g = g2.sum(axis=1, keepdims=True) / k
    mean_gx = (g2 * xhat).sum(axis=1, keepdims=True) / k
    return invstd * (g2 - mean_g - xhat * mean_gx)


def check_eps(name: str, eps: Any) -> float:
    """``eps`` as a float: a finite real number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < math.inf:
        raise ValueError(f"{name}: expected a finite eps >= 0, got {eps!r}")
    return float(eps)


@dataclass(frozen=True)
class RowNormCache:
    """What :func:`layer_norm_forward` and :func:`.group_norm_forward` keep for backward."""

    xhat: Any  # (rows, k) normalised rows
    invstd: Any  # (rows, 1)
    weight: Any  # the affine scale, or None
    has_bias: bool
    x_shape: tuple
    name: str
    normalized_shape: tuple = ()  # layer norm's trailing shape


def check_backward(op: str, dy: Any, cache: Any) -> RowNormCache:
    """The forward's cache (from ``{op}_forward``), after checking ``dy`` against its input."""
    if not isinstance(cache, RowNormCache):
        raise TypeError(f"{op}.backward: expected the cache returned by {op}_forward, got {type(cache).__name__}")
    check_grad(cache.name, dy, cache.x_shape, cache.xhat)
    return cache


def check_param(name: str, x: Any, arr: Any, what: str, shape: tuple[int, ...]) -> None:
    """An affine parameter (or None): floating, on the input's device and dtype, of ``shape``."""
    if arr is None:
        return
    check_floating(f"{name} {what}", arr)
    check_same_device(name, x, arr, what)
    if tuple(arr.shape) != shape:
        raise ValueError(f"{name}: expected a {what} of shape {shape}, got {tuple(arr.shape)}")


def layer_norm_forward(
    x: Any,
    normalized_shape: tuple[int, ...],
    weight: Any = None,
    bias: Any = None,
    eps: float = 1e-5,
    *,
    name: str = "layer_norm",
) -> tuple[Any, RowNormCache]:
    """Normalise ``x`` over its last ``len(normalized_shape)`` axes, then ``* weight + bias``.

    Args:
        x: floating input whose trailing shape is ``normalized_shape``.
        normalized_shape: the trailing shape to normalise over (a tuple of ints).
        weight: scale of shape ``normalized_shape``, or None.
        bias: shift of shape ``normalized_shape``, or None.
        eps: added to the variance. Defaults to 1e-5.
        name: who is calling, for error messages.

    Returns:
        ``(y, cache)``; ``y`` has the shape and dtype of ``x``.

    Shape:
        - x: (*, *normalized_shape)
        - y: same as x
    """
    check_floating(name, x)
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    if not isinstance(normalized_shape, (tuple, list)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in normalized_shape
    ):
        raise TypeError(f"{name}: expected normalized_shape to be an int or a tuple of ints, got {normalized_shape!r}")
    eps = check_eps(name, eps)
    shape = tuple(int(v) for v in normalized_shape)
    d = len(shape)
    if x.ndim < d or tuple(x.shape[x.ndim - d :]) != shape:
        raise ValueError(
            f"{name}: expected an input whose last {d} dimension(s) are {shape} (normalized_shape), "
            f"got shape {tuple(x.shape)}"
        )
    check_param(name, x, weight, "weight", shape)
    check_param(name, x, bias, "bias", shape)
    k = int(np.prod(shape, dtype=np.int64))
    rows = int(np.prod(x.shape[: x.ndim - d], dtype=np.int64))
    xhat, invstd = normalize_rows(x.reshape(rows, k), eps)
    y = xhat
    if weight is not None:
        y = y * weight.reshape(1, k)
    if bias is not None:
        y = y + bias.reshape(1, k)
    cache = RowNormCache(xhat, invstd, weight, bias is not None, tuple(x.shape), name, shape)
    return y.reshape(x.shape).astype(x.dtype, copy=False), cache


def layer_norm_backward(dy: Any, cache: RowNormCache) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`layer_norm_forward` (None where it had none)."""
    check_backward("layer_norm", dy, cache)
    xhat, invstd, weight = cache.xhat, cache.invstd, cache.weight
    dy2 = dy.reshape(xhat.shape)
    shape = cache.normalized_shape
    dweight = None if weight is None else (dy2 * xhat).sum(axis=0).reshape(shape)
    dbias = dy2.sum(axis=0).reshape(shape) if cache.has_bias else None
    g2 = dy2 if weight is None else dy2 * weight.reshape(1, -1)
    dx = normalize_rows_backward(g2, xhat, invstd)
    return dx.reshape(cache.x_shape).astype(dy.dtype, copy=False), dweight, dbias
