"""The affine map ``y = x @ weight.T + bias`` over the last axis (PyTorch's ``F.linear``).

One xp-generic implementation: ``matmul`` is BLAS on NumPy and cuBLAS on CuPy. On CuPy, when
:func:`gpulayers.cuda.set_conv_algorithm` selects implicit GEMM (the default), the products run
on the implicit-GEMM kernels instead (a linear layer is a 1x1 convolution of a 1x1 image), so a
training step makes no cuBLAS call and can be captured as a CUDA graph. On NumPy, products
large enough to share run block by block over the threads of :mod:`gpulayers.threads` (rows of
the batch, or rows of the weight gradient), each block one single-threaded GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, threads
from .._checks import check_channels, check_floating, check_grad, check_same_device

__all__ = ["linear_forward", "linear_backward", "LinearCache"]


@dataclass(frozen=True, slots=True)
class LinearCache:
    """What :func:`linear_backward` needs; ``name`` is who ran forward (for its messages)."""

    x: Any
    weight: Any
    has_bias: bool
    igemm: bool  # the products ran on the implicit-GEMM kernels
    name: str


# Multiply-adds of one block's GEMM on NumPy: large enough for BLAS to run near its peak.
BLOCK_MACS = 1 << 24


def _blockwise(*arrays: Any) -> bool:
    """NumPy arrays of one floating dtype: the products run block by block (see :func:`_rows_times`)."""
    first = arrays[0]
    return all(type(a) is np.ndarray and a.dtype == first.dtype for a in arrays) and first.dtype.kind == "f"


def _rows_times(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D ``a``, block by block over the rows of ``a``."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)

    def block(start: int, stop: int) -> None:
        np.matmul(a[start:stop], b, out=out[start:stop])

    threads.run_blocks(block, a.shape[0], a.shape[1] * b.shape[1], BLOCK_MACS)
    return out


def _implicit_gemm(x: Any) -> bool:
    """Whether this CuPy array's products go to the implicit-GEMM kernels rather than cuBLAS."""
    if not backend.is_cuda_array(x) or x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
        return False
    from .. import cuda  # noqa: PLC0415

    chosen = cuda.get_conv_algorithm()
    return chosen in ("implicit_gemm", "direct") or (chosen == "auto" and cuda.DEFAULT_GEMM == "implicit_gemm")


def _check_arrays(name: str, x: Any, weight: Any, bias: Any) -> None:
    """Floating arrays on one device and dtype: x (*, in), weight (out, in), bias (out,) or None."""
    check_floating(name, x)
    check_floating(name + " weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D weight (out_features, in_features), got shape {tuple(weight.shape)}")
    if x.ndim < 1:
        raise ValueError(f"{name}: expected an input of shape (*, {weight.shape[1]}), got a 0-D array")
    check_channels(name, x, weight.shape[1], axis=-1, what="features (last axis)")
    check_same_device(name, x, weight)
    if bias is not None:
        check_floating(name + " bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"{name}: expected a bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        check_same_device(name, x, bias, "bias")


def linear_forward(x: Any, weight: Any, bias: Any = None, *, name: str = "linear") -> tuple[Any, LinearCache]:
    """``y = x @ weight.T + bias``.

    Args:
        x: input of shape (*, in_features); any leading dimensions (none for a single vector).
        weight: (out_features, in_features).
        bias: (out_features,), or None.
        name: who is calling, for error messages (a layer passes its class name).

    Returns:
        ``(y, cache)``.

    Shape:
        - x: (*, in_features)
        - y: (*, out_features)
    """
    _check_arrays(name, x, weight, bias)
    if _implicit_gemm(x) and weight.dtype == x.dtype:
        from . import conv2d_igemm_cuda  # noqa: PLC0415 - GPU only

        lead, out_features = tuple(x.shape[:-1]), int(weight.shape[0])
        x2 = x.reshape(int(np.prod(lead)), int(x.shape[-1]))
        y = conv2d_igemm_cuda.linear_forward(x2, weight, bias).reshape(*lead, out_features)
        return y, LinearCache(x, weight, bias is not None, True, name)
    if _blockwise(x, weight) and x.ndim > 1:
        y = _rows_times(x.reshape(-1, x.shape[-1]), weight.T).reshape(*x.shape[:-1], weight.shape[0])
    else:
        y = x @ weight.T
    if bias is not None:
        y += bias
    return y, LinearCache(x, weight, bias is not None, False, name)


def linear_backward(dy: Any, cache: LinearCache, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients of :func:`linear_forward`.

    Args:
        dy: gradient w.r.t. the output, shape (*, out_features).
        cache: the cache returned by the forward pass.
        input_grad: compute ``dx``; False skips it (the input needs no gradient).

    Returns:
        ``(dx, dweight, dbias)``; ``dbias`` is None when the forward had no bias, ``dx`` without
        ``input_grad``.
    """
    if not isinstance(cache, LinearCache):
        raise TypeError(f"linear.backward: expected the cache returned by linear_forward, got {type(cache).__name__}")
    x, weight = cache.x, cache.weight
    out_features, in_features = weight.shape
    check_grad(cache.name, dy, tuple(x.shape[:-1]) + (out_features,), x)
    rows = int(np.prod(x.shape[:-1]))  # explicit, so that empty inputs reshape too
    dy2 = dy.reshape(rows, out_features)
    x2 = x.reshape(rows, in_features)
    if cache.igemm:
        from . import conv2d_igemm_cuda  # noqa: PLC0415

        dx2, dweight, dbias = conv2d_igemm_cuda.linear_backward(
            dy2.astype(x.dtype, copy=False), x2, weight, need_input_grad=input_grad, bias=cache.has_bias
        )
        return (dx2.reshape(x.shape) if input_grad else None), dweight, dbias
    if _blockwise(dy2, x2, weight):
        dx = _rows_times(dy2, weight).reshape(x.shape) if input_grad else None
        dweight = _rows_times(dy2.T, x2)  # rows of dW: one output feature each
    else:
        dx = dy @ weight if input_grad else None
        dweight = dy2.T @ x2
    dbias = dy2.sum(axis=0) if cache.has_bias else None
    return dx, dweight, dbias
