"""2-D convolution (cross-correlation, as in PyTorch): forward and backward.

``y, cache = conv2d_forward(x, weight, bias, stride, padding, dilation, groups)`` and
``dx, dw, db = conv2d_backward(dy, cache)``. NumPy arrays run the im2col/GEMM code below,
CuPy arrays the CUDA kernels behind :mod:`gpulayers.ops.conv2d_cuda`.

The CPU path builds the column matrix with one strided copy per kernel offset (never per
pixel), multiplies it with the weight through BLAS, and in backward scatters the column
gradient back with one strided ``+=`` per kernel offset (the positions of a single offset
never repeat, so the in-place add is exact). The columns are laid out per sample or for the
whole batch at once, whichever moves less memory for the shape at hand (see
``_use_sample_major``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, threads
from .._checks import check_floating, check_grad, check_same_device, conv_size, grad_marker, pair
from ._window import offset_views

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

# Sample-major columns while C/groups*kh*kw times this stays below OH*OW (see _use_sample_major).
SAMPLE_MAJOR_MAX_RATIO = 2.0
# Forward takes per-sample GEMMs from this many output pixels on.
FORWARD_SAMPLE_MAJOR_MIN_PIXELS = 128


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
    check_floating(name, x)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    check_floating(name + " weight", weight)
    if weight.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D weight (out, in/groups, kh, kw), got shape {tuple(weight.shape)}")
    check_same_device(name, x, weight)
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
    if bias is not None:
        check_same_device(name, x, bias, what="bias")
        if tuple(bias.shape) != (out_channels,):
            raise ValueError(f"{name}: expected a bias of shape ({out_channels},), got {tuple(bias.shape)}")
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
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
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
        y, inner = _forward_cpu(np.ascontiguousarray(x), np.ascontiguousarray(weight), bias, a)
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
        dx, dw, db = _backward_cpu(np.ascontiguousarray(dy, dtype=cache.x_like.dtype), cache.inner, input_grad)
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


# -- CPU ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CpuCache:
    x: np.ndarray  # the input (its columns are rebuilt in backward, not kept)
    weight: np.ndarray
    has_bias: bool
    a: ConvArgs


def _use_sample_major(rows: int, pixels: int) -> bool:
    """Column layout: per-sample GEMMs, or one GEMM per group over the whole batch.

    Sample-major columns ``(N, C*kh*kw, OH*OW)`` give the output in NCHW directly but leave
    ``dW`` as N partial products to sum (N*O*rows values); channel-major columns
    ``(C*kh*kw, N*OH*OW)`` make every product one large GEMM at the price of transposing the
    output and its gradient (N*O*OH*OW values each). Pick whichever moves less memory.
    """
    return rows * SAMPLE_MAJOR_MAX_RATIO < pixels


def _forward_sample_major(rows: int, pixels: int) -> bool:
    """Forward needs no ``dW``: per-sample GEMMs (NCHW output, no transpose) unless the images are tiny."""
    return _use_sample_major(rows, pixels) or pixels >= FORWARD_SAMPLE_MAJOR_MIN_PIXELS


def _forward_cpu(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, a: ConvArgs):
    n = x.shape[0]
    out_c, cg, kh, kw = weight.shape
    (oh, ow), g = a.out_size, a.groups
    rows, pixels = cg * kh * kw, oh * ow
    sample_major = _forward_sample_major(rows, pixels)
    cols = _im2col_cpu(x, (kh, kw), a, sample_major)
    w_mat = weight.reshape(g, out_c // g, rows)
    y = np.empty((n, out_c, oh, ow), dtype=x.dtype)
    if sample_major:
        # (G, O/G, rows) @ (N, G, rows, OH*OW) -> (N, G, O/G, OH*OW): NCHW directly.
        np.matmul(w_mat, cols.reshape(n, g, rows, pixels), out=y.reshape(n, g, out_c // g, pixels))
        if bias is not None:
            y += bias.reshape(1, out_c, 1, 1)
    else:
        # (G, O/G, rows) @ (G, rows, N*OH*OW) -> (O, N, OH, OW), then to NCHW (adding the bias on the way).
        prod = threads.workspace("conv2d.product", (g, out_c // g, n * pixels), x.dtype)
        np.matmul(w_mat, cols.reshape(g, rows, n * pixels), out=prod)
        y_t = prod.reshape(out_c, n, oh, ow).transpose(1, 0, 2, 3)
        if bias is not None:
            np.add(y_t, bias.reshape(1, out_c, 1, 1), out=y)
        else:
            np.copyto(y, y_t)
    return y, _CpuCache(x, weight, bias is not None, a)


def _backward_cpu(dy: np.ndarray, cache: _CpuCache, input_grad: bool = True):
    weight, a, x = cache.weight, cache.a, cache.x
    _, cg, kh, kw = weight.shape
    sample_major = _use_sample_major(cg * kh * kw, a.out_size[0] * a.out_size[1])
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    grad = None if sample_major else _channel_major(dy, a.groups)  # shared by both products
    cols = _im2col_cpu(x, (kh, kw), a, sample_major)
    dw = _weight_grad_cpu(cols, dy, weight.shape, a, sample_major, grad)
    # The columns are no longer needed: their scratch array takes the column gradient.
    dx = _input_grad_cpu(dy, weight, x.shape, a, sample_major, grad) if input_grad else None
    return dx, dw, db


def _channel_major(dy: np.ndarray, groups: int) -> np.ndarray:
    """``dy`` as ``(G, O/G, N*OH*OW)``: the output gradient in the channel-major column order."""
    n, out_c = dy.shape[:2]
    grad = threads.workspace("conv2d.grad", (out_c, n) + dy.shape[2:], dy.dtype)
    np.copyto(grad, dy.transpose(1, 0, 2, 3))
    return grad.reshape(groups, out_c // groups, -1)


def _weight_grad_cpu(
    cols: np.ndarray, dy: np.ndarray, weight_shape: tuple, a: ConvArgs, sample_major: bool, grad: Any = None
):
    """``dW`` from the columns of the input (:func:`_im2col_cpu`) and the output gradient.

    ``grad``: ``dy`` already in channel-major order (:func:`_channel_major`), when the caller has it.
    """
    n = dy.shape[0]
    out_c, cg, kh, kw = weight_shape
    g, rows, pixels = a.groups, cg * kh * kw, a.out_size[0] * a.out_size[1]
    if sample_major:
        grad = dy.reshape(n, g, out_c // g, pixels)
        dw = np.matmul(grad, cols.reshape(n, g, rows, pixels).transpose(0, 1, 3, 2)).sum(axis=0)
    else:
        grad = _channel_major(dy, g) if grad is None else grad
        dw = np.matmul(grad, cols.reshape(g, rows, n * pixels).transpose(0, 2, 1))
    return dw.reshape(weight_shape)


def _input_grad_cpu(
    dy: np.ndarray, weight: np.ndarray, x_shape: tuple, a: ConvArgs, sample_major: bool, grad: Any = None
):
    """``dx``: the column gradient ``W^T dy`` by GEMM, then col2im (``grad`` as in :func:`_weight_grad_cpu`)."""
    n, c = x_shape[:2]
    out_c, cg, kh, kw = weight.shape
    g, (oh, ow) = a.groups, a.out_size
    rows, pixels = cg * kh * kw, oh * ow
    w_t = weight.reshape(g, out_c // g, rows).transpose(0, 2, 1)
    if not sample_major and a.stride == (1, 1):
        return _input_grad_wide(dy, w_t, x_shape, (kh, kw), a)
    if sample_major:
        dcols = threads.workspace("conv2d.cols", (n, c, kh, kw, oh, ow), dy.dtype)
        np.matmul(w_t, dy.reshape(n, g, out_c // g, pixels), out=dcols.reshape(n, g, rows, pixels))
    else:
        grad = _channel_major(dy, g) if grad is None else grad
        dcols = threads.workspace("conv2d.cols", (c, kh, kw, n, oh, ow), dy.dtype)
        np.matmul(w_t, grad, out=dcols.reshape(g, rows, n * pixels))
    return _col2im_cpu(dcols, x_shape, (kh, kw), a, sample_major)


def _input_grad_wide(dy: np.ndarray, w_t: np.ndarray, x_shape: tuple, kernel: tuple[int, int], a: ConvArgs):
    """``dx`` of a stride-1 convolution, channel-major: col2im by contiguous adds over whole rows.

    The column gradient is computed on output rows as wide as the padded image (the extra
    columns of ``dy`` are zero, so their column gradients are exact zeros). Then every kernel
    offset adds one contiguous run per image plane into the flat padded image, at a fixed shift
    (``i*dh*Wp + j*dw``), instead of short strided rows. The zeros of the last runs spill at most
    ``(kw-1)*dw`` values past a plane, into the next plane's first values or a slack at the end.
    """
    n, c, h, w = x_shape
    g, out_per_group = w_t.shape[0], w_t.shape[2]
    (kh, kw), (oh, ow), (ph, pw), (dh, dw) = kernel, a.out_size, a.padding, a.dilation
    hp, wp = h + 2 * ph, w + 2 * pw
    grad = threads.workspace("conv2d.grad_wide", (dy.shape[1], n, oh, wp), dy.dtype)
    grad[..., ow:] = 0
    np.copyto(grad[..., :ow], dy.transpose(1, 0, 2, 3))
    dcols = threads.workspace("conv2d.cols", (c, kh, kw, n, oh, wp), dy.dtype)
    np.matmul(w_t, grad.reshape(g, out_per_group, -1), out=dcols.reshape(g, w_t.shape[1], -1))
    plane, span = hp * wp, oh * wp
    flat = threads.workspace("conv2d.image", (c * n * plane + (kw - 1) * dw,), dy.dtype)
    flat.fill(0)
    item = flat.itemsize
    for i in range(kh):
        for j in range(kw):
            shift = i * dh * wp + j * dw
            runs = np.lib.stride_tricks.as_strided(flat[shift:], (c, n, span), (n * plane * item, plane * item, item))
            runs += dcols[:, i, j].reshape(c, n, span)
    image = flat[: c * n * plane].reshape(c, n, hp, wp)
    return np.array(image[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3), order="C")


def _padded_image(x: np.ndarray, a: ConvArgs, sample_major: bool) -> np.ndarray:
    """``x`` zero-padded, with the batch and channel axes in the order of the columns (a scratch array)."""
    n, c, h, w = x.shape
    ph, pw = a.padding
    if sample_major and not (ph or pw):
        return x
    image = threads.workspace(
        "conv2d.image", (n, c, h + 2 * ph, w + 2 * pw) if sample_major else (c, n, h + 2 * ph, w + 2 * pw), x.dtype
    )
    image[:, :, :ph] = 0
    image[:, :, h + ph :] = 0
    image[:, :, ph : h + ph, :pw] = 0
    image[:, :, ph : h + ph, w + pw :] = 0
    image[:, :, ph : ph + h, pw : pw + w] = x if sample_major else x.transpose(1, 0, 2, 3)
    return image


def _im2col_cpu(x: np.ndarray, kernel: tuple[int, int], a: ConvArgs, sample_major: bool) -> np.ndarray:
    """The columns ``(N, C, kh, kw, OH, OW)`` (sample-major) or ``(C, kh, kw, N, OH, OW)`` of ``x``.

    One copy from a strided view of the padded image (every window of every offset), into a
    scratch array that stays valid until the next convolution of the same shape on this thread.
    """
    n, c = x.shape[:2]
    (oh, ow), (sh, sw), (dh, dw) = a.out_size, a.stride, a.dilation
    image = _padded_image(x, a, sample_major)
    s0, s1, s2, s3 = image.strides
    windows = np.lib.stride_tricks.as_strided(
        image, (image.shape[0], image.shape[1], *kernel, oh, ow), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw)
    )
    if sample_major:
        cols = threads.workspace("conv2d.cols", (n, c, *kernel, oh, ow), x.dtype)
        np.copyto(cols, windows)
    else:
        cols = threads.workspace("conv2d.cols", (c, *kernel, n, oh, ow), x.dtype)
        np.copyto(cols, windows.transpose(0, 2, 3, 1, 4, 5))
    return cols


def _col2im_cpu(dcols: np.ndarray, x_shape: tuple, kernel: tuple[int, int], a: ConvArgs, sample_major: bool):
    """The image gradient ``(N, C, H, W)`` from column gradients laid out as :func:`_im2col_cpu`'s."""
    n, c, h, w = x_shape
    ph, pw = a.padding
    # Each offset's positions are distinct, so a strided += per offset is exact.
    image = threads.workspace(
        "conv2d.image", (n, c, h + 2 * ph, w + 2 * pw) if sample_major else (c, n, h + 2 * ph, w + 2 * pw), dcols.dtype
    )
    image.fill(0)
    for i, j, view in offset_views(image, kernel, a.stride, a.dilation, a.out_size):
        view += dcols[:, :, i, j] if sample_major else dcols[:, i, j]
    inner = image[:, :, ph : ph + h, pw : pw + w]
    return np.array(inner if sample_major else inner.transpose(1, 0, 2, 3), order="C")  # a copy: never the scratch


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
    _, cg, kh, kw = weight.shape
    sample_major = _use_sample_major(cg * kh * kw, a.out_size[0] * a.out_size[1])
    return _input_grad_cpu(np.ascontiguousarray(dy), np.ascontiguousarray(weight), input_shape, a, sample_major)


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
    _, cg, kh, kw = weight_shape
    sample_major = _use_sample_major(cg * kh * kw, a.out_size[0] * a.out_size[1])
    cols = _im2col_cpu(np.ascontiguousarray(x), (kh, kw), a, sample_major)
    return _weight_grad_cpu(cols, np.ascontiguousarray(dy, dtype=x.dtype), weight_shape, a, sample_major)
