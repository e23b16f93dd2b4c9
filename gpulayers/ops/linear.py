"""The affine map ``y = x @ weight.T + bias`` over the last axis (PyTorch's ``F.linear``).

One xp-generic implementation: ``matmul`` is BLAS on NumPy and cuBLAS on CuPy. On CuPy, when
:func:`gpulayers.cuda.set_conv_algorithm` selects implicit GEMM (the default), the products run
on the implicit-GEMM kernels instead (a linear layer is a 1x1 convolution of a 1x1 image), so a
training step makes no cuBLAS call and can be captured as a CUDA graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from .._checks import check_floating, check_grad, check_same_device

__all__ = ["linear_forward", "linear_backward"]


def _implicit_gemm(x: Any) -> bool:
    """Whether this CuPy array's products go to the implicit-GEMM kernels rather than cuBLAS."""
    if not backend.is_cuda_array(x) or x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
        return False
    from .. import cuda  # noqa: PLC0415

    chosen = cuda.get_conv_algorithm()
    return chosen in ("implicit_gemm", "direct") or (chosen == "auto" and cuda.DEFAULT_GEMM == "implicit_gemm")


def _check_arrays(x: Any, weight: Any, bias: Any) -> None:
    """Floating arrays on one device and dtype: x (*, in), weight (out, in), bias (out,) or None."""
    check_floating("linear", x)
    if x.ndim < 1:
        raise ValueError("linear: expected an input of shape (*, in_features), got a 0-D array")
    check_floating("linear weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"linear: expected a 2-D weight (out_features, in_features), got shape {tuple(weight.shape)}")
    check_same_device("linear", x, weight)
    if bias is not None:
        check_floating("linear bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"linear: expected a bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        check_same_device("linear", x, bias, "bias")


def linear_forward(x: Any, weight: Any, bias: Any = None) -> tuple[Any, dict]:
    """``y = x @ weight.T + bias``.

    Args:
        x: input of shape (*, in_features); any leading dimensions (none for a single vector).
        weight: (out_features, in_features).
        bias: (out_features,), or None.

    Returns:
        ``(y, cache)``.

    Shape:
        - x: (*, in_features)
        - y: (*, out_features)
    """
    _check_arrays(x, weight, bias)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: expected input with {weight.shape[1]} features on the last axis, got shape {tuple(x.shape)}"
        )
    if _implicit_gemm(x) and weight.dtype == x.dtype:
        from . import conv2d_igemm_cuda  # noqa: PLC0415 - GPU only

        lead, out_features = tuple(x.shape[:-1]), int(weight.shape[0])
        x2 = x.reshape(int(np.prod(lead)), int(x.shape[-1]))
        y = conv2d_igemm_cuda.linear_forward(x2, weight, bias).reshape(*lead, out_features)
        return y, {"x": x, "weight": weight, "has_bias": bias is not None, "igemm": True}
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, {"x": x, "weight": weight, "has_bias": bias is not None}


def linear_backward(dy: Any, cache: dict) -> tuple[Any, Any, Any]:
    """Gradients of :func:`linear_forward`.

    Args:
        dy: gradient w.r.t. the output, shape (*, out_features).
        cache: the cache returned by the forward pass.

    Returns:
        ``(dx, dweight, dbias)``; ``dbias`` is None when the forward had no bias.
    """
    if not isinstance(cache, dict) or "x" not in cache or "weight" not in cache:
        raise TypeError(f"linear.backward: expected the cache returned by linear_forward, got {type(cache).__name__}")
    x, weight = cache["x"], cache["weight"]
    out_features, in_features = weight.shape
    check_grad("linear", dy, tuple(x.shape[:-1]) + (out_features,), x)
    rows = int(np.prod(x.shape[:-1]))  # explicit, so that empty inputs reshape too
    dy2 = dy.reshape(rows, out_features)
    x2 = x.reshape(rows, in_features)
    if cache.get("igemm"):
        from . import conv2d_igemm_cuda  # noqa: PLC0415

        dx2, dweight = conv2d_igemm_cuda.linear_backward(dy2.astype(x.dtype, copy=False), x2, weight)
        dx = dx2.reshape(x.shape)
    else:
        dx = dy @ weight
        dweight = dy2.T @ x2
    dbias = dy2.sum(axis=0) if cache["has_bias"] else None
    return dx, dweight, dbias
