"""Dropout layers: Dropout (elements) and Dropout2d (whole channels); identity in eval mode."""

from __future__ import annotations

from typing import Any

from .._checks import check_bool
from ..ops import dropout as ops
from .module import Module

__all__ = ["Dropout", "Dropout2d"]


class Dropout(Module):
    """Zero each element with probability ``p`` in training and scale the rest by ``1 / (1 - p)``.

    The mask is drawn from the library's generator for the input's device, so
    ``gl.manual_seed`` makes it reproducible. In eval mode the layer is the identity.

    Args:
        p: probability of zeroing an element, in [0, 1]. Defaults to 0.5.
        inplace: accepted for PyTorch compatibility (the output is a new array). Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = ops.check_p("Dropout", p)
        self.inplace = check_bool("Dropout", "inplace", inplace)

    def forward(self, x: Any) -> Any:
        y, cache = ops.dropout_forward(x, self.p, self.training, name="Dropout")
        self.save_for_backward(cache, output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        return ops.dropout_backward(grad_output, self._op_cache(grad_output))

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout2d(Module):
    """Zero whole channels with probability ``p`` in training and scale the rest by ``1 / (1 - p)``.

    Each ``(sample, channel)`` plane is kept or dropped as one, as ``torch.nn.Dropout2d`` does for
    4-D input; a 3-D input is one unbatched image ``(C, H, W)``. In eval mode the layer is the identity.

    Args:
        p: probability of zeroing a channel, in [0, 1]. Defaults to 0.5.
        inplace: accepted for PyTorch compatibility (the output is a new array). Defaults to False.

    Shape:
        - Input: (N, C, H, W) or (C, H, W)
        - Output: same as the input
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = ops.check_p("Dropout2d", p)
        self.inplace = check_bool("Dropout2d", "inplace", inplace)

    def forward(self, x: Any) -> Any:
        y, cache = ops.dropout2d_forward(x, self.p, self.training, name="Dropout2d")
        self.save_for_backward(cache, output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        return ops.dropout2d_backward(grad_output, self._op_cache(grad_output))

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
