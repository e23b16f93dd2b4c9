"""Shared test helpers: skip markers, one tolerance rule, and the reference small CNN from either library.

    from helpers import assert_close, requires_gpu, requires_torch, small_cnn, small_cnn_pair, torch

``torch`` is the PyTorch module, or None where it is not installed (it is the parity oracle, a
test-time dependency only).
"""

from __future__ import annotations

import io
import itertools
import re
from typing import Any

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import models

try:  # the PyTorch oracle is a test-time dependency only
    import torch
except ImportError:  # pragma: no cover - torch missing
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the parity oracle) is not installed")
requires_gpu = pytest.mark.skipif(not gl.cuda_is_available(), reason="no usable CUDA device (CuPy + GPU)")

#: Default tolerances per dtype: a few ulps of float32 accumulated over a layer, and float64 near exact.
TOL: dict[type, dict[str, float]] = {
    np.float32: {"rtol": 1e-5, "atol": 1e-6},
    np.float64: {"rtol": 1e-10, "atol": 1e-12},
}


def as_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy/CuPy array, a PyTorch tensor (any device) or a number."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return gl.to_numpy(x) if hasattr(x, "shape") else np.asarray(x)


def assert_close(
    got: Any,
    want: Any,
    dtype: Any = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    scale: bool | float = False,
    err_msg: str = "",
) -> None:
    """``got`` equals ``want`` (same shape) within the tolerance of ``dtype`` (default: ``got``'s dtype).

    Args:
        got, want: NumPy/CuPy arrays, PyTorch tensors or numbers.
        dtype: picks the row of :data:`TOL`; float16/integers use float32's.
        rtol, atol: override the row's values.
        scale: multiply ``atol`` by the largest magnitude in ``want`` (at least 1), for values that
            are sums of many terms; a number also sets a floor for that factor.
        err_msg: printed on failure.
    """
    got, want = as_numpy(got), as_numpy(want)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape} {err_msg}"
    kind = np.dtype(dtype if dtype is not None else got.dtype).type
    tol = dict(TOL.get(kind, TOL[np.float32]))
    if rtol is not None:
        tol["rtol"] = rtol
    if atol is not None:
        tol["atol"] = atol
    if scale:
        tol["atol"] *= max(1.0, float(scale), float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, err_msg=err_msg, **tol)


#: The small CNN of the tests: ``gl.models.small_cnn`` sized for 12x12 single-channel images.
SMALL_CNN = {"in_channels": 1, "num_classes": 10, "image_size": 12, "width": 4, "hidden": 16, "dropout": 0.0}


def small_cnn(layers: Any = None, **overrides: Any):
    """The reference small CNN (``gl.models.small_cnn``) with the tests' sizes (:data:`SMALL_CNN`).

    Args:
        layers: ``gpulayers.nn`` (default) or ``torch.nn`` for the PyTorch twin (same state_dict keys).
        **overrides: any ``small_cnn`` argument (``image_size``, ``width``, ``conv_bias``, ...).
    """
    return models.small_cnn(**{**SMALL_CNN, **overrides}, layers=layers)


def copy_weights(src: Any, dst: Any) -> Any:
    """Load ``src``'s state_dict into ``dst`` across the two libraries (either direction); returns dst."""
    if torch is not None and isinstance(dst, torch.nn.Module):
        dst.load_state_dict({k: torch.from_numpy(np.array(as_numpy(v))) for k, v in src.state_dict().items()})
    else:
        dst.load_state_dict({k: as_numpy(v) for k, v in src.state_dict().items()})
    return dst


def small_cnn_pair(dtype: Any = np.float64, **overrides: Any):
    """``(ours, theirs)``: the small CNN in gpulayers and in PyTorch, in ``dtype``, with the same weights
    (gpulayers' initialisation copied into the PyTorch twin)."""
    ours = small_cnn(**overrides).to(dtype=np.dtype(dtype))
    theirs = small_cnn(torch.nn, **overrides).to(torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)
    return ours, copy_weights(ours, theirs)


