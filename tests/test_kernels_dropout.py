"""The fused dropout kernel (``cuda_kernels/dropout.cu``) on the host harness.

The launcher of ``gpulayers/ops/dropout_cuda.py`` runs on the CuPy stand-in with the kernel on
the g++ harness. The generator is checked against Random123's known answers for Philox4x32-10
and against an independent Python Philox; the mask is the same on any grid, reproducible from
``(seed, offset)``, restored by ``set_rng_state`` (checkpoints), and one launch forward.
"""

from __future__ import annotations

import numpy as np
import pytest
from cupy_standin import COUNTER
from kernel_harness.fixtures import GRIDS, run_asan

import gpulayers as gl
from gpulayers import backend
from gpulayers.ops import dropout as ops
from gpulayers.ops import dropout_cuda

M32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    """Philox4x32-10 in Python (Salmon et al., 2011), the independent reference."""
    c, (k0, k1) = list(counter), key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c[3] ^ k1) & M32, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c


def test_python_philox_matches_the_random123_known_answers():
    assert philox4x32_10([0, 0, 0, 0], (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_10([M32] * 4, (M32, M32)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.fixture
def cp(cp, monkeypatch):
    """The stand-in (kernel_harness.fixtures) with fresh generator state."""
    monkeypatch.setattr(backend, "_philox_offsets", {})
    monkeypatch.setattr(backend, "_philox_states", {})
    return cp


def _expected_mask(n, seed, offset, p, dtype):
    keep = np.empty(n, bool)
    for group in range((n + 3) // 4):
        words = philox4x32_10([group & M32, group >> 32, offset & M32, offset >> 32], (seed & M32, seed >> 32))
        for lane, w in enumerate(words):
            if group * 4 + lane < n:
                keep[group * 4 + lane] = (w >> 8) * 2.0**-24 >= p
    return np.where(keep, dtype(1 / (1 - p)), dtype(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_is_philox_of_seed_offset_and_index(cp, dtype, monkeypatch):
    gl.manual_seed(123)
    x = np.random.default_rng(0).standard_normal(203).astype(dtype)
    COUNTER.reset()
    y, cache = ops.dropout_forward(cp.asarray(x), 0.3, True)
    assert COUNTER.launches() == 1 and COUNTER.syncs() == 0
    seed = 123  # device 0
    want = _expected_mask(203, seed, 0, 0.3, dtype)
    assert cache.mask is None  # nothing stored: backward draws the mask again
    np.testing.assert_array_equal(y.get(), x * want)
    np.testing.assert_array_equal(ops.dropout_mask(cache).get(), want)
    dy = np.random.default_rng(1).standard_normal(203).astype(dtype)
    COUNTER.reset()
    dx = ops.dropout_backward(cp.asarray(dy), cache)
    ctype = "float" if dtype is np.float32 else "double"
    assert COUNTER.launches() == 1 and COUNTER.names() == {f"dropout_apply_kernel<{ctype}>": 1}
    np.testing.assert_array_equal(dx.get(), dy * want)
    _, second = ops.dropout_forward(cp.asarray(x), 0.3, True)  # the next offset: another mask
    np.testing.assert_array_equal(ops.dropout_mask(second).get(), _expected_mask(203, seed, 1, 0.3, dtype))


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize(("base", "increment"), [(0, 0), (5, 2), (2**32 - 1, 1), (2**40 + 3, 2**33)])
def test_kernel_offset_is_the_state_base_plus_the_increment(harness_libraries, grid, base, increment):
    """Seed and offset base come from device memory, the increment is a launch argument: a graph
    replays the same launch with a new base."""
    seed, n = 0x0123456789ABCDEF, 4099
    x = np.random.default_rng(2).standard_normal(n)
    y, dx = np.empty_like(x), np.empty_like(x)
    state = np.array([seed, base], np.int64)
    tail = (np.int64(n), state, np.int64(increment), np.float64(0.4), np.float64(1 / 0.6))
    harness_libraries[grid].kernel("dropout.cu", "dropout_apply_kernel", np.float64)((5,), (128,), (x, y, *tail))
    harness_libraries[grid].kernel("dropout.cu", "dropout_apply_kernel", np.float64)((5,), (128,), (x, dx, *tail))
    want = _expected_mask(n, seed, base + increment, 0.4, np.float64)
    np.testing.assert_array_equal(y, x * want)
    np.testing.assert_array_equal(dx, y)  # backward draws the same mask
    np.testing.assert_array_equal(state, [seed, base])  # read, never written


def test_dropout_kernel_is_clean_under_address_sanitizer(asan_build):
    result = run_asan(asan_build, "dropout-clean")
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "ASAN_CLEAN_RUN_OK" in result.stdout
    assert "runtime error" not in result.stderr and "AddressSanitizer" not in result.stderr


def test_address_sanitizer_catches_a_dropout_launch_past_the_arrays(asan_build):
    """Negative control: the same build aborts when the kernel is told of more elements."""
    result = run_asan(asan_build, "dropout-overflow")
    assert "OVERFLOW_NOT_DETECTED" not in result.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr


@pytest.mark.parametrize("shape", [(3, 5, 4, 4), (7, 2, 3)])
def test_channel_dropout_mask_is_philox_without_curand(cp, shape):
    """Dropout2d on the GPU: one launch draws the per-channel mask (the values the element kernel
    draws for N*C elements at that offset), one multiply applies it; nothing from cuRAND."""
    gl.manual_seed(21)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    x_gpu = cp.asarray(x)
    COUNTER.reset()
    y, cache = ops.dropout2d_forward(x_gpu, 0.4, True)
    assert COUNTER.launches() == 2 and COUNTER.syncs() == 0 and COUNTER.count("h2d") == 1  # [seed, base]
    assert "random.default_rng (generator setup)" not in COUNTER.names("launch")
    planes = shape[:-2]
    want = _expected_mask(int(np.prod(planes)), 21, 0, 0.4, np.float32).reshape(planes + (1, 1))
    np.testing.assert_array_equal(cache.mask.get(), want)
    np.testing.assert_array_equal(y.get(), x * want)
    assert backend.get_rng_state()["gpu_offsets"] == {"0": 1}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_mask_kernel_draws_what_the_forward_kernel_draws(harness_libraries, grid):
    seed, n, base, increment = 987654321, 1031, 2**33 + 1, 5
    state = np.array([seed, base], np.int64)
    alone = np.empty(n, np.float32)
    kernel = harness_libraries[grid].kernel("dropout.cu", "dropout_mask_kernel", np.float32)
    kernel((3,), (64,), (alone, np.int64(n), state, np.int64(increment), np.float32(0.25), np.float32(1 / 0.75)))
    np.testing.assert_array_equal(alone, _expected_mask(n, seed, base + increment, 0.25, np.float32))


def test_rng_state_replays_the_masks(cp):
    x = cp.asarray(np.ones((64, 50), np.float32))
    gl.manual_seed(7)
    ops.dropout_forward(x, 0.5, True)
    state = backend.get_rng_state()
    first = ops.dropout_mask(ops.dropout_forward(x, 0.5, True)[1]).get()
    backend.set_rng_state(state)
    again = ops.dropout_mask(ops.dropout_forward(x, 0.5, True)[1]).get()
    np.testing.assert_array_equal(first, again)
    assert state["gpu_offsets"] == {"0": 1}
    kept = (first > 0).mean()
    assert 0.45 < kept < 0.55


@pytest.mark.gpu
@pytest.mark.skipif(not gl.cuda_is_available(), reason="no usable CUDA device (CuPy + GPU)")
def test_fused_dropout_on_the_gpu_is_philox():
    import cupy  # noqa: PLC0415

    gl.manual_seed(11)
    x = cupy.asarray(np.random.default_rng(1).standard_normal(1001).astype(np.float32))
    y, draw = dropout_cuda.dropout_forward(x, 0.25)
    want = _expected_mask(1001, 11, 0, 0.25, np.float32)
    np.testing.assert_array_equal(cupy.asnumpy(y), cupy.asnumpy(x) * want)
    np.testing.assert_array_equal(cupy.asnumpy(dropout_cuda.dropout_backward(x, draw, 0.25)), cupy.asnumpy(y))
    np.testing.assert_array_equal(cupy.asnumpy(dropout_cuda.dropout_mask(x, (1001,), 0.25, draw)), want)
