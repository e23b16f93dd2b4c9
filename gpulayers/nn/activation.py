"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh, SiLU, GELU, Softmax, LogSoftmax (PyTorch's names and reprs)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

from .._checks import check_bool
from ..ops import activation as ops
from ._fused import FusedStandIn
from .module import Module

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "GELU", "Softmax", "LogSoftmax"]


class _Activation(Module):
    """An element-wise layer over one forward/backward op pair."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        # Accepted for PyTorch compatibility; the output is always a new array.
        self.inplace = check_bool(type(self).__name__, "inplace", inplace)

    # The op pair ``ops.<op>_forward`` / ``ops.<op>_backward``, named in each subclass's class
    # statement (``class Tanh(_Activation, op="tanh")``).
    _forward_fn: Callable[..., tuple[Any, Any]]
    _backward_fn: Callable[[Any, Any], Any]

    def __init_subclass__(cls, op: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if op is not None:
            cls._forward_fn = staticmethod(getattr(ops, f"{op}_forward"))
            cls._backward_fn = staticmethod(getattr(ops, f"{op}_backward"))

    def _op_args(self) -> tuple:
        """The op's arguments after the input (none for most activations)."""
        return ()

    def forward(self, x: Any) -> Any:
        y, cache = self._forward_fn(x, *self._op_args(), name=type(self).__name__)
        self.save_for_backward(cache, output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        return self._backward_fn(grad_output, self._op_cache(grad_output))

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class ReLU(FusedStandIn, _Activation, op="relu"):
    """``max(x, 0)`` element-wise; NaN propagates.

    Args:
        inplace: accepted for PyTorch compatibility (the output is a new array). Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape, values >= 0 (NaN kept)
    """

    def _unfused_backward(self, grad_output: Any, cache: Any) -> Any:
        return ops.relu_backward(grad_output, cache)


class LeakyReLU(_Activation, op="leaky_relu"):
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
        if not math.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU: expected a finite negative_slope, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def _op_args(self) -> tuple:
        return (self.negative_slope,)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Sigmoid(_Activation, op="sigmoid"):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``.

    Args:
        inplace: accepted for compatibility with the other activations. Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape, values in [0, 1]
    """


class Tanh(_Activation, op="tanh"):
    """``tanh(x)``.

    Args:
        inplace: accepted for compatibility with the other activations. Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """


class SiLU(_Activation, op="silu"):
    """``x * sigmoid(x)`` (the sigmoid-weighted linear unit, or swish).

    Args:
        inplace: accepted for PyTorch compatibility (the output is a new array). Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape, values of at least about -0.2785 (the minimum, at x = -1.2785)
    """


class GELU(_Activation, op="gelu"):
    """``x * Phi(x)``, ``Phi`` the standard normal CDF, exactly (with erf) or by the tanh approximation.

    Args:
        approximate: ``"none"`` (default) for ``0.5 * x * (1 + erf(x / sqrt(2)))``, or ``"tanh"``
            for ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))``.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ops.GELU_APPROXIMATIONS:
            raise ValueError(f"GELU: expected approximate 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _op_args(self) -> tuple:
        return (self.approximate,)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class _SoftmaxBase(_Activation):
    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral)):
            raise TypeError(f"{name}: expected dim to be an int or None, got {dim!r}")
        self.dim = None if dim is None else int(dim)

    def _op_args(self) -> tuple:
        if self.dim is None:
            name = type(self).__name__
            warnings.warn(
                f"{name}: implicit dimension choice (dim=None) is deprecated, as in PyTorch; pass dim",
                UserWarning,
                stacklevel=4,
            )
        return (self.dim,)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_SoftmaxBase, op="softmax"):
    """``exp(x) / sum(exp(x))`` along ``dim`` (stabilised by subtracting the maximum).

    Args:
        dim: the axis that sums to 1. None picks PyTorch's legacy implicit axis, with a warning.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """


class LogSoftmax(_SoftmaxBase, op="log_softmax"):
    """``x - log(sum(exp(x)))`` along ``dim``, computed without overflow.

    Args:
        dim: the axis of the normalisation. None picks PyTorch's legacy implicit axis, with a warning.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """
