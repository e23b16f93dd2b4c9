"""The fused BatchNorm kernels (``cuda_kernels/batch_norm.cu``) on the host harness, against the NumPy path.

The launchers of ``gpulayers/ops/batch_norm_cuda.py`` run end to end on NumPy arrays (the CuPy
stand-in's arrays unwrapped by the harness), with the launchers' grids and with a grid of 3
blocks (the per-channel reduction kernels loop over channels; the element kernels over a grid
stride). Reference: the xp-generic NumPy code of :mod:`gpulayers.ops.normalization` in float64.
An AddressSanitizer/UBSan build runs the same launchers in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cupy_standin import COUNTER
from kernel_harness.harness import build, sanitizer_env

import gpulayers as gl
from gpulayers import kernels
from gpulayers.ops import normalization

SHAPES = [(16, 5), (4, 3, 37), (4, 6, 7, 9)]


def _reference(x, w, b, rm, rv, momentum, nbt, dy, relu):
    """The NumPy path in float64 (relu applied after, its mask before the backward)."""
    f64 = [None if a is None else np.array(a, np.float64) for a in (x, w, b, rm, rv, dy)]
    x64, w64, b64, rm64, rv64, dy64 = f64
    nbt64 = None if nbt is None else np.array(nbt)
    y, cache = normalization.batch_norm_forward(x64, w64, b64, rm64, rv64, True, momentum, 1e-5, nbt64)
    if relu:
        y = np.maximum(y, 0)
        dy64 = np.where(y <= 0, 0.0, dy64)
    dx, dw, db = normalization.batch_norm_backward(dy64, cache)
    return y, dx, dw, db, rm64, rv64, nbt64


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("affine", "running", "momentum", "relu"),
    [(True, True, 0.1, False), (True, True, 0.1, True), (False, False, 0.1, False), (True, True, None, True)],
)
def test_fused_batch_norm_matches_the_numpy_path(cp, shape, dtype, affine, running, momentum, relu):
    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)  # a mean far from 0: the shifted sums matter
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    rm = rng.standard_normal(c).astype(dtype) if running else None
    rv = rng.uniform(0.5, 2, c).astype(dtype) if running else None
    nbt = np.array(3, np.int64) if running else None
    want = _reference(x, w, b, rm, rv, momentum, nbt, dy, relu)

    dev = [None if a is None else cp.asarray(a) for a in (x, w, b, rm, rv, nbt, dy)]
    xd, wd, bd, rmd, rvd, nbtd, dyd = dev
    COUNTER.reset()
    from gpulayers.ops import batch_norm_cuda  # noqa: PLC0415

    y, cache = batch_norm_cuda.batch_norm_forward(
        xd, wd, bd, (rmd, rvd, nbtd) if running else None, momentum, 1e-5, relu=relu
    )
    dx, dw, db = batch_norm_cuda.batch_norm_backward(dyd, cache, relu=relu)
    assert COUNTER.launches() == 4 and COUNTER.syncs() == 0
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}
    got = (y, dx, dw, db, rmd, rvd)
    for name, g, r in zip(("y", "dx", "dweight", "dbias", "running_mean", "running_var"), got, want, strict=False):
        if r is None:
            assert g is None, name
            continue
        np.testing.assert_allclose(g.get(), r, **tol, err_msg=name)
    if running:
        assert int(nbtd) == 4


def test_fused_batch_norm_is_bitwise_deterministic(cp):
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((8, 4, 5, 5)).astype(np.float32))
    dy = cp.asarray(rng.standard_normal((8, 4, 5, 5)).astype(np.float32))
    from gpulayers.ops import batch_norm_cuda  # noqa: PLC0415

    runs = []
    for _ in range(2):
        y, cache = batch_norm_cuda.batch_norm_forward(x, None, None, None, 0.1, 1e-5)
        runs.append([a.get() for a in (y, *batch_norm_cuda.batch_norm_backward(dy, cache)[:1])])
    for a, b in zip(*runs, strict=True):
        assert np.array_equal(a, b)


def test_layer_takes_the_fused_path_on_the_gpu(cp):
    """BatchNorm2d on a CuPy array: two launches each way, running statistics as on the CPU."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    cpu = gl.nn.BatchNorm2d(3)
    gpu = gl.nn.BatchNorm2d(3).to("cuda")
    want = cpu(x)
    COUNTER.reset()
    got = gpu(cp.asarray(x))
    assert COUNTER.launches() == 2
    np.testing.assert_allclose(got.get(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gpu.running_var.get(), cpu.running_var, rtol=1e-6)
    assert int(gpu.num_batches_tracked) == 1


# -- AddressSanitizer -----------------------------------------------------------------------------
_ASAN_SCRIPT = """
import sys
repo, tests_dir, build_dir = sys.argv[1:4]
sys.path[:0] = [repo, tests_dir]
import numpy as np
from cupy_standin import install
from kernel_harness.harness import HarnessLibrary
from gpulayers.ops import batch_norm_cuda

for grid in (None, (3, 4)):
    with install(HarnessLibrary(build_dir, sanitize=True, grid_override=grid)) as cp:
        rng = np.random.default_rng(0)
        for shape in ((64, 40), (8, 5, 23, 11), (3, 7, 200)):
            c = shape[1]
            x = cp.asarray(rng.standard_normal(shape).astype(np.float64))
            dy = cp.asarray(rng.standard_normal(shape).astype(np.float64))
            w, b = cp.asarray(np.ones(c)), cp.asarray(np.zeros(c))
            rm, rv, nbt = cp.asarray(np.zeros(c)), cp.asarray(np.ones(c)), cp.asarray(np.array(0))
            y, cache = batch_norm_cuda.batch_norm_forward(x, w, b, (rm, rv, nbt), None, 1e-5, relu=True)
            dx, dw, db = batch_norm_cuda.batch_norm_backward(dy, cache, relu=True)
            assert np.isfinite(dx.get()).all()
        # the other fused kernels of the training step: dropout, cross-entropy, multi-tensor SGD
        from gpulayers.ops import cross_entropy_cuda, dropout_cuda
        from gpulayers.optim import optim_cuda
        x = cp.asarray(rng.standard_normal(4099))
        y, mask = dropout_cuda.dropout_forward(x, 0.3)
        logits = cp.asarray(rng.standard_normal((300, 10)))
        target = cp.asarray(rng.integers(0, 10, 300))
        weight = cp.asarray(np.ones(10))
        loss, cache = cross_entropy_cuda.cross_entropy_forward(
            logits, target, reduction="mean", smoothing=0.1, weight=weight, ignore_index=-100, name="cross_entropy"
        )
        grad = cross_entropy_cuda.cross_entropy_backward(cache)
        shapes = [(40, 60), (2050,), (3,)] * 6
        tensors = [tuple(cp.asarray(rng.standard_normal(s)) for _ in range(3)) for s in shapes]
        for first in (True, False):
            optim_cuda.sgd_multi_update(tensors, lr=0.1, weight_decay=0.01, momentum=0.9, dampening=0.0,
                                        nesterov=True, first_step=first)
print("ASAN_CLEAN_RUN_OK", flush=True)
"""


def test_fused_step_kernels_are_clean_under_address_sanitizer(tmp_path):
    env = sanitizer_env()
    if env is None:
        pytest.skip("g++ has no AddressSanitizer/UBSan runtime here")
    for cu in sorted(kernels.kernel_dir().glob("*.cu")):  # built here, loaded by the child
        build(cu, tmp_path, sanitize=True)
    tests_dir = Path(__file__).resolve().parent
    args = [sys.executable, "-c", textwrap.dedent(_ASAN_SCRIPT), str(tests_dir.parent), str(tests_dir), str(tmp_path)]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "ASAN_CLEAN_RUN_OK" in result.stdout
    assert "runtime error" not in result.stderr and "AddressSanitizer" not in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not gl.cuda_is_available(), reason="no usable CUDA device (CuPy + GPU)")
