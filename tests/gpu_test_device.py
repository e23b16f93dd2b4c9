"""The device the GPU end-to-end tests (test_gpu.py, test_gpu_kernels.py) run on, and their tolerances.

``GPULAYERS_GPU_TEST_DEVICE=cpu`` runs those files on the CPU: a dry run of the tests' own logic
for machines without a GPU (GPU-vs-CPU comparisons then compare the CPU with itself, PyTorch
runs on the CPU, and the kernel-level tests run the kernels on the g++ harness of
``tests/kernel_harness``); tests that need CuPy itself are skipped there.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import requires_gpu

import gpulayers as gl

DEVICE = os.environ.get("GPULAYERS_GPU_TEST_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")

# The files' pytestmark: marked ``gpu``, and skipped without a usable GPU unless in the dry run.
GPU_TEST_MARKS = [
    pytest.mark.gpu,
    *([requires_gpu] if ON_GPU else []),
]

requires_real_gpu = pytest.mark.skipif(not ON_GPU, reason="needs the real GPU path")


def to_dev(x):
    return gl.to_device(x, DEVICE)


def gpu_tol(dtype=np.float32) -> dict:
    """assert_close options for GPU against CPU/PyTorch: summation order differs, so a looser row than TOL."""
    tol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-11
    return {"rtol": tol * 10, "atol": tol}
