"""2-D transposed convolution (PyTorch's ``F.conv_transpose2d``): conv2d run backwards.

A transposed convolution is the adjoint of a convolution with the same weight, so it needs no
kernels of its own. With ``conv`` the convolution whose weight ``(in, out / groups, kh, kw)``
maps ``out`` channels to ``in`` channels:

* forward: ``y = conv``'s input gradient for the "output gradient" ``x``
  (:func:`gpulayers.ops.conv2d.conv2d_input_grad`), plus the bias;
* backward: ``dx = conv(dy)`` (:func:`gpulayers.ops.conv2d.conv2d_forward`) and
  ``dW = conv``'s weight gradient for input ``dy`` and output gradient ``x``
  (:func:`gpulayers.ops.conv2d.conv2d_weight_grad`); ``db`` sums ``dy``.

Both functions dispatch on the array type, so NumPy runs the conv2d CPU code and CuPy the
conv2d CUDA kernels. ``output_padding`` rows beyond what the convolution can reach (when it
is at least the stride, which dilation allows) are covered by padding ``x`` with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_bias, check_conv_arrays, check_grad, grad_marker, pair
from .conv2d import conv2d_forward, conv2d_input_grad, conv2d_weight_grad

__all__ = ["conv_transpose2d_forward", "conv_transpose2d_backward", "conv_transpose2d_options", "TransposeArgs"]


@dataclass(frozen=True)
class TransposeArgs:
    """Validated options of a transposed convolution and its output size."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out_size: tuple[int, int]


def conv_transpose2d_options(
    name: str, stride: Any, padding: Any, output_padding: Any, dilation: Any, groups: Any
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """(stride, padding, output_padding, dilation, groups) after checking each; shared with the layer.

    ``output_padding`` must be smaller than the stride or the dilation on each axis, as in PyTorch.
    """
    stride = pair(name, "stride", stride, minimum=1)
    padding = pair(name, "padding", padding, minimum=0)
    output_padding = pair(name, "output_padding", output_padding, minimum=0)
    dilation = pair(name, "dilation", dilation, minimum=1)
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{name}: expected groups to be a positive int, got {groups!r}")
    for axis in range(2):
        if output_padding[axis] >= max(stride[axis], dilation[axis]):
            raise ValueError(
                f"{name}: expected output_padding smaller than either stride or dilation, got "
                f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
            )
    return stride, padding, output_padding, dilation, int(groups)


def _arguments(
    name: str, x: Any, weight: Any, bias: Any, stride, padding, output_padding, groups, dilation
) -> TransposeArgs:
    check_conv_arrays(name, x, weight, "(in, out/groups, kh, kw)")
    stride, padding, output_padding, dilation, groups = conv_transpose2d_options(
        name, stride, padding, output_padding, dilation, groups
    )
    in_channels = int(weight.shape[0])
    if in_channels % groups:
        raise ValueError(f"{name}: expected the weight's in_channels divisible by groups={groups}, got {in_channels}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name}: expected input with {in_channels} channels (weight {tuple(weight.shape)}), "
            f"got {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    check_bias(name, x, bias, int(weight.shape[1]) * groups)
    out = []
    for axis, label in enumerate(("height", "width")):
        size, k = int(x.shape[2 + axis]), int(weight.shape[2 + axis])
        o = (size - 1) * stride[axis] - 2 * padding[axis] + dilation[axis] * (k - 1) + output_padding[axis] + 1
        if o < 1:
            raise ValueError(
                f"{name}: the output {label} would be {o} (input {label} {size}, kernel {k}, stride {stride[axis]}, "
                f"padding {padding[axis]}, dilation {dilation[axis]}, output_padding {output_padding[axis]}); "
                "expected at least 1"
            )
        out.append(o)
    return TransposeArgs(stride, padding, output_padding, dilation, groups, (out[0], out[1]))


def _window(a: TransposeArgs) -> tuple:
    return a.stride, a.padding, a.dilation, a.groups


@dataclass(frozen=True)
class TransposeCache:
    """What :func:`conv_transpose2d_forward` keeps for backward."""

    x: Any  # the input, padded by the output padding the convolution could not express
    weight: Any
    has_bias: bool
    args: Any  # the normalised options
    in_size: tuple[int, int]
    out_shape: tuple
    x_like: Any  # device and dtype marker of the input, for the gradient check
    name: str


def conv_transpose2d_forward(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    *,
    name: str = "conv_transpose2d",
) -> tuple[Any, TransposeCache]:
    """Transposed convolution of an NCHW batch (PyTorch's ``F.conv_transpose2d``, same argument order).

    The arguments are those of :func:`gpulayers.ops.conv2d.conv2d_forward` (``bias``, ``stride``,
    ``dilation``, ``groups`` and ``name`` mean the same), but for these:

    Args:
        x: input ``(N, in_channels, H, W)``.
        weight: ``(in_channels, out_channels // groups, kh, kw)``; ``bias`` is ``(out_channels,)``.
        padding: int or pair (no strings): ``dilation * (kernel - 1) - padding`` zeros are
            (implicitly) added around the input. Defaults to 0.
        output_padding: int or pair, extra size on the bottom/right of the output; smaller than
            the stride or the dilation. Defaults to 0.

    Returns:
        ``(y, cache)``; pass ``cache`` to :func:`conv_transpose2d_backward`.

    Shape:
        ``OH = (H - 1) * sh - 2 * ph + dh * (kh - 1) + output_padding[0] + 1``, likewise ``OW``;
        ``y`` is ``(N, out_channels, OH, OW)``.
    """
    a = _arguments(name, x, weight, bias, stride, padding, output_padding, groups, dilation)
    xp = backend.get_array_module(x)
    n, out_channels = int(x.shape[0]), int(weight.shape[1]) * a.groups
    # The convolution whose input gradient this is maps (OH, OW) to H + eh rows, W + ew columns:
    # output_padding >= stride (allowed by a larger dilation) adds rows that x does not cover.
    extra = (a.output_padding[0] // a.stride[0], a.output_padding[1] // a.stride[1])
    with backend.device_scope(x):
        x_conv = x if extra == (0, 0) else xp.pad(x, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
        x_conv = xp.ascontiguousarray(x_conv)
        weight = xp.ascontiguousarray(weight)
        y = conv2d_input_grad(x_conv, weight, (n, out_channels, *a.out_size), *_window(a))
        if bias is not None:
            y += bias.reshape(1, out_channels, 1, 1)
    in_size = (int(x.shape[2]), int(x.shape[3]))
    return y, TransposeCache(x_conv, weight, bias is not None, a, in_size, tuple(y.shape), grad_marker(x), name)


def conv_transpose2d_backward(dy: Any, cache: TransposeCache | None) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dw, db)`` of :func:`conv_transpose2d_forward`; ``db`` is None without bias."""
    if cache is None:
        raise RuntimeError("conv_transpose2d.backward: called before forward (no saved input); run forward first")
    check_grad(cache.name, dy, cache.out_shape, cache.x_like)
    xp = backend.get_array_module(dy)
    a, weight = cache.args, cache.weight
    h, w = cache.in_size
    with backend.device_scope(dy):
        dy = xp.ascontiguousarray(dy, dtype=weight.dtype)
        dx, _ = conv2d_forward(dy, weight, None, *_window(a), name=cache.name)
        if dx.shape[2:] != (h, w):
            dx = xp.ascontiguousarray(dx[:, :, :h, :w])
        dw = conv2d_weight_grad(dy, cache.x, tuple(weight.shape), *_window(a))
        db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dw, db
