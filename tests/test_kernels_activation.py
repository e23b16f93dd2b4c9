"""The ReLU kernels (``cuda_kernels/activation.cu``) on the host harness, against the NumPy path.

The launchers of ``gpulayers/ops/activation_cuda.py`` run through the layer and the op on the
CuPy stand-in, with the launchers' grids and with a 3 x 4 grid (the grid-stride loops run).
Reference: NumPy's ``maximum(x, 0)`` and ``where(y <= 0, 0, dy)``; ReLU is exact, so the
results must agree bit for bit, NaN, infinities and signed zeros included. An
AddressSanitizer/UBSan build runs the same launchers in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cupy_standin import COUNTER

import gpulayers as gl
from gpulayers.ops import activation

SHAPES = [(7,), (33, 65), (4, 3, 17, 9)]


def _special(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[: min(flat.size, 5)] = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0], dtype)[: min(flat.size, 5)]
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernels_match_the_numpy_path(cp, shape, dtype):
    rng = np.random.default_rng(len(shape))
    x = _special(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dy.reshape(-1)[-1] = np.nan  # a NaN gradient passes where the output is positive or NaN
    want_y = np.maximum(x, dtype(0))
    want_dx = np.where(want_y <= 0, dtype(0), dy)

    COUNTER.reset()
    y, cache = activation.relu_forward(cp.asarray(x))
    dx = activation.relu_backward(cp.asarray(dy), cache)
    assert COUNTER.names() == {
        "relu_forward_kernel<" + ("float>" if dtype == np.float32 else "double>"): 1,
        "relu_backward_kernel<" + ("float>" if dtype == np.float32 else "double>"): 1,
    }
    assert COUNTER.syncs() == 0
    np.testing.assert_array_equal(y.get(), want_y)
    np.testing.assert_array_equal(np.signbit(y.get()) & (y.get() == 0), np.zeros(shape, bool))  # +0 only
    np.testing.assert_array_equal(dx.get(), want_dx)


def test_relu_of_a_strided_input(cp):
    """A transposed view is made contiguous before the launch (kernels ignore strides)."""
    x = np.random.default_rng(3).standard_normal((6, 10)).astype(np.float32)
    y, cache = activation.relu_forward(cp.asarray(x).T)
    np.testing.assert_array_equal(y.get(), np.maximum(x.T, 0))
    dy = np.ones((6, 10), np.float32)
    dx = activation.relu_backward(cp.asarray(dy).T, cache)
    np.testing.assert_array_equal(dx.get(), np.where(x.T > 0, 1.0, 0.0))


def test_relu_layer_takes_one_launch_each_way_and_matches_the_cpu_layer(cp):
    x = np.random.default_rng(4).standard_normal((8, 5, 6, 6)).astype(np.float32)
    dy = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    cpu = gl.nn.ReLU()
    gpu = gl.nn.ReLU()
    want_y, got_y = cpu(x), None
    COUNTER.reset()
    got_y = gpu(cp.asarray(x))
    got_dx = gpu.backward(cp.asarray(dy))
    assert COUNTER.launches() == 2
    np.testing.assert_array_equal(got_y.get(), want_y)
    np.testing.assert_array_equal(got_dx.get(), cpu.backward(dy))


def test_mixed_dtypes_fall_back_to_cupy(cp):
    """A float64 gradient for a float32 output keeps the element-wise path (and its dtype rules)."""
    y, cache = activation.relu_forward(cp.asarray(np.array([-1.0, 2.0], np.float32)))
    dx = activation.relu_backward(cp.asarray(np.array([3.0, 4.0])), cache)
    assert dx.dtype == np.float64
    np.testing.assert_array_equal(dx.get(), [0.0, 4.0])


_ASAN_SCRIPT = """
import sys
build_dir = sys.argv[1]
import numpy as np
from cupy_standin import install
from kernel_harness.harness import HarnessLibrary
from gpulayers.ops import activation

for grid in (None, (3, 4)):
    with install(HarnessLibrary(build_dir, sanitize=True, grid_override=grid)) as cp:
        rng = np.random.default_rng(0)
        for dtype in (np.float32, np.float64):
            for shape in ((4099,), (8, 5, 23, 11)):
                x = cp.asarray(rng.standard_normal(shape).astype(dtype))
                y, cache = activation.relu_forward(x)
                dx = activation.relu_backward(cp.asarray(rng.standard_normal(shape).astype(dtype)), cache)
                assert np.isfinite(dx.get()).all()
print("ASAN_CLEAN_RUN_OK", flush=True)
"""


def test_relu_kernels_are_clean_under_address_sanitizer(asan_build):
    build_dir, env = asan_build
    tests_dir = Path(__file__).resolve().parent
    env = dict(env, PYTHONPATH=f"{tests_dir.parent}:{tests_dir}")
    args = [sys.executable, "-c", textwrap.dedent(_ASAN_SCRIPT), str(build_dir)]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "ASAN_CLEAN_RUN_OK" in result.stdout
    assert "runtime error" not in result.stderr and "AddressSanitizer" not in result.stderr
