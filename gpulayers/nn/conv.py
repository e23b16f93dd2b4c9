"""Conv2d: a thin layer over :mod:`gpulayers.ops.conv2d`."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_bool, check_input, no_forward, pair
from ..ops import conv2d as ops
from .init import default_weight_and_bias
from .module import Module, Parameter

__all__ = ["Conv2d"]


def _positive_int(name: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected {arg} to be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected {arg} >= 1, got {value}")
    return int(value)


class Conv2d(Module):
    """2-D convolution over an NCHW batch, PyTorch's ``nn.Conv2d``.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: int or pair.
        stride: int or pair. Defaults to 1.
        padding: int, pair, ``"valid"`` or ``"same"`` (stride 1 only). Defaults to 0.
        dilation: int or pair. Defaults to 1.
        groups: blocked connections from input to output channels; both counts must divide
            by it (``groups == in_channels`` is a depthwise convolution). Defaults to 1.
        bias: learn an additive bias. Defaults to True.
        padding_mode: only ``"zeros"`` is supported.

    Attributes:
        weight: ``(out_channels, in_channels // groups, kh, kw)``, kaiming-uniform(a=sqrt(5)).
        bias: ``(out_channels,)``, uniform in ±1/sqrt(fan_in), or None.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, OH, OW)`` with
          ``OH = (H + 2*padding[0] - dilation[0]*(kernel_size[0]-1) - 1) // stride[0] + 1``, likewise ``OW``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        name = "Conv2d"
        self.in_channels = _positive_int(name, "in_channels", in_channels)
        self.out_channels = _positive_int(name, "out_channels", out_channels)
        self.kernel_size = pair(name, "kernel_size", kernel_size, minimum=1)
        stride_, pad, _, dilation_, groups_ = ops.normalize_conv_options(
            name, self.kernel_size, stride, padding, dilation, groups
        )
        for what, count in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if count % groups_:
                raise ValueError(f"{name}: expected {what} divisible by groups={groups_}, got {count}")
        if padding_mode != "zeros":
            raise ValueError(f"{name}: only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.stride, self.dilation, self.groups = stride_, dilation_, groups_
        self.padding = padding if isinstance(padding, str) else pad
        self.padding_mode = padding_mode
        shape = (self.out_channels, self.in_channels // groups_, *self.kernel_size)
        w, b = default_weight_and_bias(shape, self.out_channels, check_bool(name, "bias", bias))
        self.weight = Parameter(w)
        if b is not None:
            self.bias = Parameter(b)
        else:
            self.register_parameter("bias", None)
        self._cache = None

    def forward(self, x: Any) -> Any:
        check_input("Conv2d", x, 4, "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv2d: expected input with {self.in_channels} channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        bias = None if self.bias is None else self.bias.data
        y, self._cache = ops.conv2d_forward(
            x, self.weight.data, bias, self.stride, self.padding, self.dilation, self.groups, name="Conv2d"
        )
        return y

    def backward(self, grad_output: Any) -> Any:
        if self._cache is None:
            raise no_forward("Conv2d")
        dx, dw, db = ops.conv2d_backward(grad_output, self._cache)
        self._accumulate(self.weight, dw)
        self._accumulate(self.bias, db)
        return dx

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if isinstance(self.padding, str) or self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
