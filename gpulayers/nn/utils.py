"""Gradient utilities (``torch.nn.utils``): :func:`clip_grad_norm_`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import backend
from .module import Parameter

__all__ = ["clip_grad_norm_"]


def _norm_type(value: Any) -> float:
    if isinstance(value, str) and value.lower() == "inf":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"clip_grad_norm_: expected norm_type to be a number or 'inf', got {value!r}")
    return float(value)


def _vector_norm(xp, arr: Any, p: float) -> Any:
    """``torch.linalg.vector_norm(arr, p)`` as a 0-d array: inf, -inf, 0 (count of non-zeros) or any p."""
    a = xp.abs(arr.reshape(-1))
    if a.size == 0:
        return xp.zeros((), dtype=arr.dtype)
    if p == math.inf:
        return a.max()
    if p == -math.inf:
        return a.min()
    if p == 0:
        return (a != 0).sum().astype(arr.dtype)
    if p == 1:
        return a.sum()
    if p == 2:
        return xp.sqrt(xp.dot(a, a))
    return (a**p).sum() ** (1.0 / p)


def clip_grad_norm_(
    parameters: Parameter | Iterable[Parameter],
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
) -> Any:
    """Scale the gradients in place so that their joint norm is at most ``max_norm``, as PyTorch does.

    The total norm is the ``norm_type``-norm of the gradients' individual norms (all gradients
    seen as one vector); every gradient is multiplied by ``min(1, max_norm / (total + 1e-6))``.
    Parameters without a gradient are skipped.

    Args:
        parameters: a :class:`Parameter` or an iterable of them (e.g. ``model.parameters()``).
        max_norm: the largest allowed norm.
        norm_type: the p of the p-norm; ``float("inf")`` or ``"inf"`` for the largest magnitude.
            Defaults to 2.
        error_if_nonfinite: raise a ``RuntimeError`` when the total norm is NaN or infinite
            (this reads the norm on the host). Defaults to False.

    Returns:
        The total norm before clipping, a 0-d array on the gradients' device (``float()`` it to
        read it); 0.0 when no parameter has a gradient.
    """
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    params = list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"clip_grad_norm_: expected Parameters, got {type(p).__name__} at position {i}")
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or math.isnan(max_norm):
        raise ValueError(f"clip_grad_norm_: expected max_norm to be a number, got {max_norm!r}")
    p_norm = _norm_type(norm_type)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return np.zeros((), dtype=np.float32)
    devices = {backend.device_of(g) for g in grads}
    if len(devices) > 1:
        raise RuntimeError(f"clip_grad_norm_: the gradients are on several devices {sorted(devices)}")
    xp = backend.get_array_module(grads[0])
    norms = [_vector_norm(xp, g, p_norm) for g in grads]
    dtype = np.result_type(*[g.dtype for g in grads])
    total = _vector_norm(xp, xp.stack([n.astype(dtype) for n in norms]), p_norm)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is non-finite ({float(total)}), "
            "so they cannot be clipped; pass error_if_nonfinite=False to clip anyway"
        )
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef.astype(g.dtype)
    return total
