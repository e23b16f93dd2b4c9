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


def kaiming_normal(shape: tuple[int, ...], mode: str = "fan_out", dtype=np.float32) -> np.ndarray:
    """PyTorch's ``kaiming_normal_`` for ReLU (gain sqrt(2)): N(0, 2 / fan), fan_in or fan_out.

    ``fan_out`` is ``out * kh * kw`` for a conv weight, ``out`` for a linear one.
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_normal: expected mode 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in(shape) if mode == "fan_in" else int(shape[0] * np.prod(shape[2:]))
    std = math.sqrt(2.0 / max(fan, 1))
    return (backend.cpu_rng().standard_normal(size=shape) * std).astype(dtype)
