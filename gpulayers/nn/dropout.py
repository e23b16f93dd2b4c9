"""Dropout layers: Dropout (elements) and Dropout2d (whole channels); identity in eval mode."""

from __future__ import annotations

from typing import Any

from .._checks import check_bool
from ..ops import dropout as ops
from .module import Module

__all__ = ["Dropout", "Dropout2d"]


class _DropoutNd(Module):
    """What Dropout and Dropout2d share: ``p``, ``inplace`` and the forward/backward plumbing."""

    _forward = staticmethod(ops.dropout_forward)
    _backward = staticmethod(ops.dropout_backward)

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        self.p = ops.check_p(name, p)
        self.inplace = check_bool(name, "inplace", inplace)

    def forward(self, x: Any) -> Any:
        y, cache = self._forward(x, self.p, self.training, name=type(self).__name__)
        self.save_for_backward(cache, output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        return self._backward(grad_output, self._op_cache(grad_output))

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout(_DropoutNd):
    """Zero each element with probability ``p`` in training and scale the rest by ``1 / (1 - p)``.

    The mask is drawn from the library's generator for the input's device (on the GPU a
    counter-based generator inside the fused kernel), so ``gl.manual_seed`` makes it
    reproducible. In eval mode the layer is the identity.

    Args:
        p: probability of zeroing an element, in [0, 1]. Defaults to 0.5.
        inplace: accepted for PyTorch compatibility (the output is a new array). Defaults to False.

    Shape:
        - Input: (*), any shape
        - Output: (*), same shape
    """


class Dropout2d(_DropoutNd):
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

    _forward = staticmethod(ops.dropout2d_forward)
    _backward = staticmethod(ops.dropout2d_backward)
