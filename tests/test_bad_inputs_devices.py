"""Mismatched devices name the layer: a NumPy input to a model on the GPU and the reverse.

Runs the GPU code path on the CPU through the CuPy stand-in (``tests/cupy_standin.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from cupy_standin import install

from gpulayers import nn

LAYERS = {
    "Linear": (lambda: nn.Linear(3, 2), (4, 3)),
    "Conv2d": (lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 5)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), (4, 3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(2), (2, 2, 4, 4)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (2, 4, 3)),
    "LayerNorm": (lambda: nn.LayerNorm(3), (4, 3)),
}


@pytest.fixture
def cp(monkeypatch):
    with install(None, monkeypatch) as module:
        yield module


@pytest.mark.parametrize("name", list(LAYERS))
def test_cpu_input_to_a_gpu_layer(cp, name):
    make, shape = LAYERS[name]
    layer = make().to("cuda")
    with pytest.raises(RuntimeError, match=rf"{name}: input is on cpu but the \w+ is on cuda"):
        layer(np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", list(LAYERS))
def test_gpu_input_to_a_cpu_layer(cp, name):
    make, shape = LAYERS[name]
    with pytest.raises(RuntimeError, match=rf"{name}: input is on cuda:0 but the \w+ is on cpu"):
        make()(cp.zeros(shape, dtype=np.float32))


def test_gradient_on_another_device_than_the_forward(cp):
    layer = nn.Linear(3, 2)
    y = layer(np.zeros((4, 3), np.float32))
    with pytest.raises(RuntimeError, match="Linear.backward: grad_output is on cuda"):
        layer.backward(cp.asarray(np.ones(y.shape, np.float32)))
