"""Write your own layer: a Module with ``forward`` and ``backward``, checked with ``gl.gradcheck``.

Two examples:

- ``SiLU`` (also called Swish): ``y = x * sigmoid(x)``, no parameters;
  ``dy/dx = s + x * s * (1 - s)`` with ``s = sigmoid(x)``.
- ``ChannelScale``: a learnable gain per channel, ``y[n, c] = x[n, c] * gain[c]``; its backward
  returns the input gradient and *adds* the gain's gradient into ``gain.grad``.

Both are written against ``xp = gl.get_array_module(x)``, so they run on NumPy and CuPy alike.

    python examples/custom_layer.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

import gpulayers as gl
from gpulayers import nn


class SiLU(nn.Module):
    """``x * sigmoid(x)`` element-wise (PyTorch's ``nn.SiLU``).

    Shape:
        - Input: (*), any shape, floating point
        - Output: (*), same shape
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache = None  # what backward needs; Module.to() resets it

    def forward(self, x: Any) -> Any:
        if not hasattr(x, "dtype") or np.dtype(x.dtype).kind != "f":
            raise TypeError(f"SiLU: expected a floating-point array, got {getattr(x, 'dtype', type(x).__name__)}")
        xp = gl.get_array_module(x)
        s = 1 / (1 + xp.exp(-x))  # stays float32 for float32 input
        self._cache = (x, s)
        return x * s

    def backward(self, grad_output: Any) -> Any:
        if self._cache is None:
            raise RuntimeError("SiLU.backward: called before forward (no saved input); run forward first")
        x, s = self._cache
        if grad_output.shape != x.shape:
            raise ValueError(f"SiLU.backward: expected grad_output of shape {x.shape}, got {grad_output.shape}")
        return grad_output * (s * (1 + x * (1 - s)))


class ChannelScale(nn.Module):
    """Multiply each channel by a learnable gain (initialised to 1).

    Args:
        channels: number of channels C.

    Shape:
        - Input: (N, C, H, W) or (N, C)
        - Output: same shape
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gain = nn.Parameter(np.ones(channels, np.float32))
        self._cache = None

    def _view(self, ndim: int) -> tuple[int, ...]:
        return (1, self.channels) + (1,) * (ndim - 2)

    def forward(self, x: Any) -> Any:
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"ChannelScale: expected input with {self.channels} channels, got shape {tuple(x.shape)}")
        self._cache = x
        return x * self.gain.data.reshape(self._view(x.ndim))

    def backward(self, grad_output: Any) -> Any:
        if self._cache is None:
            raise RuntimeError("ChannelScale.backward: called before forward; run forward first")
        x = self._cache
        axes = tuple(i for i in range(x.ndim) if i != 1)
        self._accumulate(self.gain, (grad_output * x).sum(axis=axes))  # adds into gain.grad
        return grad_output * self.gain.data.reshape(self._view(x.ndim))

    def extra_repr(self) -> str:
        return str(self.channels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args(argv)
    gl.manual_seed(0)
    rng = np.random.default_rng(0)

    # 1. Gradient checks, in float64 (finite differences need the precision).
    x = gl.to_device(rng.standard_normal((2, 3, 4, 4)), args.device)
    silu = SiLU()
    scale = ChannelScale(3).double().to(args.device)
    scale.gain.data = gl.to_device(rng.uniform(0.5, 1.5, 3), args.device)  # not all ones: a real check
    for layer in (silu, scale):
        gl.gradcheck(layer, x)  # raises GradcheckError on a mismatch
        print(f"gradcheck {layer!r}: ok")

    # 2. Against PyTorch's SiLU, when it is installed.
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        xf = gl.to_numpy(x).astype(np.float32)
        y = gl.to_numpy(SiLU()(xf))
        t = torch.tensor(xf, requires_grad=True)
        torch.nn.functional.silu(t).backward(torch.ones_like(t))
        silu32 = SiLU()
        silu32(xf)
        np.testing.assert_allclose(y, torch.nn.functional.silu(torch.tensor(xf)).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(silu32.backward(np.ones_like(xf)), t.grad.numpy(), rtol=1e-5, atol=1e-6)
        print("SiLU matches torch.nn.functional.silu (forward and backward)")

    # 3. In a model, next to the built-in layers; gradcheck the whole chain.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ChannelScale(4), SiLU(), nn.Flatten(), nn.Linear(64, 2))
    model.double().to(args.device)
    gl.gradcheck(model, x)
    print(f"gradcheck of the whole model: ok\n{model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
