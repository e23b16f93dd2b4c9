"""The fused cross-entropy kernels (``cuda_kernels/cross_entropy.cu``) on the host harness, against the NumPy path.

The real launchers run on the CuPy stand-in with the kernels on the g++ harness (launcher grid,
and a 3-block grid for the element-wise backward), compared with the NumPy code of
:mod:`gpulayers.ops.loss` over weight, ignore_index, label smoothing, every reduction and
upstream gradient. Out-of-range labels: NaN on the device, the error on request, no sync.
"""

from __future__ import annotations

import numpy as np
import pytest
from cupy_standin import COUNTER

import gpulayers as gl
from gpulayers.ops import loss as ops
from gpulayers.training import evaluate


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("weighted", "smoothing", "ignore"), [(False, 0.0, False), (True, 0.1, True), (False, 0.2, True)]
)
@pytest.mark.parametrize("upstream", [False, True])
def test_fused_cross_entropy_matches_the_numpy_path(cp, dtype, reduction, weighted, smoothing, ignore, upstream):
    rng = np.random.default_rng(3)
    n, c = 37, 11
    logits = (rng.standard_normal((n, c)) * 4).astype(dtype)
    target = rng.integers(0, c, n).astype(np.int64)
    if ignore:
        target[::5] = -100
    weight = rng.uniform(0.2, 2, c).astype(dtype) if weighted else None
    g = None
    if upstream:
        g = rng.standard_normal(n).astype(dtype) if reduction == "none" else np.array(0.7, dtype)
    want, cache = ops.cross_entropy_forward(logits, target, reduction, smoothing, weight=weight)
    want_grad = ops.cross_entropy_backward(cache, g)

    dev = [None if a is None else cp.asarray(a) for a in (logits, target, weight, g)]
    COUNTER.reset()
    loss, dcache = ops.cross_entropy_forward(dev[0], dev[1], reduction, smoothing, weight=dev[2])
    grad = ops.cross_entropy_backward(dcache, dev[3])
    assert dcache.fused and COUNTER.syncs() == 0
    assert COUNTER.count("kernel") == 2 and COUNTER.launches() == 2
    tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-13}
    assert loss.shape == np.shape(want) and loss.dtype == dtype
    np.testing.assert_allclose(loss.get(), want, **tol)
    np.testing.assert_allclose(grad.get(), want_grad, **tol)


def test_empty_and_all_ignored_batches_give_nan_for_mean(cp):
    logits = cp.asarray(np.zeros((3, 4), np.float32))
    target = cp.asarray(np.full(3, -100, np.int64))
    loss, _ = ops.cross_entropy_forward(logits, target, "mean")
    assert np.isnan(loss.get())
    loss, _ = ops.cross_entropy_forward(logits, target, "sum")
    assert loss.get() == 0


def test_bad_labels_give_nan_on_the_device_and_the_error_on_request(cp):
    logits = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    target = np.array([0, 1, 7, 2, -3, 3])
    crit = gl.nn.CrossEntropyLoss()
    COUNTER.reset()
    loss = crit(cp.asarray(logits), cp.asarray(target))
    grad = crit.backward()
    assert COUNTER.syncs() == 0
    assert np.isnan(loss.get())
    g = grad.get()
    assert np.isnan(g[[2, 4]]).all() and np.isfinite(g[[0, 1, 3, 5]]).all()
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected class indices.*got -3, 7"):
        crit.check_targets()
    crit(cp.asarray(logits), cp.asarray(np.array([0, 1, 2, 3, 0, 1])))
    crit.check_targets()  # good labels: nothing raised


def test_fit_names_bad_labels_on_the_gpu(cp):
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 5, 0, 1, 2, 0])
    model = gl.nn.Linear(3, 3).to("cuda")
    loader = [(cp.asarray(x), cp.asarray(y))]
    with pytest.raises(ValueError, match="got 5"):
        evaluate(model, loader, gl.nn.CrossEntropyLoss())


@pytest.mark.gpu
@pytest.mark.skipif(not gl.cuda_is_available(), reason="no usable CUDA device (CuPy + GPU)")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_cross_entropy_on_the_gpu_matches_the_numpy_path(reduction):
    import cupy  # noqa: PLC0415

    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((300, 10)) * 3).astype(np.float32)
    target = rng.integers(0, 10, 300)
    target[::7] = -100
    weight = rng.uniform(0.5, 2, 10).astype(np.float32)
    want, cache = ops.cross_entropy_forward(logits, target, reduction, 0.1, weight=weight)
    want_grad = ops.cross_entropy_backward(cache)
    loss, dcache = ops.cross_entropy_forward(
        cupy.asarray(logits), cupy.asarray(target), reduction, 0.1, weight=cupy.asarray(weight)
    )
    assert dcache.fused
    np.testing.assert_allclose(cupy.asnumpy(loss), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cupy.asnumpy(ops.cross_entropy_backward(dcache)), want_grad, rtol=1e-5, atol=1e-6)
