"""Linear, Flatten and Identity layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_int
from ..ops import linear as ops
from ._weighted import WeightBiasLayer
from .module import Module

__all__ = ["Linear", "Flatten", "Identity"]


class Linear(WeightBiasLayer):
    """``y = x @ weight.T + bias`` over the last axis.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias. Defaults to True.

    Attributes:
        weight: (out_features, in_features), kaiming-uniform(a=sqrt(5)) as in PyTorch.
        bias: (out_features,), uniform in ±1/sqrt(in_features).

    Shape:
        - Input: (*, in_features): (N, in_features), extra leading dimensions, or one vector
        - Output: (*, out_features)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = check_int("Linear", "in_features", in_features, 0)
        self.out_features = check_int("Linear", "out_features", out_features, 0)
        self._create_parameters("Linear", (self.out_features, self.in_features), self.out_features, bias)

    _backward_op = staticmethod(ops.linear_backward)

    def forward(self, x: Any) -> Any:
        bias = self.bias.data if self.bias is not None else None
        y, cache = ops.linear_forward(x, self.weight.data, bias, name="Linear")
        self.save_for_backward(cache, output=y)
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Flatten the dimensions ``start_dim`` .. ``end_dim`` into one (a reshape).

    Args:
        start_dim: first dimension to flatten. Defaults to 1 (keeps the batch axis).
        end_dim: last dimension to flatten. Defaults to -1.

    Shape:
        - Input: (*, S_start, ..., S_end, *)
        - Output: (*, S_start * ... * S_end, *)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = check_int("Flatten", "start_dim", start_dim, -(2**31))
        self.end_dim = check_int("Flatten", "end_dim", end_dim, -(2**31))

    def _dims(self, ndim: int) -> tuple[int, int]:
        rank = max(ndim, 1)  # a 0-D input flattens like a 1-element vector (PyTorch)
        dims = []
        for arg, d in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -rank <= d < rank:
                raise ValueError(
                    f"Flatten: {arg}={d} is out of range for a {ndim}-D input (expected in [{-rank}, {rank - 1}])"
                )
            dims.append(d % rank)
        if dims[0] > dims[1]:
            raise ValueError(
                f"Flatten: start_dim ({self.start_dim}) comes after end_dim ({self.end_dim}) for a {ndim}-D input"
            )
        return dims[0], dims[1]

    def forward(self, x: Any) -> Any:
        if not hasattr(x, "shape") or not hasattr(x, "reshape"):
            raise TypeError(f"Flatten: expected a NumPy or CuPy array, got {type(x).__name__}")
        shape = tuple(x.shape)
        if not shape:
            shape_out = (1,)
        else:
            start, end = self._dims(len(shape))
            shape_out = shape[:start] + (int(np.prod(shape[start : end + 1])),) + shape[end + 1 :]
        y = x.reshape(shape_out)
        self.save_for_backward(shape, output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        (shape,) = self.saved_for_backward(grad_output)
        return grad_output.reshape(shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input unchanged (a placeholder); accepts and ignores any arguments.

    Shape:
        - Input: (*)
        - Output: (*), the same array
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        self.save_for_backward(output=x)
        return x

    def backward(self, grad_output: Any) -> Any:
        self.saved_for_backward(grad_output)
        return grad_output
