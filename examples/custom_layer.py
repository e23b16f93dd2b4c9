"""Write your own layers and models: Modules with ``forward`` and ``backward``, checked with ``gl.gradcheck``.

Three examples, using only the public API:

- ``SiLU`` (also called Swish): ``y = x * sigmoid(x)``, no parameters;
  ``dy/dx = s + x * s * (1 - s)`` with ``s = sigmoid(x)``.
- ``ChannelScale``: a learnable gain per channel, ``y[n, c] = x[n, c] * gain[c]``; its backward
  returns the input gradient and *adds* the gain's gradient into ``gain.grad``.
- ``GatedResidual``: a model-level module, ``y = x + gate(x) * body(x)``. Its forward calls its
  children in any order (one activation is shared by both branches); its backward calls their
  backwards in the reverse order. This is the general route for any graph.

``forward`` keeps what ``backward`` needs with ``self.save_for_backward(...)`` and ``backward``
takes it back with ``self.saved_for_backward(grad_output)``: each module keeps a stack, so a
module may be called several times before its backwards (last in, first out). Everything is
written against ``xp = gl.get_array_module(x)``, so it runs on NumPy and CuPy alike.

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

    def forward(self, x: Any) -> Any:
        if not hasattr(x, "dtype") or np.dtype(x.dtype).kind != "f":
            raise TypeError(f"SiLU: expected a floating-point array, got {getattr(x, 'dtype', type(x).__name__)}")
        xp = gl.get_array_module(x)
        s = 1 / (1 + xp.exp(-x))  # stays float32 for float32 input
        y = x * s
        self.save_for_backward(x, s, output=y)  # output=y: backward checks the gradient's shape
        return y

    def backward(self, grad_output: Any) -> Any:
        x, s = self.saved_for_backward(grad_output)  # raises RuntimeError when no forward is left
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

    def _view(self, ndim: int) -> tuple[int, ...]:
        return (1, self.channels) + (1,) * (ndim - 2)

    def forward(self, x: Any) -> Any:
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"ChannelScale: expected input with {self.channels} channels, got shape {tuple(x.shape)}")
        y = x * self.gain.data.reshape(self._view(x.ndim))
        self.save_for_backward(x, output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        (x,) = self.saved_for_backward(grad_output)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        self.gain.accumulate_grad((grad_output * x).sum(axis=axes))  # adds into gain.grad
        return grad_output * self.gain.data.reshape(self._view(x.ndim))

    def extra_repr(self) -> str:
        return str(self.channels)


class GatedResidual(nn.Module):
    """``y = x + gate(x) * body(x)`` over feature vectors.

    ``body`` is Linear-Tanh-Linear-Tanh with the *same* Tanh used twice; ``gate`` is Linear-Sigmoid.

    Args:
        features: F, the size of each input vector.

    Shape:
        - Input: (N, F)
        - Output: (N, F)
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        act = nn.Tanh()  # one module, called twice per forward: each call gets its own backward
        self.body = nn.Sequential(nn.Linear(features, features), act, nn.Linear(features, features), act)
        self.gate = nn.Sequential(nn.Linear(features, features), nn.Sigmoid())

    def forward(self, x: Any) -> Any:
        b = self.body(x)
        a = self.gate(x)
        self.save_for_backward(a, b)
        return x + a * b

    def backward(self, grad_output: Any) -> Any:
        a, b = self.saved_for_backward()
        dx_gate = self.gate.backward(grad_output * b)  # the gate ran last: its backward comes first
        dx_body = self.body.backward(grad_output * a)
        return grad_output + dx_gate + dx_body  # the identity path, then both branches


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

    # 4. A model-level module: children in any order, a shared activation, backwards in reverse.
    block = GatedResidual(5).double().to(args.device)
    gl.gradcheck(block, gl.to_device(rng.standard_normal((3, 5)), args.device))
    print(f"gradcheck of GatedResidual: ok ({len(list(block.parameters()))} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
