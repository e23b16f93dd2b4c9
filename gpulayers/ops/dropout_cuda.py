"""Dropout on the GPU: the launcher of ``cuda_kernels/dropout.cu``.

One launch draws the mask from a counter-based generator (Philox4x32-10) and applies it; backward
draws it again in its one launch, so no mask is kept between the two (channel dropout: one launch
draws the per-channel mask, which the caller multiplies in). The
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

__all__ = ["dropout_backward", "dropout_forward", "dropout_mask", "supported"]

_FILE = "dropout.cu"


def supported(x: Any, *, contiguous: bool = True) -> bool:
    """True for a float32/float64 CuPy array, C-contiguous unless ``contiguous`` is False (the
    mask alone never reads ``x``)."""
    if not backend.is_cuda_array(x) or np.dtype(x.dtype).name not in kernels.KERNEL_DTYPES:
        return False
    return bool(x.flags.c_contiguous) or not contiguous


def _launch(kernel: str, x: Any, n: int, arrays: tuple, p: float, draw: tuple | None = None) -> tuple:
    """One launch of ``kernel`` over ``n`` elements: at ``draw`` (a forward's ``(state,
    increment)``), else at the device's next generator offset. Returns the draw."""
    dtype = x.dtype
    state, increment = backend.philox_next(x.device.id) if draw is None else draw
    args = (*arrays, np.int64(n), state, np.int64(increment), dtype.type(p), dtype.type(1.0 / (1.0 - p)))
    kernels.launch(_FILE, kernel, dtype, (n + 3) // 4, args)
    return state, increment


def dropout_forward(x: Any, p: float) -> tuple[Any, tuple]:
    """``(y, draw)``: ``x`` times the scaled mask (0 or ``1 / (1 - p)``), for 0 < p < 1, and the
    ``(state, increment)`` it was drawn at, which :func:`dropout_backward` and
    :func:`dropout_mask` take to draw the same mask again (it is not stored)."""
    xp = backend.get_array_module(x)
    with backend.device_scope(x):
        y = xp.empty_like(x)
        draw = _launch("dropout_apply_kernel", x, int(x.size), (x, y), p)
    return y, draw


def dropout_backward(dy: Any, draw: tuple, p: float) -> Any:
    """``dy`` times the mask of the forward that returned ``draw`` (``dy`` C-contiguous, in the
    forward's dtype): one launch."""
    xp = backend.get_array_module(dy)
    with backend.device_scope(dy):
        dx = xp.empty_like(dy)
        _launch("dropout_apply_kernel", dy, int(dy.size), (dy, dx), p, draw)
    return dx


def dropout_mask(x: Any, shape: tuple[int, ...], p: float, draw: tuple | None = None) -> Any:
    """The scaled mask alone, of ``shape`` in ``x``'s dtype on ``x``'s device, for 0 < p < 1: drawn
    at the next offset (channel dropout), or again at a forward's ``draw``."""
    xp = backend.get_array_module(x)
    with backend.device_scope(x):
        mask = xp.empty(shape, dtype=x.dtype)
        _launch("dropout_mask_kernel", x, int(mask.size), (mask,), p, draw)
    return mask
