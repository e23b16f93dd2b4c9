"""Element-wise activations: ReLU, LeakyReLU, Sigmoid, Tanh (xp-generic, dtype-preserving).

NaN propagates through the forward pass as in PyTorch; the backward passes follow PyTorch's
rules at the kinks and at NaN (ReLU's gradient is masked where the *output* is <= 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend

__all__ = [
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
]


def _zero(a: Any) -> Any:
    return a.dtype.type(0)


def relu_forward(x: Any) -> tuple[Any, dict]:
    """``max(x, 0)``; ``maximum`` keeps NaN (``relu(nan) = nan``)."""
    xp = backend.get_array_module(x)
    y = xp.maximum(x, _zero(x))
    return y, {"y": y}


def relu_backward(dy: Any, cache: dict) -> Any:
    """``dy`` where the output is > 0 (or NaN), else 0 (PyTorch's ``threshold_backward``)."""
    xp = backend.get_array_module(dy)
    y = cache["y"]
    if xp is np and np.isfinite(dy.sum()):
        # A multiply by the mask is ~4x faster than where() on NumPy; with finite dy it gives
        # the same result (where() must stay when dy holds inf or NaN: inf * 0 would be NaN).
        return np.multiply(dy, ~(y <= 0), dtype=dy.dtype)
    return xp.where(y <= 0, _zero(dy), dy)


def leaky_relu_forward(x: Any, negative_slope: float = 0.01) -> tuple[Any, dict]:
    """``x`` where ``x > 0``, else ``negative_slope * x``."""
    xp = backend.get_array_module(x)
    y = xp.where(x > 0, x, x * negative_slope)
    return y, {"x": x, "negative_slope": negative_slope}


def leaky_relu_backward(dy: Any, cache: dict) -> Any:
    """``dy`` where the input is > 0, else ``negative_slope * dy``."""
    xp = backend.get_array_module(dy)
    return xp.where(cache["x"] > 0, dy, dy * cache["negative_slope"])


def sigmoid_forward(x: Any) -> tuple[Any, dict]:
    """``1 / (1 + exp(-x))`` without overflow: only ``exp(-|x|)`` (at most 1) is computed."""
    xp = backend.get_array_module(x)
    e = xp.exp(-xp.abs(x))
    one = x.dtype.type(1)
    y = xp.where(x >= 0, one / (one + e), e / (one + e))
    return y, {"y": y}


def sigmoid_backward(dy: Any, cache: dict) -> Any:
    """``dy * y * (1 - y)``."""
    y = cache["y"]
    return dy * (y * (1 - y))


def tanh_forward(x: Any) -> tuple[Any, dict]:
    """``tanh(x)``."""
    xp = backend.get_array_module(x)
    y = xp.tanh(x)
    return y, {"y": y}


def tanh_backward(dy: Any, cache: dict) -> Any:
    """``dy * (1 - y**2)``."""
    y = cache["y"]
    return dy * (1 - y * y)
