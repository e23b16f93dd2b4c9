"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh (PyTorch's names and reprs)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from .._checks import check_floating
from ..ops import activation as ops
from .module import Module

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh"]


class _Activation(Module):
    """An element-wise layer over one forward/backward op pair."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        # Accepted for PyTorch compatibility; the output is always a new array.
        self.inplace = bool(inplace)
        self._cache = None  # (op cache, output): everything backward needs

    # The op pair, set by each subclass as ``staticmethod``s.
    _forward_fn: Callable[..., tuple[Any, dict]]
    _backward_fn: Callable[[Any, dict], Any]

    def _forward_op(self, x: Any) -> tuple[Any, dict]:
        return self._forward_fn(x)

    def forward(self, x: Any) -> Any:
        check_floating(type(self).__name__, x)
        y, cache = self._forward_op(x)
        self._cache = (cache, y)
        return y

    def backward(self, grad_output: Any) -> Any:
        return self._backward_fn(grad_output, self._saved_for_backward(grad_output))

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class ReLU(_Activation):
    """``max(x, 0)`` element-wise; NaN propagates.

    Args:
        inplace: accepted for PyTorch compatibility (the output is a new array). Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """

    _forward_fn = staticmethod(ops.relu_forward)
    _backward_fn = staticmethod(ops.relu_backward)


class LeakyReLU(_Activation):
    """``x`` for ``x > 0``, else ``negative_slope * x``.

    Args:
        negative_slope: slope for negative inputs. Defaults to 0.01.
        inplace: accepted for PyTorch compatibility. Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(inplace)
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
            raise TypeError(f"LeakyReLU: expected negative_slope to be a number, got {type(negative_slope).__name__}")
        self.negative_slope = float(negative_slope)

    _backward_fn = staticmethod(ops.leaky_relu_backward)

    def _forward_op(self, x: Any) -> tuple[Any, dict]:
        return ops.leaky_relu_forward(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``.

    Args:
        inplace: accepted for compatibility with the other activations. Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """

    _forward_fn = staticmethod(ops.sigmoid_forward)
    _backward_fn = staticmethod(ops.sigmoid_backward)


class Tanh(_Activation):
    """``tanh(x)``.

    Args:
        inplace: accepted for compatibility with the other activations. Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """

    _forward_fn = staticmethod(ops.tanh_forward)
    _backward_fn = staticmethod(ops.tanh_backward)
