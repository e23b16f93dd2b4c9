"""``Module.needs_input_grad``: a model whose input is data skips the input gradient of its first layer.

Parameter gradients must be those of the default (full) backward, bit for bit, on NumPy and on
the CuPy stand-in (where the first layer's input-gradient launch disappears); ``backward``
returns None; a module used again later in the same model keeps its input gradient there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from cupy_standin import COUNTER

import gpulayers as gl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _reference import reference_cnn  # noqa: E402


def _grads(build, x, dy, skip: bool, to_device=None):
    gl.manual_seed(0)
    model = build()
    if to_device is not None:
        model.to("cuda")
        x, dy = to_device(x), to_device(dy)
    model.needs_input_grad = not skip
    model(x)
    COUNTER.reset()
    dx = model.backward(dy)
    grads = {name: gl.to_numpy(p.grad) for name, p in model.named_parameters()}
    return dx, grads, COUNTER.names()


def _shared_first():
    lin = gl.nn.Linear(5, 5)
    return gl.nn.Sequential(lin, gl.nn.ReLU(), lin)  # the first layer is used again at the end


MODELS = {
    "conv": (lambda: gl.nn.Sequential(gl.nn.Conv2d(2, 3, 3, padding=1), gl.nn.ReLU(), gl.nn.Flatten()),
             (4, 2, 5, 5), (4, 75)),
    "linear": (lambda: gl.nn.Sequential(gl.nn.Linear(6, 4), gl.nn.Tanh(), gl.nn.Linear(4, 3)), (5, 6), (5, 3)),
    "nested": (lambda: gl.nn.Sequential(gl.nn.Sequential(gl.nn.Linear(6, 4), gl.nn.ReLU()), gl.nn.Linear(4, 2)),
               (5, 6), (5, 2)),
    "shared_first": (_shared_first, (6, 5), (6, 5)),
    "conv_alone": (lambda: gl.nn.Conv2d(2, 3, 3), (2, 2, 6, 6), (2, 3, 4, 4)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
def test_skipping_the_input_gradient_keeps_the_parameter_gradients(name):
    build, x_shape, y_shape = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    dy = rng.standard_normal(y_shape).astype(np.float32)
    dx_full, full, _ = _grads(build, x, dy, skip=False)
    dx, skipped, _ = _grads(build, x, dy, skip=True)
    assert dx_full is not None and dx_full.shape == x.shape
    assert dx is None
    assert skipped.keys() == full.keys()
    for key in full:
        np.testing.assert_array_equal(skipped[key], full[key], err_msg=key)


@pytest.mark.parametrize("name", list(MODELS))
def test_on_the_gpu_the_input_gradient_launches_go(cp, name):
    build, x_shape, y_shape = MODELS[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    dy = rng.standard_normal(y_shape).astype(np.float32)
    _, full, full_names = _grads(build, x, dy, False, cp.asarray)
    dx, skipped, names = _grads(build, x, dy, True, cp.asarray)
    assert dx is None
    assert sum(names.values()) == sum(full_names.values()) - 1  # the first layer's data gradient
    assert not any("backward_data" in k for k in names - full_names)
    for key in full:
        np.testing.assert_array_equal(skipped[key], full[key], err_msg=key)


def test_reference_step_skips_the_first_convolutions_input_gradient(cp):
    model = reference_cnn(gl.nn).to("cuda")
    model.needs_input_grad = False
    x = cp.asarray(np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32))
    out = model(x)
    COUNTER.reset()
    assert model.backward(cp.ones_like(out)) is None
    assert not any(k.startswith("conv2d_direct_backward_data") for k in COUNTER.names())


def test_the_flag_is_true_by_default_and_a_plain_attribute():
    model = reference_cnn(gl.nn)
    assert model.needs_input_grad and model[0].needs_input_grad
    model.needs_input_grad = False
    assert not model.needs_input_grad and model[0].needs_input_grad  # the container passes it per call
    assert "needs_input_grad" not in model.state_dict()
