"""PyTorch twins of the library's containers, with the same child names (so state_dict keys match)."""

from __future__ import annotations

import numpy as np

try:
    import torch
except Exception:  # pragma: no cover - torch missing
    torch = None

import gpulayers as gl

if torch is not None:

    class TorchResidual(torch.nn.Module):
        """``body(x) + (shortcut(x) if shortcut else x)``, children ``body`` and ``shortcut``."""

        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body = body
            self.shortcut = shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class TorchConcat(torch.nn.Module):
        """Every branch on the same input, concatenated along ``dim``; children ``0``, ``1``, ..."""

        def __init__(self, *branches, dim=1):
            super().__init__()
            self.dim = dim
            for i, b in enumerate(branches):
                self.add_module(str(i), b)

        def forward(self, x):
            return torch.cat([b(x) for b in self.children()], dim=self.dim)


class TorchLayers:
    """``torch.nn`` plus the containers it lacks (``Residual``, ``Concat``): the ``layers=`` namespace
    that builds a model's PyTorch twin with ``gpulayers.models``' builders."""

    def __getattr__(self, name):
        return getattr(torch.nn, name)

    if torch is not None:
        Residual = TorchResidual
        Concat = TorchConcat


torch_layers = TorchLayers()


def copy_weights(ours, theirs) -> None:
    """Strict load of the PyTorch module's state into ours."""
    ours.load_state_dict({k: v.detach().cpu().numpy() for k, v in theirs.state_dict().items()})


def tolerances(dtype) -> dict:
    return {"rtol": 1e-10, "atol": 1e-12} if np.dtype(dtype) == np.float64 else {"rtol": 2e-4, "atol": 2e-5}


def assert_parity(ours, theirs, inputs, dtype, device="cpu", seed=0) -> None:
    """Forward, input gradients and parameter gradients of ``ours`` and ``theirs`` agree.

    ``ours.backward`` gets a random upstream gradient and returns the input gradient (a tuple for
    several inputs); every named parameter's gradient is compared under PyTorch's name.
    """
    tol = tolerances(dtype)
    inputs = [np.asarray(x, dtype=dtype) for x in inputs]
    ts = [torch.tensor(x, requires_grad=True) for x in inputs]
    ty = theirs(*ts)
    g = np.random.default_rng(seed).standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.from_numpy(g))
    ours.zero_grad()
    y = ours(*[gl.to_device(x, device) for x in inputs])
    np.testing.assert_allclose(gl.to_numpy(y), ty.detach().numpy(), **tol, err_msg="forward")
    dx = ours.backward(gl.to_device(g, device))
    dxs = dx if isinstance(dx, tuple) else (dx,)
    assert len(dxs) == len(ts)
    for i, (d, t) in enumerate(zip(dxs, ts, strict=True)):
        assert d.dtype == dtype
        np.testing.assert_allclose(gl.to_numpy(d), t.grad.numpy(), **tol, err_msg=f"input {i} gradient")
    theirs_params = dict(theirs.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert list(ours_params) == list(theirs_params)
    for name, p in ours_params.items():
        # A weight's gradient sums over the batch and every pixel: float32 rounding grows with the
        # magnitude of the sum, so the absolute tolerance scales with the largest value.
        want = theirs_params[name].grad.numpy()
        atol = tol["atol"] * max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(
            gl.to_numpy(p.grad), want, rtol=tol["rtol"], atol=atol, err_msg=f"gradient of {name}"
        )
