"""ReLU on the GPU: the launchers of ``cuda_kernels/activation.cu`` (one launch each way).

Called by :mod:`gpulayers.ops.activation` for CuPy arrays, after validation. Written against
the arrays' module, so the same launchers run on NumPy arrays when
:func:`gpulayers.kernels.get_function` is replaced by the CPU emulation of the kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend, kernels

__all__ = ["relu_backward", "relu_forward", "supported"]

_FILE = "activation.cu"


def supported(*arrays: Any) -> bool:
    """True when every array is a float32/float64 CuPy array on the first one's device, with its dtype."""
    first = arrays[0]
    if not backend.is_cuda_array(first) or np.dtype(first.dtype).name not in kernels.KERNEL_DTYPES:
        return False
    return all(type(a) is type(first) and a.dtype == first.dtype and a.device == first.device for a in arrays[1:])


def relu_forward(x: Any) -> Any:
    """``max(x, 0)`` in one launch (NaN kept); returns a new C-contiguous array."""
    xp = backend.get_array_module(x)
    with backend.device_scope(x):
        x = xp.ascontiguousarray(x)
        y = xp.empty(x.shape, dtype=x.dtype)
        kernels.launch(_FILE, "relu_forward_kernel", x.dtype, int(x.size), (x, y, np.int64(x.size)))
    return y


def relu_backward(dy: Any, y: Any) -> Any:
    """``dy`` where the saved output ``y`` is > 0 (or NaN), else 0, in one launch."""
    xp = backend.get_array_module(dy)
    with backend.device_scope(y):
        dy = xp.ascontiguousarray(dy)
        y = xp.ascontiguousarray(y)
        dx = xp.empty(y.shape, dtype=y.dtype)
        kernels.launch(_FILE, "relu_backward_kernel", y.dtype, int(y.size), (dy, y, dx, np.int64(y.size)))
    return dx
