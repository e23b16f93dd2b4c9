"""The CUDA kernels, run on the CPU through the g++ harness, against PyTorch and the NumPy path.

``gpulayers.kernels.get_function`` is swapped for the harness's, so the real launchers of
``gpulayers/ops/conv2d_cuda.py`` and ``max_pool2d_cuda.py`` run end to end on NumPy arrays: the
argument order, the scalar types (checked against each kernel's C signature), the launch
sizes and the GEMM glue are all exercised. Every case also runs with a 3 x 4 grid, far too
small for the work, to exercise the grid-stride loops. An AddressSanitizer/UBSan build runs
the launchers in a subprocess, with negative controls proving that it catches overflows.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_harness.fixtures import run_asan
from kernel_harness.harness import LaunchError

import gpulayers.functional as F
from gpulayers import cuda as gl_cuda
from gpulayers import kernels
from gpulayers._checks import pooled_size
from gpulayers.ops import conv2d_cuda, max_pool2d_cuda

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]


def _tol(dtype) -> dict:
    return {"rtol": 2e-4, "atol": 2e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}


# ----------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------
# (N, C, H, W), (out_channels, kh, kw), stride, padding, dilation, groups, bias
CONV_CASES = {
    "basic": ((2, 3, 7, 9), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    "stride2_groups2": ((2, 4, 8, 8), (6, 3, 3), (2, 2), (0, 0), (1, 1), 2, True),
    "mixed_no_bias": ((1, 4, 9, 7), (8, 3, 2), (2, 1), (1, 2), (2, 1), 4, False),
    "depthwise": ((2, 6, 10, 11), (6, 3, 3), (1, 1), (1, 1), (1, 1), 6, True),
    "depthwise_multiplier": ((2, 3, 8, 8), (6, 5, 5), (2, 2), (2, 2), (1, 1), 3, True),
    "one_input_channel": ((3, 1, 12, 12), (5, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    "pointwise": ((2, 8, 5, 5), (4, 1, 1), (1, 1), (0, 0), (1, 1), 1, True),
    "kernel_covers_input": ((2, 3, 4, 4), (2, 4, 4), (1, 1), (0, 0), (1, 1), 1, True),
    "dilated_padded": ((1, 2, 6, 6), (3, 3, 3), (3, 2), (3, 3), (2, 2), 1, True),
    "stride_beyond_kernel": ((2, 2, 11, 11), (2, 2, 2), (3, 3), (0, 0), (1, 1), 1, True),
    "odd_sizes": ((3, 5, 13, 6), (7, 2, 3), (1, 2), (1, 0), (3, 1), 1, True),
    "empty_batch": ((0, 3, 5, 5), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
}


def _conv_inputs(case, dtype, seed=0):
    shape, (oc, kh, kw), stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((oc, shape[1] // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(oc).astype(dtype) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _torch_conv(x, w, b, dy, opts):
    """PyTorch's float64 conv2d forward and gradients."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, **opts)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    grads = (xt.grad, wt.grad, None if bt is None else bt.grad)
    as_np = [None if g is None else g.numpy() for g in grads]
    if x.shape[0] == 0:  # PyTorch leaves untouched gradients as None
        as_np = [np.zeros_like(x), np.zeros_like(w), None if b is None else np.zeros_like(b)]
    return yt.detach().numpy(), *as_np


