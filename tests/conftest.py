"""Shared fixtures: every case runs on NumPy, and (marked ``gpu``) on CuPy when a GPU is usable."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import requires_gpu, torch

import gpulayers as gl

if torch is not None:
    torch.set_num_threads(max(1, torch.get_num_threads()))

pytest_plugins = ["kernel_harness.fixtures", "fake_cupy"]

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_gpu])]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Runs a test once per backend: ``"cpu"`` always, ``"cuda"`` when a GPU is usable."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    gl.manual_seed(0)
    np.random.seed(0)
    if torch is not None:
        torch.manual_seed(0)
    yield
