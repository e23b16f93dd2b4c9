"""Dropout on the GPU: the launcher of ``cuda_kernels/dropout.cu``.

One launch draws the mask from a counter-based generator (Philox4x32-10) and applies it. The
mask is a function of the device's ``(seed, offset)`` (:func:`gpulayers.backend.philox_next`,
which advances the offset by one per launch) and of the element index only, so it is
reproducible from the random state that ``manual_seed`` sets and checkpoints store. The kernel
reads seed and offset base from a device array and adds a per-launch increment, so a CUDA graph
of the launch draws fresh masks at each replay (the base is rewritten before each one).

Written against the arrays' module, so the same launcher runs on NumPy arrays when
:func:`gpulayers.kernels.get_function` is replaced by the CPU emulation of the kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend, kernels

__all__ = ["dropout_forward", "supported"]

_FILE = "dropout.cu"


def supported(x: Any) -> bool:
    """True for a C-contiguous float32/float64 CuPy array."""
    return backend.is_cuda_array(x) and np.dtype(x.dtype).name in kernels.KERNEL_DTYPES and bool(x.flags.c_contiguous)


def dropout_forward(x: Any, p: float) -> tuple[Any, Any]:
    """``(y, mask)``: the scaled mask (0 or ``1 / (1 - p)``) and ``x * mask``, for 0 < p < 1."""
    xp = backend.get_array_module(x)
    dtype = x.dtype
    with backend.device_scope(x):
        state, increment = backend.philox_next(x.device.id)
        y = xp.empty_like(x)
        mask = xp.empty_like(x)
        n = int(x.size)
        args = (x, y, mask, np.int64(n), state, np.int64(increment), dtype.type(p), dtype.type(1.0 / (1.0 - p)))
        kernels.launch(_FILE, "dropout_forward_kernel", dtype, (n + 3) // 4, args)
    return y, mask