def one_block_cnn(layers: Any = None):
    """A one-block CNN for 1x28x28 images (conv, batch norm, pool, dropout, linear: seven children,
    the classifier ``"6"``), from ``gpulayers.nn`` (default) or ``torch.nn``: the module-system tests'
    model."""
    L = gl.nn if layers is None else layers  # noqa: N806 - reads like the namespace it stands for
    return L.Sequential(
        L.Conv2d(1, 8, 3, padding=1),
        L.BatchNorm2d(8),
        L.ReLU(),
        L.MaxPool2d(2),
        L.Flatten(),
        L.Dropout(0.5),
        L.Linear(8 * 14 * 14, 10),
    )


def torch_forward_backward(module: Any, x: np.ndarray, grad_output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's ``(output, input gradient)`` of ``module`` at ``x`` for the upstream gradient ``grad_output``."""
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = module(xt)
    yt.backward(torch.from_numpy(grad_output))
    return yt.detach().numpy(), xt.grad.numpy()


#: Every valid combination of SGD's options (nesterov needs momentum and no dampening).
SGD_OPTIONS = [
    dict(momentum=m, dampening=d, weight_decay=wd, nesterov=n)
    for m, d, wd, n in itertools.product([0.0, 0.9], [0.0, 0.3], [0.0, 0.05], [False, True])
    if not (n and (m == 0 or d != 0))
]


def assert_backward_guards(layer: Any, x: np.ndarray, out_shape: tuple) -> None:
    """``layer.backward`` refuses a call before any forward and then, after a forward on ``x`` (whose
    output has ``out_shape``), a gradient with one more column; each message names the layer."""
    name = type(layer).__name__
    with pytest.raises(RuntimeError, match=rf"{name}\.backward: called before forward"):
        layer.backward(np.zeros(out_shape, x.dtype))
    layer(x)
    want = re.escape(str(tuple(out_shape)))
    with pytest.raises(ValueError, match=rf"{name}\.backward: expected grad_output of shape {want}, got"):
        layer.backward(np.zeros((*out_shape[:-1], out_shape[-1] + 1), x.dtype))


def option_ids(options: list[dict]) -> list[str]:
    """Readable pytest ids for a list of keyword-argument dicts."""
    return ["-".join(f"{k}={v}" for k, v in o.items()) for o in options]


def plain_step(model: Any, optimizer: Any):
    """``step(x, dy)``: zero_grad, forward, backward of ``dy``, optimiser step; returns the output."""

    def step(x, dy):
        optimizer.zero_grad()
        y = model(x)
        model.backward(dy)
        optimizer.step()
        return y

    return step


def npz_round_trip(state: dict) -> dict:
    """``state`` (a state_dict) written to an in-memory ``.npz`` and read back without pickle."""
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    return dict(np.load(buf, allow_pickle=False))


def assert_schedules_agree(sched: Any, resumed: Any, steps: int, also: Any = None) -> None:
    """``resumed`` (a scheduler loaded from ``sched``'s state) gives ``sched``'s learning rates now and
    for ``steps`` more steps of both; ``also()``, when given, runs its own checks after each step."""
    assert resumed.last_epoch == sched.last_epoch and resumed.get_last_lr() == sched.get_last_lr()
    for _ in range(steps):
        sched.step()
        resumed.step()
        assert resumed.get_last_lr() == sched.get_last_lr()
        if also is not None:
            also()


def fused_and_unfused(build: Any, training: bool = True) -> tuple[Any, Any]:
    """Two models from ``build`` with the same seeded weights: one as built, and one whose layers
    run one by one (every child's forward wrapped, so ``Sequential`` fuses nothing)."""
    gl.manual_seed(0)
    fused = build()
    gl.manual_seed(0)
    plain = build()
    for mod in plain:
        object.__setattr__(mod, "forward", type(mod).forward.__get__(mod))
    fused.train(training)
    plain.train(training)
    return fused, plain