@pytest.mark.parametrize("algorithm", ["implicit_gemm", "im2col", "direct"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_kernels_match_torch_and_numpy_path(harness, name, dtype, algorithm):
    x, w, b, opts = _conv_inputs(CONV_CASES[name], dtype)
    y, cache = conv2d_cuda.conv2d_forward(x, w, b, **opts, algorithm=algorithm)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx, dw, db = conv2d_cuda.conv2d_backward(dy, cache)

    y_ref, dx_ref, dw_ref, db_ref = _torch_conv(x, w, b, dy, opts)
    assert y.dtype == dx.dtype == dw.dtype == dtype
    assert y.shape == y_ref.shape and dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(y, y_ref, **_tol(dtype))
    np.testing.assert_allclose(dx, dx_ref, **_tol(dtype))
    np.testing.assert_allclose(dw, dw_ref, **_tol(dtype))
    if b is None:
        assert db is None
    else:
        assert db.dtype == dtype
        np.testing.assert_allclose(db, db_ref, **_tol(dtype))

    # The NumPy path of gpulayers.functional, same dtype.
    y_np, cache_np = F.conv2d_forward(x, w, b, opts["stride"], opts["padding"], opts["dilation"], opts["groups"])
    dx_np, dw_np, db_np = F.conv2d_backward(dy, cache_np)
    np.testing.assert_allclose(y, y_np, **_tol(dtype))
    np.testing.assert_allclose(dx, dx_np, **_tol(dtype))
    np.testing.assert_allclose(dw, dw_np, **_tol(dtype))
    if b is not None:
        np.testing.assert_allclose(db, db_np, **_tol(dtype))

    if x.shape[0]:
        ran = {name.split("<")[0] for name, _, _ in harness.launches}
        expected = {
            "im2col": {"im2col_kernel", "gemm_to_nchw_kernel", "col2im_kernel"},
            "implicit_gemm": {"conv2d_igemm_forward_kernel", "conv2d_igemm_backward_data_kernel"},
            "direct": {"conv2d_direct_forward_kernel", "conv2d_direct_backward_data_kernel"},
        }[algorithm]
        assert expected <= ran


@pytest.mark.parametrize(
    ("channels", "groups", "expected"),
    [(6, 6, "direct"), (1, 1, "direct"), (3, 3, "direct"), (4, 2, "implicit_gemm"), (32, 1, "implicit_gemm")],
)
def test_conv2d_algorithm_choice(channels, groups, expected):
    assert gl_cuda.get_conv_algorithm() == "auto"
    assert conv2d_cuda.choose_algorithm(channels, groups) == expected
    large = conv2d_cuda.choose_algorithm(channels, groups, gl_cuda.IMPLICIT_GEMM_MAX_FLOPS)
    assert large == ("direct" if expected == "direct" else "im2col")  # big products go to cuBLAS


@pytest.mark.parametrize("algorithm", ["implicit_gemm", "im2col", "direct"])
def test_conv2d_algorithm_setting(harness, algorithm):
    try:
        gl_cuda.set_conv_algorithm(algorithm)
        assert conv2d_cuda.choose_algorithm(32, 1) == algorithm
        x, w, b, opts = _conv_inputs(CONV_CASES["basic"], np.float64)
        _, cache = conv2d_cuda.conv2d_forward(x, w, b, **opts)
        assert cache.algorithm == algorithm
    finally:
        gl_cuda.set_conv_algorithm("auto")


@pytest.mark.parametrize("bad", ["gemm", "cudnn", None, 3])
def test_conv2d_algorithm_setting_rejects_unknown_names(bad):
    with pytest.raises(ValueError, match="set_conv_algorithm: expected one of auto, implicit_gemm, im2col, direct"):
        gl_cuda.set_conv_algorithm(bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_conv2d_gemm_batch_chunks(harness, monkeypatch, dtype):
    """A column budget smaller than the batch: several chunks, columns rebuilt in backward."""
    x, w, b, opts = _conv_inputs(CONV_CASES["odd_sizes"], dtype, seed=3)
    per_sample = x.shape[1] * w.shape[2] * w.shape[3] * 13 * 3 * x.itemsize  # OH=13, OW=3
    monkeypatch.setattr(conv2d_cuda, "COL_BUDGET_BYTES", per_sample)  # one sample per chunk
    y, cache = conv2d_cuda.conv2d_forward(x, w, b, **opts, algorithm="im2col")
    assert cache.col is None
    dy = np.random.default_rng(4).standard_normal(y.shape).astype(dtype)
    dx, dw, db = conv2d_cuda.conv2d_backward(dy, cache)
    assert sum(name.startswith("im2col_kernel") for name, _, _ in harness.launches) == 2 * x.shape[0]
    y_ref, dx_ref, dw_ref, db_ref = _torch_conv(x, w, b, dy, opts)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        np.testing.assert_allclose(got, want, **_tol(dtype))


@pytest.mark.parametrize("algorithm", ["implicit_gemm", "im2col", "direct"])
def test_conv2d_non_contiguous_inputs(harness, algorithm):
    """Views with strides (which RawKernel would ignore) are made contiguous first."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 7, 4)).transpose(0, 3, 2, 1)[:, :, ::2, :]  # (2, 4, 4, 9), strided
    w = np.asfortranarray(rng.standard_normal((4, 2, 3, 3)))
    b = rng.standard_normal(8)[::2]
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or b.flags.c_contiguous)
    opts = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2)
    y, cache = conv2d_cuda.conv2d_forward(x, w, b, **opts, algorithm=algorithm)
    dy = rng.standard_normal(y.shape)[..., ::-1]
    dx, dw, db = conv2d_cuda.conv2d_backward(dy, cache)
    y_ref, dx_ref, dw_ref, db_ref = _torch_conv(x, w, b, np.ascontiguousarray(dy), opts)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lanes", [1, 5, 11, 24, 61, 96, 97, 250])
def test_conv2d_direct_weight_gradient_any_lane_count(harness, monkeypatch, lanes):
    """Lane counts below a row, across rows and across whole samples (out 8x12, 2 samples)."""
    x, w, b, opts = _conv_inputs(((2, 3, 8, 12), (6, 3, 3), (1, 1), (1, 1), (1, 1), 3, True), np.float64, seed=9)
    monkeypatch.setattr(conv2d_cuda, "_direct_lanes", lambda g, itemsize: lanes)
    y, cache = conv2d_cuda.conv2d_forward(x, w, b, **opts, algorithm="direct")
    dy = np.random.default_rng(10).standard_normal(y.shape)
    _, dw, _ = conv2d_cuda.conv2d_backward(dy, cache)
    np.testing.assert_allclose(dw, _torch_conv(x, w, b, dy, opts)[2], rtol=1e-10, atol=1e-10)


def test_conv2d_direct_lanes_do_not_depend_on_the_grid(harness_libraries, monkeypatch):
    """The direct weight gradient is summed in a fixed order: identical bits for any grid."""
    x, w, b, opts = _conv_inputs(CONV_CASES["depthwise"], np.float32, seed=6)
    results = []
    for library in harness_libraries.values():
        monkeypatch.setattr(kernels, "get_function", library.get_function)
        y, cache = conv2d_cuda.conv2d_forward(x, w, b, **opts, algorithm="direct")
        results.append(conv2d_cuda.conv2d_backward(np.ones_like(y), cache))
    for first, second in zip(*results, strict=True):
        np.testing.assert_array_equal(first, second)


# ----------------------------------------------------------------------------------------------
# max_pool2d
# ----------------------------------------------------------------------------------------------
# (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
POOL_CASES = {
    "2x2": ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),
    "3x3_s2_p1": ((2, 3, 9, 9), (3, 3), (2, 2), (1, 1), (1, 1), False),
    "overlapping": ((2, 2, 7, 8), (3, 3), (1, 1), (1, 1), (1, 1), False),
    "ceil_mode": ((2, 3, 7, 9), (2, 2), (2, 2), (0, 0), (1, 1), True),
    "ceil_mode_padded": ((1, 2, 10, 7), (3, 3), (2, 2), (1, 1), (1, 1), True),
    "dilated": ((2, 2, 11, 10), (3, 2), (1, 2), (1, 1), (2, 3), False),
    "dilated_ceil": ((1, 3, 12, 13), (2, 3), (3, 2), (1, 1), (2, 2), True),
    "rectangular": ((3, 2, 5, 13), (1, 4), (1, 3), (0, 2), (1, 1), True),
    "whole_plane": ((2, 4, 5, 6), (5, 6), (1, 1), (0, 0), (1, 1), False),
    "odd": ((1, 1, 13, 3), (4, 2), (3, 1), (2, 1), (1, 1), True),
    "empty_batch": ((0, 3, 6, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
    # ceil_mode windows larger than the (padded) input, or running past it, as PyTorch allows.
    "ceil_window_larger_than_input": ((1, 2, 1, 1), (2, 2), (2, 2), (0, 0), (1, 1), True),
    "ceil_window_past_padding": ((2, 2, 3, 2), (4, 3), (3, 2), (1, 1), (1, 1), True),
    "ceil_dilated_past_input": ((1, 2, 2, 3), (2, 2), (3, 3), (0, 1), (2, 3), True),
}


def _pool_opts(case):
    shape, k, s, p, d, ceil_mode = case
    out = tuple(pooled_size("t", shape[2 + i], k[i], s[i], p[i], d[i], ceil_mode, "h") for i in range(2))
    return dict(kernel=k, stride=s, padding=p, dilation=d, out_size=out), ceil_mode


def _pool_input(kind: str, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "ties":  # few distinct values: many windows hold several maxima
        return rng.integers(-1, 2, size=shape).astype(dtype)
    if kind == "nan":  # NaNs, several per window in places, among ties
        x = rng.integers(-1, 2, size=shape).astype(dtype)
        x[rng.random(shape) < 0.15] = np.nan
        return x
    if kind == "neg_inf":  # -inf everywhere but a few places: windows of only -inf
        x = np.full(shape, -np.inf, dtype=dtype)
        x[rng.random(shape) < 0.1] = 1.0
        return x
    raise ValueError(kind)


def _torch_pool(x, dy, opts, ceil_mode):
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(
        xt, opts["kernel"], opts["stride"], opts["padding"], opts["dilation"], ceil_mode=ceil_mode
    )
    yt.backward(torch.tensor(dy))
    dx = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x)
    return yt.detach().numpy(), dx


@pytest.mark.parametrize("kind", ["random", "ties", "nan", "neg_inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(POOL_CASES))
def test_max_pool2d_kernels_match_torch_exactly(harness, name, dtype, kind):
    shape = POOL_CASES[name][0]
    opts, ceil_mode = _pool_opts(POOL_CASES[name])
    x = _pool_input(kind, shape, dtype)
    y, cache = max_pool2d_cuda.max_pool2d_forward(x, **opts)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    dx = max_pool2d_cuda.max_pool2d_backward(dy, cache)

    # PyTorch, same dtype: maxima are exact and the gradient sums run in the same order.
    y_ref, dx_ref = _torch_pool(x, dy, opts, ceil_mode)
    assert y.dtype == dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    if x.size:
        np.testing.assert_array_equal(cache.argmax.reshape(-1), _torch_argmax(x, opts, ceil_mode).reshape(-1))

    # The NumPy path of gpulayers.functional.
    y_np, cache_np = F.max_pool2d_forward(
        x, opts["kernel"], opts["stride"], opts["padding"], opts["dilation"], ceil_mode
    )
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_allclose(dx, F.max_pool2d_backward(dy, cache_np), rtol=1e-6, atol=1e-6)


def _torch_argmax(x, opts, ceil_mode):
    _, idx = torch.nn.functional.max_pool2d(
        torch.tensor(x),
        opts["kernel"],
        opts["stride"],
        opts["padding"],
        opts["dilation"],
        ceil_mode=ceil_mode,
        return_indices=True,
    )
    return idx.numpy()


def test_max_pool2d_nan_picks_the_last_nan_like_torch(harness):
    x = np.array([[[[1.0, np.nan, 3.0, np.nan, 7.0, 2.0]]]])
    y, cache = max_pool2d_cuda.max_pool2d_forward(x, (1, 6), (1, 1), (0, 0), (1, 1), (1, 1))
    assert np.isnan(y).all()
    assert cache.argmax.item() == 3
    dx = max_pool2d_cuda.max_pool2d_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx, [[[[0, 0, 0, 1, 0, 0]]]])


def test_max_pool2d_window_without_input(harness):
    """2x2 input, kernel 2, dilation 3, padding 1: the window reaches only padding, so the
    output is -inf (as in PyTorch) and no input element receives its gradient."""
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    y, cache = max_pool2d_cuda.max_pool2d_forward(x, (2, 2), (1, 1), (1, 1), (3, 3), (1, 1))
    np.testing.assert_array_equal(y, [[[[-np.inf]]]])
    y_ref = torch.nn.functional.max_pool2d(torch.tensor(x), 2, stride=1, padding=1, dilation=3)
    np.testing.assert_array_equal(y, y_ref.numpy())
    np.testing.assert_array_equal(max_pool2d_cuda.max_pool2d_backward(np.ones_like(y), cache), np.zeros_like(x))


def test_max_pool2d_ceil_mode_windows_without_input(harness):
    """ceil_mode with dilation: some windows hold only padding or positions past the input. Their
    output is -inf as in PyTorch; their gradient goes nowhere (PyTorch's CPU backward sends it to
    an index past the plane), and the other windows match the NumPy path."""
    x = np.random.default_rng(11).standard_normal((2, 3, 1, 6))
    opts, ceil_mode = _pool_opts((x.shape, (2, 1), (2, 3), (1, 0), (2, 1), True))
    y, cache = max_pool2d_cuda.max_pool2d_forward(x, **opts)
    y_ref = torch.nn.functional.max_pool2d(torch.tensor(x), (2, 1), (2, 3), (1, 0), (2, 1), ceil_mode=True)
    np.testing.assert_array_equal(y, y_ref.numpy())
    assert np.isneginf(y).all()
    dy = np.random.default_rng(12).standard_normal(y.shape)
    np.testing.assert_array_equal(max_pool2d_cuda.max_pool2d_backward(dy, cache), np.zeros_like(x))
    y_np, cache_np = F.max_pool2d_forward(x, (2, 1), (2, 3), (1, 0), (2, 1), ceil_mode)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, cache_np), np.zeros_like(x))


def test_max_pool2d_non_contiguous_input(harness):
    x = np.random.default_rng(7).standard_normal((2, 10, 9, 3)).transpose(0, 3, 2, 1)  # (2, 3, 9, 10)
    opts, ceil_mode = _pool_opts((x.shape, (3, 3), (2, 2), (1, 1), (1, 1), True))
    y, cache = max_pool2d_cuda.max_pool2d_forward(x, **opts)
    dy = np.ones(y.shape)[:, :, ::-1]
    y_ref, dx_ref = _torch_pool(x, np.ascontiguousarray(dy), opts, ceil_mode)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(max_pool2d_cuda.max_pool2d_backward(dy, cache), dx_ref)


# ----------------------------------------------------------------------------------------------
# Launch plumbing
# ----------------------------------------------------------------------------------------------
def test_launch_config_caps_the_grid():
    assert kernels.launch_config(1) == (1, kernels.BLOCK_SIZE)
    assert kernels.launch_config(kernels.BLOCK_SIZE + 1) == (2, kernels.BLOCK_SIZE)
    assert kernels.launch_config(10**12) == (kernels.MAX_GRID, kernels.BLOCK_SIZE)


def test_launchers_use_the_capped_grid(harness_libraries, monkeypatch):
    """More work than MAX_GRID blocks cover relies on the grid-stride loop: still exact."""
    library = harness_libraries["launcher"]
    library.launches.clear()
    monkeypatch.setattr(kernels, "get_function", library.get_function)
    monkeypatch.setattr(kernels, "MAX_GRID", 2)
    x = np.random.default_rng(8).standard_normal((2, 3, 40, 30))
    y, cache = max_pool2d_cuda.max_pool2d_forward(x, (2, 1), (2, 1), (0, 0), (1, 1), (20, 30))
    dx = max_pool2d_cuda.max_pool2d_backward(np.ones_like(y), cache)
    assert [grid for _, grid, _ in library.launches] == [(2, 1, 1), (2, 1, 1)]
    np.testing.assert_array_equal(y, np.maximum(x[:, :, 0::2], x[:, :, 1::2]))
    np.testing.assert_array_equal(dx.sum(axis=2), np.ones((2, 3, 30)) * 20)


def test_unsupported_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="float32 or float64.*float16"):
        max_pool2d_cuda.max_pool2d_forward(np.zeros((1, 1, 4, 4), np.float16), (2, 2), (2, 2), (0, 0), (1, 1), (2, 2))
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        conv2d_cuda.conv2d_forward(np.zeros((1, 1, 4, 4), np.int64), np.zeros((1, 1, 3, 3), np.int64), None)


@pytest.mark.parametrize(
    ("position", "bad", "match"),
    [
        (4, 3, r"needs int32, got int"),  # a Python int would be passed as long long
        (3, np.int32(10), r"needs int64"),
        (0, np.zeros((1, 1, 4, 4), np.float32), r"needs dtype float64"),
        (0, np.zeros((1, 1, 4, 8))[..., ::2], r"C-contiguous"),
        (2, np.zeros((1, 1, 2, 2), np.int64), r"needs dtype int32"),
    ],
)
def test_harness_rejects_what_would_break_on_the_gpu(harness_libraries, position, bad, match):
    """The argument checks behind every harness launch can fail (negative controls)."""
    kernel = harness_libraries["launcher"].kernel("max_pool2d.cu", "max_pool2d_forward_kernel", np.float64)
    x, y, argmax = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int32)
    args = [x, y, argmax, np.int64(4)] + [np.int32(v) for v in (4, 4, 2, 2, 2, 2, 2, 2, 0, 0, 1, 1)]
    kernel((1,), (32,), tuple(args))  # the correct call runs
    args[position] = bad
    with pytest.raises(LaunchError, match=match):
        kernel((1,), (32,), tuple(args))


# ----------------------------------------------------------------------------------------------
# AddressSanitizer / UBSan
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["clean", "optim-clean"])
def test_kernels_are_clean_under_address_sanitizer(asan_build, mode):
    """Every launcher (conv, pooling; the fused optimiser steps) on many shapes and both grids."""
    result = run_asan(asan_build, mode)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "ASAN_CLEAN_RUN_OK" in result.stdout
    assert "runtime error" not in result.stderr  # UBSan
    assert "AddressSanitizer" not in result.stderr


@pytest.mark.parametrize("mode", ["overflow-write", "overflow-read", "optim-overflow"])
def test_address_sanitizer_catches_a_wrong_launch_size(asan_build, mode):
    """Negative control: the same build aborts on a deliberately out-of-bounds launch."""
    result = run_asan(asan_build, mode)
    assert result.returncode != 0
    assert "OVERFLOW_NOT_DETECTED" not in result.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr


def test_address_sanitizer_guards_cooperative_shared_memory(asan_build):
    result = run_asan(asan_build, "shared-overflow")
    assert result.returncode != 0, result.stdout
    assert "OVERFLOW_NOT_DETECTED" not in result.stdout
    # UBSan's object-size check or ASan's redzone around the static array reports the write first.
    assert "coop_controls.cu" in result.stderr
    assert "global-buffer-overflow" in result.stderr or "insufficient space" in result.stderr
