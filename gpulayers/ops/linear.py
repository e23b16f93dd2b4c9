"""The affine map ``y = x @ weight.T + bias`` over the last axis (PyTorch's ``F.linear``).

One xp-generic implementation: ``matmul`` is BLAS on NumPy and cuBLAS on CuPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x: Any, weight: Any, bias: Any = None) -> tuple[Any, dict]:
    """``y = x @ weight.T + bias``.

    Args:
        x: input of shape (*, in_features); any leading dimensions (none for a single vector).
        weight: (out_features, in_features).
        bias: (out_features,), or None.

    Returns:
        ``(y, cache)``.

    Shape:
        - x: (*, in_features)
        - y: (*, out_features)
    """
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: expected input with {weight.shape[1]} features on the last axis, got shape {tuple(x.shape)}"
        )
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, {"x": x, "weight": weight, "has_bias": bias is not None}


def linear_backward(dy: Any, cache: dict) -> tuple[Any, Any, Any]:
    """Gradients of :func:`linear_forward`.

    Args:
        dy: gradient w.r.t. the output, shape (*, out_features).
        cache: the cache returned by the forward pass.

    Returns:
        ``(dx, dweight, dbias)``; ``dbias`` is None when the forward had no bias.
    """
    x, weight = cache["x"], cache["weight"]
    out_features, in_features = weight.shape
    rows = int(np.prod(x.shape[:-1]))  # explicit, so that empty inputs reshape too
    dx = dy @ weight
    dy2 = dy.reshape(rows, out_features)
    x2 = x.reshape(rows, in_features)
    dweight = dy2.T @ x2
    dbias = dy2.sum(axis=0) if cache["has_bias"] else None
    return dx, dweight, dbias
