"""The implicit-GEMM conv2d/linear kernels, run on the CPU by the cooperative harness.

``cuda_kernels/conv2d_igemm.cu`` uses ``__shared__`` tiles and ``__syncthreads``; the harness
runs each block's threads as fibers that switch at every barrier. Every case runs with the
launcher's grid and with a 3-block grid (the tile loops then cover the rest), and is compared
with PyTorch and with the NumPy path. Shapes are chosen so that no size is a multiple of the
64 x 64 x 16 tiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kernel_harness.asan_run import run_control
from kernel_harness.harness import BarrierError

import gpulayers.functional as F
from gpulayers import kernels
from gpulayers.ops import conv2d_igemm_cuda as igemm

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent


def _tol(dtype) -> dict:
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-11, "atol": 1e-11}


# (N, C, H, W), (out_channels, kh, kw), stride, padding, dilation, groups, bias
CASES = {
    "basic": ((2, 3, 7, 9), (5, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    "wide_rows": ((1, 20, 5, 6), (70, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # 70 rows: two row tiles
    "strided_dilated": ((2, 4, 11, 10), (6, 3, 2), (2, 3), (2, 1), (2, 1), 1, False),
    "groups": ((2, 6, 9, 8), (9, 3, 3), (2, 1), (1, 0), (1, 2), 3, True),
    "depthwise": ((3, 5, 6, 7), (5, 3, 3), (1, 1), (1, 1), (1, 1), 5, True),
    "pointwise": ((4, 17, 5, 3), (33, 1, 1), (1, 1), (0, 0), (1, 1), 1, True),
    "kernel_covers_input": ((2, 3, 4, 4), (2, 4, 4), (1, 1), (0, 0), (1, 1), 1, True),
    "stride_beyond_kernel": ((2, 2, 11, 11), (3, 2, 2), (3, 3), (0, 0), (1, 1), 1, True),
    "many_positions": ((3, 2, 30, 31), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # weight split
    "empty_batch": ((0, 3, 5, 5), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
}


def _inputs(case, dtype, seed=0):
    shape, (oc, kh, kw), stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((oc, shape[1] // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(oc).astype(dtype) if bias else None
    return x, w, b, stride, padding, dilation, groups


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_conv2d_igemm_matches_torch_and_numpy_path(harness, name, dtype):
    x, w, b, stride, padding, dilation, groups = _inputs(CASES[name], dtype)
    y = igemm.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    rng = np.random.default_rng(1)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = igemm.conv2d_backward_data(dy, w, x.shape, stride, padding, dilation, groups)
    dw = igemm.conv2d_backward_weight(x, dy, w.shape, stride, padding, dilation, groups)
    dw_b, db = igemm.conv2d_backward_weight_bias(x, dy, w.shape, stride, padding, dilation, groups, bias=b is not None)
    assert np.array_equal(dw_b, dw)  # the bias sums leave the weight gradient's bits alone
    assert (db is None) == (b is None)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride, padding, dilation, groups)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), **_tol(dtype))
    np.testing.assert_allclose(dx, xt.grad.numpy(), **_tol(dtype))
    np.testing.assert_allclose(dw, wt.grad.numpy(), **_tol(dtype))
    if b is not None:
        want_db = bt.grad.numpy() if bt.grad is not None else np.zeros_like(b)
        np.testing.assert_allclose(db, want_db, **_tol(dtype))

    # The NumPy path (the CPU implementation of the same op) agrees as well.
    y_cpu, cache = F.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    dx_cpu, dw_cpu, _ = F.conv2d_backward(dy, cache)
    np.testing.assert_allclose(y, y_cpu, **_tol(dtype))
    np.testing.assert_allclose(dx, dx_cpu, **_tol(dtype))
    np.testing.assert_allclose(dw, dw_cpu, **_tol(dtype))
    if x.shape[0]:
        assert {name for name, _, _ in harness.launches} >= {
            f"conv2d_igemm_forward_kernel<{'float' if dtype == np.float32 else 'double'}>"
        }


def test_conv2d_igemm_is_bitwise_independent_of_the_grid(harness_libraries, monkeypatch):
    x, w, b, stride, padding, dilation, groups = _inputs(CASES["many_positions"], np.float32)
    dy = np.random.default_rng(2).standard_normal((3, 4, 30, 31)).astype(np.float32)
    results = []
    for library in harness_libraries.values():
        monkeypatch.setattr(kernels, "get_function", library.get_function)
        y = igemm.conv2d_forward(x, w, b, stride, padding, dilation, groups)
        dx = igemm.conv2d_backward_data(dy, w, x.shape, stride, padding, dilation, groups)
        dw, db = igemm.conv2d_backward_weight_bias(x, dy, w.shape, stride, padding, dilation, groups)
        results.append((y, dx, dw, db))
    for a, b_ in zip(results[0], results[1], strict=True):
        assert np.array_equal(a, b_)


def test_weight_split_depends_on_the_shape_only():
    s = igemm.LaunchGeometry.conv((3, 2, 30, 31), (4, 2, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    splits, chunk = igemm.weight_split(s, 4)
    positions = 3 * 30 * 31
    assert splits > 1 and chunk % igemm.TILE[2] == 0
    assert (splits - 1) * chunk < positions <= splits * chunk


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7, 3), (70, 130, 65), (1, 1, 1)])  # (N, in, out)
def test_linear_on_the_igemm_kernels(harness, dtype, shape):
    n, i, o = shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, i)).astype(dtype)
    w = rng.standard_normal((o, i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    dy = rng.standard_normal((n, o)).astype(dtype)
    y = igemm.linear_forward(x, w, b)
    dx, dw, db = igemm.linear_backward(dy, x, w, bias=True)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    np.testing.assert_allclose(y, ref, **_tol(dtype))
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ w, **_tol(dtype))
    np.testing.assert_allclose(dw, dy.astype(np.float64).T @ x, **_tol(dtype))
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=0), **_tol(dtype))
    assert igemm.linear_backward(dy, x, w)[2] is None


# ----------------------------------------------------------------------------------------------
# The cooperative harness itself: negative controls (kernel_harness/coop_controls.cu)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_library(tmp_path_factory):
    return tmp_path_factory.mktemp("coop_controls")


def _run_reverse(out: Path, mode: int):
    x, y = run_control(out, mode)
    return x, y


def test_cooperative_harness_runs_a_correct_kernel(broken_library):
    x, y = _run_reverse(broken_library, mode=0)
    np.testing.assert_array_equal(y[:128], np.concatenate([x[:64][::-1], x[64:128][::-1]]))
    assert not y[128:].any()


def test_cooperative_harness_exposes_a_missing_barrier(broken_library):
    x, y = _run_reverse(broken_library, mode=1)
    assert not np.array_equal(y[:128], np.concatenate([x[:64][::-1], x[64:128][::-1]]))


def test_cooperative_harness_reports_a_barrier_not_every_thread_reaches(broken_library):
    with pytest.raises(BarrierError, match=r"reached by 63 of its 64 threads"):
        _run_reverse(broken_library, mode=2)
