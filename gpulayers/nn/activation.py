"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh (PyTorch's names and reprs)."""

from __future__ import annotations

import numbers
from typing import Any

from ..ops import activation as ops
from ..ops._checks import check_floating, check_grad, no_forward
from .module import Module

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh"]


class _Activation(Module):
    """An element-wise layer over one forward/backward op pair."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        # Accepted for PyTorch compatibility; the output is always a new array.
        self.inplace = bool(inplace)
        self._cache = None  # (op cache, output): everything backward needs

    def _forward_op(self, x: Any):  # pragma: no cover - abstract
        raise NotImplementedError

    def _backward_op(self, grad_output: Any, cache: dict):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Any) -> Any:
        check_floating(type(self).__name__, x)
        y, cache = self._forward_op(x)
        self._cache = (cache, y)
        return y

    def backward(self, grad_output: Any) -> Any:
        name = type(self).__name__
        if self._cache is None:
            raise no_forward(name)
        cache, y = self._cache
        check_grad(name, grad_output, y.shape, y)
        return self._backward_op(grad_output, cache)

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

    def _forward_op(self, x):
        return ops.relu_forward(x)

    def _backward_op(self, grad_output, cache):
        return ops.relu_backward(grad_output, cache)


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

    def _forward_op(self, x):
        return ops.leaky_relu_forward(x, self.negative_slope)

    def _backward_op(self, grad_output, cache):
        return ops.leaky_relu_backward(grad_output, cache)

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

    def _forward_op(self, x):
        return ops.sigmoid_forward(x)

    def _backward_op(self, grad_output, cache):
        return ops.sigmoid_backward(grad_output, cache)


class Tanh(_Activation):
    """``tanh(x)``.

    Args:
        inplace: accepted for compatibility with the other activations. Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """

    def _forward_op(self, x):
        return ops.tanh_forward(x)

    def _backward_op(self, grad_output, cache):
        return ops.tanh_backward(grad_output, cache)
