"""Dropout on the GPU: the launcher of ``cuda_kernels/dropout.cu``.

One launch draws the mask from a counter-based generator (Philox4x32-10) and applies it (channel
dropout: one launch draws the per-channel mask, which the caller multiplies in). The
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

__all__ = ["dropout_forward", "dropout_mask", "supported"]

_FILE = "dropout.cu"


def supported(x: Any, *, contiguous: bool = True) -> bool:
    """True for a float32/float64 CuPy array, C-contiguous unless ``contiguous`` is False (the
    mask alone never reads ``x``)."""
    if not backend.is_cuda_array(x) or np.dtype(x.dtype).name not in kernels.KERNEL_DTYPES:
        return False
    return bool(x.flags.c_contiguous) or not contiguous


def _launch(kernel: str, x: Any, n: int, arrays: tuple, p: float) -> None:
    """One launch of ``kernel`` over ``n`` elements at the device's next generator offset."""
    dtype = x.dtype
    state, increment = backend.philox_next(x.device.id)
    args = (*arrays, np.int64(n), state, np.int64(increment), dtype.type(p), dtype.type(1.0 / (1.0 - p)))
    kernels.launch(_FILE, kernel, dtype, (n + 3) // 4, args)


def dropout_forward(x: Any, p: float) -> tuple[Any, Any]:
    """``(y, mask)``: the scaled mask (0 or ``1 / (1 - p)``) and ``x * mask``, for 0 < p < 1."""
    xp = backend.get_array_module(x)
    with backend.device_scope(x):
        y = xp.empty_like(x)
        mask = xp.empty_like(x)
        _launch("dropout_forward_kernel", x, int(x.size), (x, y, mask), p)
    return y, mask


def dropout_mask(x: Any, shape: tuple[int, ...], p: float) -> Any:
    """The scaled mask alone, of ``shape`` in ``x``'s dtype on ``x``'s device (channel dropout), for
    0 < p < 1: the values :func:`dropout_forward` would draw for that many elements."""
    xp = backend.get_array_module(x)
    with backend.device_scope(x):
        mask = xp.empty(shape, dtype=x.dtype)
        _launch("dropout_mask_kernel", x, int(mask.size), (mask,), p)
    return mask