@pytest.mark.parametrize("relu", [False, True])
def test_fused_batch_norm_on_the_gpu_matches_the_numpy_path(relu):
    import cupy  # noqa: PLC0415

    from gpulayers.ops import batch_norm_cuda  # noqa: PLC0415

    rng = np.random.default_rng(2)
    shape = (64, 32, 28, 28)
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    rm, rv = np.zeros(32, np.float32), np.ones(32, np.float32)
    want = _reference(x, w, b, rm, rv, 0.1, np.array(0, np.int64), dy, relu)
    d = [cupy.asarray(a) for a in (x, w, b, rm, rv, np.array(0, np.int64), dy)]
    y, cache = batch_norm_cuda.batch_norm_forward(*d[:3], (d[3], d[4], d[5]), 0.1, 1e-5, relu=relu)
    dx, dw, db = batch_norm_cuda.batch_norm_backward(d[6], cache, relu=relu)
    for g, r in zip((y, dx, dw, db, d[3], d[4]), want, strict=False):
        np.testing.assert_allclose(cupy.asnumpy(g), r, rtol=2e-4, atol=2e-4)
    y2, _ = batch_norm_cuda.batch_norm_forward(*d[:3], (d[3], d[4], d[5]), 0.1, 1e-5, relu=relu)
    assert bool((y2 == y).all())  # run to run, bit for bit
