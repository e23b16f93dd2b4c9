"""Parameter initialisation with PyTorch's default distributions, from the library's seed."""

from __future__ import annotations

import math

import numpy as np

from .. import backend


def uniform(shape: tuple[int, ...], bound: float, dtype=np.float32) -> np.ndarray:
    """Samples of U(-bound, bound) from the library's CPU generator, drawn in float64."""
    return backend.cpu_rng().uniform(-bound, bound, size=shape).astype(dtype)


def fan_in(shape: tuple[int, ...]) -> int:
    """Inputs per output unit: ``in * kh * kw`` for a conv weight, ``in`` for a linear one."""
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


def kaiming_uniform(shape: tuple[int, ...], a: float = math.sqrt(5), dtype=np.float32) -> np.ndarray:
    """PyTorch's ``kaiming_uniform_`` (leaky-ReLU gain, fan_in mode)."""
    gain = math.sqrt(2.0 / (1 + a * a))
    bound = gain * math.sqrt(3.0 / max(fan_in(shape), 1))
    return uniform(shape, bound, dtype)


def default_weight_and_bias(
    weight_shape: tuple[int, ...], out_features: int, bias: bool, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray | None]:
    """The Conv2d/Linear default: kaiming-uniform(a=sqrt(5)) weight, bias in ±1/sqrt(fan_in)."""
    w = kaiming_uniform(weight_shape, dtype=dtype)
    b = None
    if bias:
        fi = fan_in(weight_shape)
        b = uniform((out_features,), 1.0 / math.sqrt(fi) if fi > 0 else 0.0, dtype)
    return w, b
