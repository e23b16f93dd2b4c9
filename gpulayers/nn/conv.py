"""Conv2d and ConvTranspose2d: thin layers over :mod:`gpulayers.ops.conv2d` and :mod:`.ops.conv_transpose2d`."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from .._checks import check_input, check_int, pair
from .._signature import signed_init
from ..ops import conv2d as ops
from ..ops import conv_transpose2d as transpose_ops
from ._weighted import WeightBiasLayer

__all__ = ["Conv2d", "ConvTranspose2d"]


_SIZE = int | tuple[int, int]
#: Every constructor argument of the two layers: (default, annotation); the first three are required.
_ARGUMENTS = {
    "in_channels": (inspect.Parameter.empty, int),
    "out_channels": (inspect.Parameter.empty, int),
    "kernel_size": (inspect.Parameter.empty, _SIZE),
    "stride": (1, _SIZE),
    "padding": (0, _SIZE | str),
    "output_padding": (0, _SIZE),
    "dilation": (1, _SIZE),
    "groups": (1, int),
    "bias": (True, bool),
    "padding_mode": ("zeros", str),
}


def _pytorch_init(*options: str) -> Any:
    """An ``__init__`` whose signature is PyTorch's: the channels and the kernel, then ``options`` in order.

    It binds the call to that signature (so positional arguments follow PyTorch's order) and hands
    every argument by name to :meth:`_ConvLayer._configure` (:func:`gpulayers._signature.signed_init`).
    """
    names = ("in_channels", "out_channels", "kernel_size", *options)
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for arg in names:
        default, annotation = _ARGUMENTS[arg]
        if arg == "padding" and "output_padding" in options:
            annotation = _SIZE  # the transposed convolution takes no "same"/"valid"
        params.append(
            inspect.Parameter(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
        )
    signature = inspect.Signature(params, return_annotation=None)
    return signed_init(
        signature, lambda layer, **arguments: layer._configure(**arguments), name=lambda layer: layer._name
    )


class _ConvLayer(WeightBiasLayer):
    """What Conv2d and ConvTranspose2d share: checking the constructor's arguments, making the parameters."""

    _name: str
    _transposed: bool

    def _configure(
        self,
        in_channels: Any,
        out_channels: Any,
        kernel_size: Any,
        *,
        groups: Any,
        bias: Any,
        padding_mode: Any,
        **window: Any,
    ) -> None:
        super().__init__()
        name = self._name
        self.in_channels = check_int(name, "in_channels", in_channels, 1)
        self.out_channels = check_int(name, "out_channels", out_channels, 1)
        self.kernel_size = pair(name, "kernel_size", kernel_size, minimum=1)
        self.groups = self._set_window(groups=groups, **window)
        for what, count in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if count % self.groups:
                raise ValueError(f"{name}: expected {what} divisible by groups={self.groups}, got {count}")
        if padding_mode != "zeros":
            raise ValueError(f"{name}: only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.padding_mode = padding_mode
        # Conv2d's weight is (out, in / groups, kh, kw), ConvTranspose2d's (in, out / groups, kh, kw);
        # PyTorch's fan-in is weight.shape[1] * kh * kw for both.
        first, second = (
            (self.in_channels, self.out_channels) if self._transposed else (self.out_channels, self.in_channels)
        )
        self._create_parameters(name, (first, second // self.groups, *self.kernel_size), self.out_channels, bias)

    def _set_window(self, **options: Any) -> int:
        """Check and store stride, padding, dilation (and output_padding); return the groups."""
        raise NotImplementedError


def _conv_repr(layer: Any, *options: tuple) -> str:
    """PyTorch's repr: channels, kernel and stride, then each option that differs from its default."""
    s = f"{layer.in_channels}, {layer.out_channels}, kernel_size={layer.kernel_size}, stride={layer.stride}"
    for option, default in options:
        value = getattr(layer, option)
        if isinstance(value, str) or value != default:
            s += f", {option}={value}"
    if layer.bias is None:
        s += ", bias=False"
    return s


class Conv2d(_ConvLayer):
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

    _name = "Conv2d"
    _transposed = False
    __init__ = _pytorch_init("stride", "padding", "dilation", "groups", "bias", "padding_mode")

    def _set_window(self, stride: Any, padding: Any, dilation: Any, groups: Any) -> int:
        self.stride, pad, _, self.dilation, groups = ops.normalize_conv_options(
            self._name, self.kernel_size, stride, padding, dilation, groups
        )
        self.padding = padding if isinstance(padding, str) else pad
        return groups

    _backward_op = staticmethod(ops.conv2d_backward)

    def forward(self, x: Any) -> Any:
        bias = None if self.bias is None else self.bias.data
        y, cache = ops.conv2d_forward(
            x, self.weight.data, bias, self.stride, self.padding, self.dilation, self.groups, name="Conv2d"
        )
        self.save_for_backward(cache, output=y)
        return y

    def extra_repr(self) -> str:
        return _conv_repr(self, ("padding", (0, 0)), ("dilation", (1, 1)), ("groups", 1))


class ConvTranspose2d(_ConvLayer):
    """2-D transposed convolution over an NCHW batch, PyTorch's ``nn.ConvTranspose2d``.

    The adjoint of :class:`Conv2d` with the same weight: it runs the convolution's input
    gradient forward (and the convolution itself in backward), so it upsamples by ``stride``.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: int or pair.
        stride: int or pair. Defaults to 1.
        padding: int or pair; removes ``padding`` rows/columns from each side of the full
            output. Defaults to 0.
        output_padding: int or pair added to the bottom/right of the output, smaller than the
            stride or the dilation. Defaults to 0.
        groups: blocked connections from input to output channels; both counts must divide by
            it. Defaults to 1.
        bias: learn an additive bias. Defaults to True.
        dilation: int or pair. Defaults to 1.
        padding_mode: only ``"zeros"`` is supported.

    Attributes:
        weight: ``(in_channels, out_channels // groups, kh, kw)``, kaiming-uniform(a=sqrt(5)) with
            PyTorch's fan-in (``out_channels // groups * kh * kw``).
        bias: ``(out_channels,)``, uniform in ±1/sqrt(fan_in), or None.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, OH, OW)`` with
          ``OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kernel_size[0] - 1) + output_padding[0] + 1``,
          likewise ``OW``.
    """

    _name = "ConvTranspose2d"
    _transposed = True
    __init__ = _pytorch_init("stride", "padding", "output_padding", "groups", "bias", "dilation", "padding_mode")

    def _set_window(self, stride: Any, padding: Any, output_padding: Any, dilation: Any, groups: Any) -> int:
        self.stride, self.padding, self.output_padding, self.dilation, groups = transpose_ops.conv_transpose2d_options(
            self._name, stride, padding, output_padding, dilation, groups
        )
        return groups

    def forward(self, x: Any, output_size: Any = None) -> Any:
        """The transposed convolution of ``x``.

        Args:
            x: ``(N, in_channels, H, W)``.
            output_size: optional ``(OH, OW)`` (or ``(N, C, OH, OW)``) picking the output padding,
                as PyTorch's; each size must lie within ``stride - 1`` of the smallest output.
        """
        bias = None if self.bias is None else self.bias.data
        output_padding = self.output_padding
        if output_size is not None:
            output_padding = self._output_padding(x, output_size)
        y, cache = transpose_ops.conv_transpose2d_forward(
            x,
            self.weight.data,
            bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
            name="ConvTranspose2d",
        )
        self.save_for_backward(cache, output=y)
        return y

    def _output_padding(self, x: Any, output_size: Any) -> tuple[int, int]:
        """The output padding that gives ``output_size`` (PyTorch's rule: within ``stride - 1`` of the minimum)."""
        name = self._name
        size = tuple(output_size)
        if len(size) == 4:
            size = size[2:]
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
            raise ValueError(f"{name}: expected output_size to be (OH, OW) or (N, C, OH, OW), got {output_size!r}")
        check_input(name, x, 4, "(N, C, H, W)")
        padding = []
        for axis in range(2):
            k, s, p, d = self.kernel_size[axis], self.stride[axis], self.padding[axis], self.dilation[axis]
            smallest = (int(x.shape[2 + axis]) - 1) * s - 2 * p + d * (k - 1) + 1
            if not smallest <= size[axis] <= smallest + s - 1:
                raise ValueError(
                    f"{name}: requested an output size of {tuple(size)}, but valid sizes range from "
                    f"{smallest} to {smallest + s - 1} on axis {2 + axis} (for an input of shape {tuple(x.shape)})"
                )
            padding.append(int(size[axis]) - smallest)
        return padding[0], padding[1]

    @staticmethod
    def _backward_op(grad_output: Any, cache: Any, input_grad: bool) -> tuple:
        dx, dw, db = transpose_ops.conv_transpose2d_backward(grad_output, cache)
        return (dx if input_grad else None), dw, db

    def extra_repr(self) -> str:
        options = (("padding", (0, 0)), ("dilation", (1, 1)), ("output_padding", (0, 0)), ("groups", 1))
        return _conv_repr(self, *options)
