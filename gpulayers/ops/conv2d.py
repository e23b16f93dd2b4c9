"""2-D convolution (cross-correlation, as in PyTorch): forward and backward.

``y, cache = conv2d_forward(x, weight, bias, stride, padding, dilation, groups)`` and
``dx, dw, db = conv2d_backward(dy, cache)``. This module validates and dispatches: NumPy arrays
run the block-wise im2col/GEMM code of :mod:`gpulayers.ops.conv2d_cpu`, CuPy arrays the CUDA
kernels behind :mod:`gpulayers.ops.conv2d_cuda`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_bias, check_conv_arrays, check_grad, conv_size, grad_marker, pair
from . import conv2d_cpu

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "conv2d_arguments",
    "normalize_conv_options",
    "ConvArgs",
    "ConvCache",
]


@dataclass(frozen=True)
class ConvArgs:
    """Validated convolution arguments (padding as the backends see it, plus any "same" extra)."""

    stride: tuple[int, int]
    padding: tuple[int, int]  # symmetric part, what the backends see
    extra: tuple[int, int]  # one more row/column at the bottom/right ("same" with an odd total)
    dilation: tuple[int, int]
    groups: int
    out_size: tuple[int, int]


def _same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch's "same": total d*(k-1) per axis, the odd one at the bottom/right."""
    totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    return (totals[0] // 2, totals[1] // 2), (totals[0] % 2, totals[1] % 2)


def normalize_conv_options(
    name: str, kernel: tuple[int, int], stride: Any, padding: Any, dilation: Any, groups: Any
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """(stride, padding, extra, dilation, groups) after checking each; shared with the layer."""
    stride = pair(name, "stride", stride, minimum=1)
    dilation = pair(name, "dilation", dilation, minimum=1)
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{name}: expected groups to be a positive int, got {groups!r}")
    if isinstance(padding, str):
        if padding == "valid":
            return stride, (0, 0), (0, 0), dilation, int(groups)
        if padding != "same":
            raise ValueError(f"{name}: expected padding to be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"{name}: padding='same' needs stride 1 (as in PyTorch), got stride {stride}")
        pad, extra = _same_padding(kernel, dilation)
        return stride, pad, extra, dilation, int(groups)
    return stride, pair(name, "padding", padding, minimum=0), (0, 0), dilation, int(groups)


def conv2d_arguments(
    name: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any
) -> ConvArgs:
    """Check input, weight and bias against each other and return the normalised options."""
    check_conv_arrays(name, x, weight, "(out, in/groups, kh, kw)")
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    stride, pad, extra, dilation, groups = normalize_conv_options(name, kernel, stride, padding, dilation, groups)
    out_channels = int(weight.shape[0])
    if out_channels % groups:
        raise ValueError(f"{name}: expected out_channels divisible by groups={groups}, got {out_channels}")
    if x.shape[1] != weight.shape[1] * groups:
        layout = "" if groups == 1 else f" (weight {tuple(weight.shape)}, groups={groups})"
        raise ValueError(
            f"{name}: expected input with {weight.shape[1] * groups} channels{layout}, "
            f"got {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    check_bias(name, x, bias, out_channels)
    oh = conv_size(name, x.shape[2] + extra[0], kernel[0], stride[0], pad[0], dilation[0], "height")
    ow = conv_size(name, x.shape[3] + extra[1], kernel[1], stride[1], pad[1], dilation[1], "width")
    return ConvArgs(stride, pad, extra, dilation, groups, (oh, ow))


@dataclass(frozen=True, slots=True)
class ConvCache:
    """What backward needs: the backend's own cache plus the dispatcher's bookkeeping."""

    inner: Any  # the CPU or GPU path's own cache
    on_gpu: bool
    in_shape: tuple
    out_shape: tuple
    x_like: Any  # a 0-size array on the input's device and dtype (for checks)
    name: str  # the op or layer that ran forward, for backward's messages


def conv2d_forward(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    name: str = "conv2d",
) -> tuple[Any, ConvCache]:
    """2-D convolution of an NCHW batch, PyTorch's ``F.conv2d``.

    Args:
        x: input ``(N, C, H, W)``, float32 or float64, NumPy or CuPy.
        weight: ``(out_channels, C // groups, kh, kw)``, same device and dtype.
        bias: ``(out_channels,)`` or None.
        stride: int or pair. Defaults to 1.
        padding: int, pair, ``"valid"`` or ``"same"`` (stride 1 only). Defaults to 0.
        dilation: int or pair. Defaults to 1.
        groups: input and output channels split into this many groups. Defaults to 1.
        name: who is calling, for error messages (a layer passes its class name).

    Returns:
        ``(y, cache)``; pass ``cache`` to :func:`conv2d_backward`.

    Shape:
        ``OH = (H + 2*ph - dh*(kh-1) - 1) // sh + 1``, likewise ``OW``; ``y`` is ``(N, out_channels, OH, OW)``.
    """
    a = conv2d_arguments(name, x, weight, bias, stride, padding, dilation, groups)
    xp = backend.get_array_module(x)
    in_shape = tuple(x.shape)
    if not backend.is_cuda_array(x):
        if a.extra != (0, 0):  # asymmetric "same": the backends only see symmetric padding
            x = np.pad(x, ((0, 0), (0, 0), (0, a.extra[0]), (0, a.extra[1])))
        y, inner = conv2d_cpu.forward(np.ascontiguousarray(x), np.ascontiguousarray(weight), bias, a)
        return y, ConvCache(inner, False, in_shape, tuple(y.shape), grad_marker(x), name)
    from . import conv2d_cuda  # noqa: PLC0415 - the GPU module loads CuPy kernels lazily

    with x.device:
        if a.extra != (0, 0):
            x = xp.pad(x, ((0, 0), (0, 0), (0, a.extra[0]), (0, a.extra[1])))
        x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
        bias = None if bias is None else xp.ascontiguousarray(bias)
        y, inner = conv2d_cuda.conv2d_forward(
            x, weight, bias, stride=a.stride, padding=a.padding, dilation=a.dilation, groups=a.groups
        )
    return y, ConvCache(inner, True, in_shape, tuple(y.shape), grad_marker(x), name)


def conv2d_backward(dy: Any, cache: ConvCache | None, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients of :func:`conv2d_forward`.

    Args:
        dy: gradient w.r.t. ``y``, shape ``(N, out_channels, OH, OW)``.
        cache: what :func:`conv2d_forward` returned.
        input_grad: compute ``dx``; False skips it (the input needs no gradient).

    Returns:
        ``(dx, dw, db)``; ``db`` is None when the forward had no bias, ``dx`` without ``input_grad``.
    """
    if cache is None:
        raise RuntimeError("conv2d.backward: called before forward (no saved input); run forward first")
    check_grad(cache.name, dy, cache.out_shape, cache.x_like)
    h, w = cache.in_shape[2], cache.in_shape[3]
    if not cache.on_gpu:
        dx, dw, db = conv2d_cpu.backward(np.ascontiguousarray(dy, dtype=cache.x_like.dtype), cache.inner, input_grad)
        if dx is not None and dx.shape[2:] != (h, w):  # undo the extra "same" row/column
            dx = np.ascontiguousarray(dx[:, :, :h, :w])
        return dx, dw, db
    from . import conv2d_cuda  # noqa: PLC0415

    xp = backend.get_array_module(dy)
    with dy.device:
        dx, dw, db = conv2d_cuda.conv2d_backward(
            xp.ascontiguousarray(dy, dtype=cache.x_like.dtype), cache.inner, input_grad
        )
        if dx is not None and dx.shape[2:] != (h, w):
            dx = xp.ascontiguousarray(dx[:, :, :h, :w])
    return dx, dw, db


# -- the two halves of backward on their own (the forward and backward of ConvTranspose2d) -----------


def _plain_args(stride, padding, dilation, groups, out_size) -> ConvArgs:
    return ConvArgs(
        tuple(stride), tuple(padding), (0, 0), tuple(dilation), int(groups), tuple(int(v) for v in out_size)
    )


def conv2d_input_grad(
    dy: Any, weight: Any, input_shape: tuple, stride: Any, padding: Any, dilation: Any, groups: int
) -> Any:
    """``dx`` of a convolution of an input of ``input_shape`` for the output gradient ``dy``, without a forward.

    Takes validated arguments: int pairs, ``dy`` of the convolution's output size for
    ``input_shape``, ``weight`` of ``dy``'s dtype and device. NumPy runs the GEMM and col2im of
    the CPU backward, CuPy the conv2d kernels (:func:`gpulayers.ops.conv2d_cuda.conv2d_backward_data`).
    """
    input_shape = tuple(int(v) for v in input_shape)
    if backend.is_cuda_array(dy):
        from . import conv2d_cuda  # noqa: PLC0415

        return conv2d_cuda.conv2d_backward_data(dy, weight, input_shape, stride, padding, dilation, groups)
    a = _plain_args(stride, padding, dilation, groups, dy.shape[2:])
    return conv2d_cpu.input_grad(np.ascontiguousarray(dy), np.ascontiguousarray(weight), input_shape, a)


def conv2d_weight_grad(
    x: Any, dy: Any, weight_shape: tuple, stride: Any, padding: Any, dilation: Any, groups: int
) -> Any:
    """``dW`` of a convolution of ``x`` for the output gradient ``dy``, without a forward.

    Takes validated arguments as :func:`conv2d_input_grad`. NumPy runs the im2col and GEMM of the
    CPU path, CuPy the conv2d kernels (:func:`gpulayers.ops.conv2d_cuda.conv2d_backward_weight`).
    """
    weight_shape = tuple(int(v) for v in weight_shape)
    if backend.is_cuda_array(x):
        from . import conv2d_cuda  # noqa: PLC0415

        return conv2d_cuda.conv2d_backward_weight(x, dy, weight_shape, stride, padding, dilation, groups)
    a = _plain_args(stride, padding, dilation, groups, dy.shape[2:])
    return conv2d_cpu.weight_grad(np.ascontiguousarray(x), np.ascontiguousarray(dy, dtype=x.dtype), weight_shape, a)
