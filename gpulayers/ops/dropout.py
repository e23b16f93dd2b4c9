"""Inverted dropout: zero each element with probability ``p``, scale the rest by ``1 / (1 - p)``.

The mask comes from the library's generator for the array's device (``backend.rng_for``), so
``gl.manual_seed`` makes it reproducible on the CPU and on the GPU.
"""

from __future__ import annotations

import numbers
from typing import Any

from .. import backend

__all__ = ["dropout_forward", "dropout_backward", "check_p"]


def check_p(name: str, p: Any) -> float:
    """``p`` as a float in [0, 1], or a ValueError naming ``name``."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name}: expected the dropout probability p to be a number, got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name}: expected the dropout probability p in [0, 1], got {p}")
    return float(p)


def _uniform(x: Any) -> Any:
    """U[0, 1) samples of ``x``'s shape and dtype, from the generator of ``x``'s device."""
    xp = backend.get_array_module(x)
    if backend.is_cuda_array(x):
        with xp.cuda.Device(x.device.id):
            return backend.rng_for(xp, x.device.id).random(x.shape, dtype=x.dtype)
    return backend.rng_for(xp).random(x.shape, dtype=x.dtype)


def dropout_forward(x: Any, p: float, training: bool) -> tuple[Any, dict]:
    """Inverted dropout.

    Args:
        x: input of any shape (floating).
        p: probability of zeroing an element, in [0, 1]; ``p = 1`` zeroes everything.
        training: in eval mode (False) the op is the identity.

    Returns:
        ``(y, cache)``; ``y`` has the shape and dtype of ``x``. ``cache["mask"]`` holds the
        scaled mask (0 or ``1 / (1 - p)`` per element), or None for the identity.

    Shape:
        - x: (*)
        - y: same as x
    """
    p = check_p("dropout", p)
    if not training or p == 0.0:
        return x, {"mask": None}
    xp = backend.get_array_module(x)
    if p == 1.0:
        mask = xp.zeros(x.shape, dtype=x.dtype)
    else:
        # keep with probability 1 - p: u ~ U[0, 1) is >= p with exactly that probability
        mask = (_uniform(x) >= p).astype(x.dtype) * (1.0 / (1.0 - p))
    return x * mask, {"mask": mask}


def dropout_backward(dy: Any, cache: dict) -> Any:
    """Gradient of :func:`dropout_forward`: ``dy`` times the same scaled mask."""
    mask = cache["mask"]
    if mask is None:
        return dy
    return dy * mask
