"""Parameter: a trainable array with its gradient."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend

__all__ = ["Parameter"]


class Parameter:
    """A trainable array with its gradient.

    Attributes:
        data: the array (NumPy or CuPy).
        grad: an array of the same shape, or None before the first backward.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: Any):
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            raise TypeError(f"Parameter: expected a NumPy or CuPy array, got {type(data).__name__}")
        if np.dtype(data.dtype).kind != "f":  # as PyTorch: only floating arrays take gradients
            raise TypeError(f"Parameter: expected a floating-point array, got dtype {data.dtype}")
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def size(self) -> int:
        return int(self.data.size)

    def accumulate_grad(self, grad: Any, *, copy: bool = True) -> None:
        """Add ``grad`` into ``self.grad`` (on first use, a copy in the parameter's dtype).

        This is what a layer's ``backward`` calls for each of its parameters.

        Args:
            grad: an array of the parameter's shape, on its device; None adds nothing.
            copy: False hands ``grad`` over: on first use it becomes ``self.grad`` without a
                copy (for a freshly computed array the caller does not keep). Defaults to True.
        """
        if grad is None:
            return
        if tuple(grad.shape) != tuple(self.data.shape):
            raise ValueError(
                f"Parameter.accumulate_grad: expected a gradient of shape {self.shape}, got {tuple(grad.shape)}"
            )
        if type(grad) is not type(self.data):
            raise RuntimeError(
                f"Parameter.accumulate_grad: the gradient is on {backend.device_of(grad)} "
                f"but the parameter is on {self.device}"
            )
        if self.grad is None:
            self.grad = grad.astype(self.data.dtype, copy=copy)
        else:
            self.grad += grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device})"
