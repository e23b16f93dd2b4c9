"""MaxPool2d, AvgPool2d and AdaptiveAvgPool2d: thin layers over :mod:`gpulayers.ops.max_pool2d` and ``avg_pool2d``."""

from __future__ import annotations

from typing import Any

from .._checks import check_bool
from ..ops import avg_pool2d as avg_ops
from ..ops import max_pool2d as ops
from ._fused import FusedStandIn
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


class _Pool(Module):
    """Shared forward/backward plumbing: validate, call the op, keep its cache."""

    _forward_op: Any = None
    _backward_op: Any = None

    def _op_args(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Any) -> Any:
        # The op validates the input and the window, naming this layer in its messages.
        y, cache = type(self)._forward_op(x, *self._op_args(), name=type(self).__name__)
        self.save_for_backward(cache, output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        return type(self)._backward_op(grad_output, self._op_cache(grad_output))


class MaxPool2d(FusedStandIn, _Pool):
    """Max pooling over an NCHW batch, PyTorch's ``nn.MaxPool2d``.

    Args:
        kernel_size: window size, int or pair.
        stride: int or pair. Defaults to ``kernel_size``.
        padding: implicit -inf padding on both sides, at most half the kernel. Defaults to 0.
        dilation: spacing between window elements. Defaults to 1.
        ceil_mode: round the output size up instead of down. Defaults to False.

    Ties go to the first maximum of the window (row-major); NaN propagates as in PyTorch.

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: ``(N, C, OH, OW)``,
          ``OH = floor_or_ceil((H + 2*padding[0] - dilation[0]*(kernel_size[0]-1) - 1) / stride[0]) + 1``.
    """

    _forward_op = staticmethod(ops.max_pool2d_forward)
    _backward_op = staticmethod(ops.max_pool2d_backward)

    def __init__(
        self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False
    ) -> None:
        super().__init__()
        ops.pool_arguments("MaxPool2d", kernel_size, stride, padding, dilation, ceil_mode)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = bool(ceil_mode)

    def _op_args(self) -> tuple:
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def _unfused_backward(self, grad_output: Any, cache: Any) -> Any:
        return ops.max_pool2d_backward(grad_output, cache)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(_Pool):
    """Average pooling over an NCHW batch, PyTorch's ``nn.AvgPool2d``.

    Args:
        kernel_size: window size, int or pair.
        stride: int or pair. Defaults to ``kernel_size``.
        padding: implicit zero padding on both sides, at most half the kernel. Defaults to 0.
        ceil_mode: round the output size up instead of down. Defaults to False.
        count_include_pad: count the zero padding in the divisor. Defaults to True.

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: ``(N, C, OH, OW)``, ``OH = floor_or_ceil((H + 2*padding[0] - kernel_size[0]) / stride[0]) + 1``.
    """

    _forward_op = staticmethod(avg_ops.avg_pool2d_forward)
    _backward_op = staticmethod(avg_ops.avg_pool2d_backward)

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__()
        ops.pool_arguments("AvgPool2d", kernel_size, stride, padding, 1, ceil_mode)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = check_bool("AvgPool2d", "count_include_pad", count_include_pad)

    def _op_args(self) -> tuple:
        return self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(_Pool):
    """Average pooling to a fixed output size, PyTorch's ``nn.AdaptiveAvgPool2d``.

    Args:
        output_size: int or pair ``(oh, ow)``, each at least 1; None keeps that input size.

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: ``(N, C, oh, ow)``; cell ``i`` averages rows ``[floor(i*H/oh), ceil((i+1)*H/oh))``.
    """

    _forward_op = staticmethod(avg_ops.adaptive_avg_pool2d_forward)
    _backward_op = staticmethod(avg_ops.adaptive_avg_pool2d_backward)

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        avg_ops.adaptive_output_size("AdaptiveAvgPool2d", output_size)
        self.output_size = output_size

    def _op_args(self) -> tuple:
        return (self.output_size,)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
