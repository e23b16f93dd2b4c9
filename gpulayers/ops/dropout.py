"""Inverted dropout: zero each element with probability ``p``, scale the rest by ``1 / (1 - p)``.

On the CPU the mask comes from the library's generator (``backend.rng_for``); on the GPU from a
counter-based generator inside one fused kernel (:mod:`.dropout_cuda`), keyed by the device's
``(seed, offset)`` (channel dropout too, for its per-channel mask). ``gl.manual_seed`` makes both
reproducible.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from .. import backend
from .._checks import check_floating, check_grad, check_input
from . import dropout_cuda

__all__ = [
    "DropoutCache",
    "check_p",
    "dropout2d_backward",
    "dropout2d_forward",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
]


@dataclass(frozen=True, slots=True)
class DropoutCache:
    """What backward needs: the scaled mask (0 or ``1 / (1 - p)`` per element), or, after the
    fused GPU kernel, the ``(state, increment)`` it drew the mask at (``draw``) and ``p``; neither
    for the identity. Use :func:`dropout_mask` to see the mask either way."""

    mask: Any
    y: Any  # the output: backward checks the gradient's shape and device against it
    name: str  # who ran forward, for backward's messages
    draw: tuple | None = None
    p: float = 0.0


def check_p(name: str, p: Any) -> float:
    """``p`` as a float in [0, 1], or a ValueError naming ``name``."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name}: expected the dropout probability p to be a number, got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name}: expected the dropout probability p in [0, 1], got {p}")
    return float(p)


def dropout_forward(x: Any, p: float, training: bool, *, name: str = "dropout") -> tuple[Any, DropoutCache]:
    """Inverted dropout.

    Args:
        x: input of any shape (floating).
        p: probability of zeroing an element, in [0, 1]; ``p = 1`` zeroes everything.
        training: in eval mode (False) the op is the identity.
        name: who is calling, for error messages (a layer passes its class name).

    Returns:
        ``(y, cache)``; ``y`` has the shape and dtype of ``x``. :func:`dropout_mask` of the
        cache gives the scaled mask (0 or ``1 / (1 - p)`` per element), or None for the identity.

    Shape:
        - x: (*)
        - y: same as x
    """
    check_floating(name, x)
    p = check_p(name, p)
    if not training or p == 0.0:
        return x, DropoutCache(None, x, name)
    if p < 1.0 and dropout_cuda.supported(x):
        y, draw = dropout_cuda.dropout_forward(x, p)
        return y, DropoutCache(None, y, name, draw, p)
    mask = _scaled_mask(x, p, tuple(x.shape))
    y = x * mask
    return y, DropoutCache(mask, y, name)


def _scaled_mask(x: Any, p: float, shape: tuple[int, ...]) -> Any:
    """0 with probability ``p``, else ``1 / (1 - p)``, of ``shape`` in ``x``'s dtype and device.

    On the GPU the fused kernel's counter-based generator draws it (no cuRAND, so a CUDA graph can
    hold it); on the CPU, or for a dtype the kernels lack, the device's generator
    (``backend.rng_for``).
    """
    xp = backend.get_array_module(x)
    if p == 1.0:
        return xp.zeros(shape, dtype=x.dtype)
    if dropout_cuda.supported(x, contiguous=False):
        return dropout_cuda.dropout_mask(x, shape, p)
    with backend.device_scope(x):
        dev = x.device.id if backend.is_cuda_array(x) else None
        u = xp.asarray(backend.rng_for(xp, dev).random(shape, dtype=x.dtype))  # host draws for a GPU x
        # keep with probability 1 - p: u ~ U[0, 1) is >= p with exactly that probability
        return (u >= p).astype(x.dtype) * (1.0 / (1.0 - p))


def dropout_mask(cache: DropoutCache) -> Any:
    """The scaled mask a forward applied (drawn again after the fused GPU kernel), or None for the identity."""
    if cache.draw is None:
        return cache.mask
    return dropout_cuda.dropout_mask(cache.y, tuple(cache.y.shape), cache.p, cache.draw)


def dropout_backward(dy: Any, cache: DropoutCache) -> Any:
    """Gradient of :func:`dropout_forward`: ``dy`` times the same scaled mask (after the fused GPU
    kernel, one launch that draws the mask again)."""
    check_grad(cache.name, dy, cache.y.shape, cache.y)
    if cache.draw is not None:
        if dy.dtype == cache.y.dtype and dy.flags.c_contiguous:
            return dropout_cuda.dropout_backward(dy, cache.draw, cache.p)
        return dy * dropout_mask(cache)
    if cache.mask is None:
        return dy
    return dy * cache.mask


def dropout2d_forward(x: Any, p: float, training: bool, *, name: str = "dropout2d") -> tuple[Any, DropoutCache]:
    """Channel dropout: zero whole channels with probability ``p``, scale the rest by ``1 / (1 - p)``.

    Args:
        x: ``(N, C, H, W)`` or unbatched ``(C, H, W)`` (floating).
        p: probability of zeroing a channel, in [0, 1].
        training: in eval mode (False) the op is the identity.
        name: who is calling, for error messages.

    Returns:
        ``(y, cache)``; ``cache.mask`` is the scaled mask of shape ``(N, C, 1, 1)`` (or
        ``(C, 1, 1)``), or None for the identity.

    Shape:
        - x: (N, C, H, W) or (C, H, W)
        - y: same as x
    """
    check_input(name, x, (3, 4), "(N, C, H, W) or (C, H, W)")
    p = check_p(name, p)
    if not training or p == 0.0:
        return x, DropoutCache(None, x, name)
    mask = _scaled_mask(x, p, tuple(x.shape[:-2]) + (1, 1))
    y = x * mask
    return y, DropoutCache(mask, y, name)


def dropout2d_backward(dy: Any, cache: DropoutCache) -> Any:
    """Gradient of :func:`dropout2d_forward`: ``dy`` times the same per-channel mask."""
    return dropout_backward(dy, cache)
