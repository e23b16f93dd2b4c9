"""MaxPool2d, AvgPool2d, AdaptiveAvgPool2d and their ops against PyTorch, gradcheck and hand values."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_backward_guards, requires_gpu

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")
TF = torch.nn.functional

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
NAN, INF = float("nan"), float("inf")


def _both(ours: nn.Module, ref, x: np.ndarray, device: str, g: np.ndarray | None = None):
    """(y, dx) of our layer on ``device`` and of the PyTorch callable ``ref``, as NumPy."""
    y = ours(gl.to_device(x, device))
    if g is None:
        g = np.random.standard_normal(y.shape).astype(x.dtype)
    dx = ours.backward(gl.to_device(g, device))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(g))
    return (gl.to_numpy(y), gl.to_numpy(dx)), (yt.detach().numpy(), xt.grad.numpy())


# -- values computed by hand -------------------------------------------------------------------------


def test_max_pool2d_golden_value(device):
    x = np.array([[1, 2, 3, 0], [4, 5, 6, 1], [7, 8, 9, 2], [3, 2, 1, 0]], dtype=np.float32).reshape(1, 1, 4, 4)
    pool = nn.MaxPool2d(2, stride=2)
    y = pool(gl.to_device(x, device))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(gl.to_numpy(y), [[[[5, 6], [8, 9]]]])
    dx = gl.to_numpy(pool.backward(gl.to_device(np.ones((1, 1, 2, 2), np.float32), device)))
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


def test_avg_pool2d_golden_value(device):
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    pool = nn.AvgPool2d(2)
    np.testing.assert_allclose(gl.to_numpy(pool(gl.to_device(x, device))), [[[[2.5, 4.5], [10.5, 12.5]]]])


# -- PyTorch parity ----------------------------------------------------------------------------------

MAX_CASES = [
    pytest.param(2, {}, (7, 9), id="k2-odd-size"),
    pytest.param(3, dict(stride=2, padding=1), (7, 8), id="k3-s2-p1"),
    pytest.param((2, 3), dict(stride=(1, 2), padding=(1, 1)), (6, 7), id="rect"),
    pytest.param(3, dict(stride=1, dilation=2), (8, 7), id="dilation"),
    pytest.param(2, dict(ceil_mode=True), (7, 9), id="ceil"),
    pytest.param(3, dict(stride=2, padding=1, ceil_mode=True), (6, 8), id="ceil-pad"),
    pytest.param(3, dict(stride=2, dilation=(2, 1), ceil_mode=True), (9, 6), id="ceil-dilation"),
    pytest.param(3, dict(stride=1, padding=1), (5, 5), id="overlapping"),
    pytest.param(2, {}, (28, 28), id="mnist-shape"),
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, opts, hw", MAX_CASES)
def test_max_pool2d_matches_torch(device, dtype, k, opts, hw, batch):
    x = np.random.standard_normal((batch, 3, *hw)).astype(dtype)
    x[0, 0] = np.round(x[0, 0])  # plenty of ties in one plane
    (y, dx), (yt, dxt) = _both(nn.MaxPool2d(k, **opts), lambda t: TF.max_pool2d(t, k, **opts), x, device)
    assert y.shape == yt.shape and y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(y, yt)
    np.testing.assert_allclose(dx, dxt, **TOL[dtype])


AVG_CASES = [
    pytest.param(2, {}, (7, 9), id="k2-odd-size"),
    pytest.param(3, dict(stride=2, padding=1), (7, 8), id="k3-s2-p1"),
    pytest.param(3, dict(stride=2, padding=1, count_include_pad=False), (7, 8), id="exclude-pad"),
    pytest.param((2, 3), dict(stride=(1, 2), padding=(1, 1)), (6, 7), id="rect"),
    pytest.param(3, dict(stride=2, padding=1, ceil_mode=True), (6, 8), id="ceil-pad"),
    pytest.param(3, dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False), (6, 8), id="ceil-exclude"),
    pytest.param(2, dict(ceil_mode=True), (5, 5), id="ceil-clipped-window"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, opts, hw", AVG_CASES)
def test_avg_pool2d_matches_torch(device, dtype, k, opts, hw):
    x = np.random.standard_normal((2, 3, *hw)).astype(dtype)
    (y, dx), (yt, dxt) = _both(nn.AvgPool2d(k, **opts), lambda t: TF.avg_pool2d(t, k, **opts), x, device)
    assert y.shape == yt.shape and y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y, yt, **TOL[dtype])
    np.testing.assert_allclose(dx, dxt, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "size, hw",
    [(1, (5, 7)), (2, (6, 6)), (3, (7, 5)), ((2, 4), (5, 9)), ((None, 3), (4, 7)), ((6, 1), (4, 4)), (5, (5, 5))],
)
def test_adaptive_avg_pool2d_matches_torch(device, dtype, size, hw):
    x = np.random.standard_normal((2, 3, *hw)).astype(dtype)
    (y, dx), (yt, dxt) = _both(nn.AdaptiveAvgPool2d(size), lambda t: TF.adaptive_avg_pool2d(t, size), x, device)
    assert y.shape == yt.shape and y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y, yt, **TOL[dtype])
    np.testing.assert_allclose(dx, dxt, **TOL[dtype])


def test_pooling_functional_pairs_match_torch():
    x = np.random.standard_normal((2, 2, 7, 6))
    g = np.random.standard_normal((2, 2, 4, 3))
    cases = [
        (F.max_pool2d_forward, F.max_pool2d_backward, (3, 2, 1), lambda t: TF.max_pool2d(t, 3, 2, 1)),
        (F.avg_pool2d_forward, F.avg_pool2d_backward, (3, 2, 1), lambda t: TF.avg_pool2d(t, 3, 2, 1)),
        (F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward, ((4, 3),),
         lambda t: TF.adaptive_avg_pool2d(t, (4, 3))),
    ]  # fmt: skip
    for forward, backward, args, ref in cases:
        y, cache = forward(x, *args)
        dx = backward(g, cache)
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = ref(xt)
        yt.backward(torch.from_numpy(g))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12)


# -- max pooling: ties, NaN, -inf --------------------------------------------------------------------


@pytest.mark.parametrize(
    "window",
    [
        [3, 3, 1, 2],  # tie: the first maximum wins
        [1, 3, 3, 3],
        [1, NAN, 3, 2],  # a NaN always wins
        [NAN, 1, NAN, 2],  # ...and the last NaN of the window takes the gradient
        [NAN, NAN, NAN, NAN],
        [INF, NAN, INF, 1],
        [-INF, -INF, -INF, -INF],  # all -inf: the first pixel
        [-INF, -INF, -5, -INF],
    ],
)
@pytest.mark.parametrize("padding", [0, 1])
def test_max_pool2d_ties_nan_and_inf_like_torch(device, window, padding):
    x = np.array(window, dtype=np.float32).reshape(1, 1, 2, 2)
    g = np.arange(1, 10, dtype=np.float32)[: (1 + 2 * padding) ** 2].reshape(1, 1, 1 + 2 * padding, -1)
    (y, dx), (yt, dxt) = _both(
        nn.MaxPool2d(2, stride=1, padding=padding), lambda t: TF.max_pool2d(t, 2, 1, padding), x, device, g
    )
    np.testing.assert_array_equal(y, yt)  # NaN compares equal to NaN here
    np.testing.assert_array_equal(dx, dxt)


def test_max_pool2d_pads_with_minus_infinity(device):
    x = -1 - np.random.rand(2, 3, 5, 5).astype(np.float32)  # all negative: zero padding would win
    (y, dx), (yt, dxt) = _both(nn.MaxPool2d(3, stride=2, padding=1), lambda t: TF.max_pool2d(t, 3, 2, 1), x, device)
    assert (y < -1).all()
    np.testing.assert_array_equal(y, yt)
    np.testing.assert_allclose(dx, dxt, rtol=1e-6)


def test_max_pool2d_nan_propagates_through_a_batch():
    x = np.random.standard_normal((2, 2, 6, 6))
    x[1, 0, 2, 3] = NAN
    x[0, 1, 0, 0] = -INF
    (y, dx), (yt, dxt) = _both(nn.MaxPool2d(3, stride=2, padding=1), lambda t: TF.max_pool2d(t, 3, 2, 1), x, "cpu")
    assert np.isnan(y).sum() == np.isnan(yt).sum() > 0
    np.testing.assert_array_equal(y, yt)
    np.testing.assert_allclose(dx, dxt, rtol=1e-12)  # overlapping windows: summation order differs


def test_max_pool2d_backward_routes_non_finite_gradients_like_torch():
    x = np.random.standard_normal((1, 2, 4, 4)).astype(np.float32)
    g = np.random.standard_normal((1, 2, 2, 2)).astype(np.float32)
    g[0, 0, 0, 1], g[0, 1, 1, 0] = INF, NAN
    for k, s in ((2, 2), (3, 1)):
        gk = g if s == 2 else np.random.standard_normal((1, 2, 2, 2)).astype(np.float32) * np.array([1, INF])
        (_, dx), (_, dxt) = _both(nn.MaxPool2d(k, s), lambda t, k=k, s=s: TF.max_pool2d(t, k, s), x, "cpu", gk)
        np.testing.assert_array_equal(dx, dxt)  # non-finite values only where the maxima are


# -- gradcheck ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(lambda: nn.MaxPool2d(2), id="max-k2"),
        pytest.param(lambda: nn.MaxPool2d(3, stride=2, padding=1), id="max-k3-s2-p1"),
        pytest.param(lambda: nn.MaxPool2d(3, stride=1, dilation=2), id="max-dilation"),
        pytest.param(lambda: nn.MaxPool2d(2, ceil_mode=True), id="max-ceil"),
        pytest.param(lambda: nn.AvgPool2d(2), id="avg-k2"),
        pytest.param(lambda: nn.AvgPool2d(3, stride=2, padding=1), id="avg-pad"),
        pytest.param(lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), id="avg-exclude-pad"),
        pytest.param(lambda: nn.AvgPool2d((2, 3), stride=2, padding=1, ceil_mode=True), id="avg-ceil"),
        pytest.param(lambda: nn.AdaptiveAvgPool2d(1), id="adaptive-global"),
        pytest.param(lambda: nn.AdaptiveAvgPool2d((2, 3)), id="adaptive-not-dividing"),
        pytest.param(lambda: nn.AdaptiveAvgPool2d((5, 1)), id="adaptive-dividing"),
        pytest.param(lambda: nn.AdaptiveAvgPool2d((None, 4)), id="adaptive-none"),
    ],
)
def test_pooling_gradcheck(layer):
    # distinct values, so that no finite-difference step changes which element is the maximum
    x = np.random.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) / 10.0
    assert gl.gradcheck(layer(), x)


# -- layer surface -----------------------------------------------------------------------------------


def test_pooling_reprs_and_defaults_match_torch():
    for ours, ref in [
        (nn.MaxPool2d(2), torch.nn.MaxPool2d(2)),
        (nn.MaxPool2d((3, 2), stride=1, padding=1, dilation=2, ceil_mode=True),
         torch.nn.MaxPool2d((3, 2), stride=1, padding=1, dilation=2, ceil_mode=True)),
        (nn.AvgPool2d(3, 1, 1), torch.nn.AvgPool2d(3, 1, 1)),
        (nn.AdaptiveAvgPool2d((None, 3)), torch.nn.AdaptiveAvgPool2d((None, 3))),
    ]:  # fmt: skip
        assert repr(ours) == repr(ref)
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)"
    assert nn.MaxPool2d(3).stride == 3 and nn.AvgPool2d(3).stride == 3
    assert list(nn.MaxPool2d(2).state_dict()) == []


@pytest.mark.parametrize("layer", [nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3)], ids=repr)
def test_pooling_zero_size_batch_gives_empty_output(device, layer):
    x = gl.to_device(np.zeros((0, 3, 6, 6), np.float32), device)
    y = layer(x)
    assert y.shape == (0, 3, 3, 3) and y.dtype == np.float32
    assert layer.backward(gl.to_device(np.zeros((0, 3, 3, 3), np.float32), device)).shape == (0, 3, 6, 6)


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: nn.MaxPool2d(2, stride=0), ValueError, r"MaxPool2d: expected stride >= 1"),
        (lambda: nn.MaxPool2d(0), ValueError, r"MaxPool2d: expected kernel_size >= 1"),
        (lambda: nn.MaxPool2d(3, padding=-1), ValueError, r"MaxPool2d: expected padding >= 0"),
        (lambda: nn.MaxPool2d(3, padding=2), ValueError, r"MaxPool2d: expected padding at most half of kernel_size"),
        (lambda: nn.MaxPool2d(2, dilation=0), ValueError, r"MaxPool2d: expected dilation >= 1"),
        (lambda: nn.AvgPool2d(2, padding=(0, 2)), ValueError, r"AvgPool2d: expected padding at most half"),
        (lambda: nn.AvgPool2d(2.5), TypeError, r"AvgPool2d: expected kernel_size to be an int or a pair"),
        (lambda: nn.AdaptiveAvgPool2d(0), ValueError, r"AdaptiveAvgPool2d: expected output_size entries >= 1"),
        (lambda: nn.AdaptiveAvgPool2d((1, 2, 3)), TypeError, r"AdaptiveAvgPool2d: expected output_size to be"),
    ],
)
def test_pooling_rejects_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("layer", [nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(2)], ids=repr)
def test_pooling_rejects_bad_input(layer):
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}: expected a 4-D input \(N, C, H, W\), got shape \(3, 5, 5\)"):
        layer(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(TypeError, match=rf"{name}: expected a floating-point input .* got dtype int32"):
        layer(np.zeros((1, 3, 5, 5), np.int32))
    assert_backward_guards(layer, np.zeros((1, 3, 5, 5), np.float32), (1, 3, 2, 2))


@pytest.mark.parametrize("layer", [nn.MaxPool2d(3), nn.MaxPool2d(2, dilation=3), nn.AvgPool2d((1, 4))], ids=repr)
def test_pooling_rejects_window_larger_than_padded_input(layer):
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: the window \(\d after dilation\) is larger"):
        layer(np.zeros((1, 1, 2, 3), np.float32))


def test_pooling_ops_name_themselves_in_errors():
    with pytest.raises(ValueError, match=r"max_pool2d: expected padding at most half"):
        F.max_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, padding=2)
    with pytest.raises(ValueError, match=r"avg_pool2d: expected stride >= 1"):
        F.avg_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, stride=0)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: expected a 4-D input"):
        F.adaptive_avg_pool2d_forward(np.zeros((4, 4)), 2)
    with pytest.raises(RuntimeError, match=r"max_pool2d.backward: called before forward"):
        F.max_pool2d_backward(np.zeros((1, 1, 2, 2)), None)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("layer", [nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3)], ids=repr)
def test_pooling_rejects_gradient_on_another_device(layer):
    layer(gl.to_device(np.zeros((1, 2, 6, 6), np.float32), "cuda"))
    with pytest.raises(RuntimeError, match=rf"{type(layer).__name__}.backward: grad_output is on cpu but the forward"):
        layer.backward(np.zeros((1, 2, 3, 3), np.float32))


def _torch_rule_winners(x: np.ndarray, kernel: tuple, padding: tuple, out: tuple) -> np.ndarray:
    """Each window's winning offset (row-major) by PyTorch's CPU rules, one strided view per
    offset of an explicitly padded copy: the first real pixel is the starting candidate, then a
    real pixel wins when it is greater or NaN (padding never does). Stride = kernel, no dilation."""
    (kh, kw), (ph, pw), (oh, ow) = kernel, padding, out
    n, c, h, w = x.shape
    buf = np.full((n, c, oh * kh, ow * kw), -INF, dtype=x.dtype)
    real = np.zeros(buf.shape, dtype=bool)
    buf[:, :, ph : ph + h, pw : pw + w] = x
    real[:, :, ph : ph + h, pw : pw + w] = True
    best = np.full((n, c, oh, ow), NAN, dtype=x.dtype)
    win = np.full((n, c, oh, ow), -1)
    for t in range(kh * kw):
        v = buf[:, :, t // kw :: kh, t % kw :: kw]
        takes = real[:, :, t // kw :: kh, t % kw :: kw] & ((win < 0) | (v > best) | np.isnan(v))
        best, win = np.where(takes, v, best), np.where(takes, t, win)
    assert (win >= 0).all()
    return win


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "window",
    [
        dict(kernel_size=2),
        dict(kernel_size=(3, 2)),
        dict(kernel_size=(1, 3)),
        dict(kernel_size=2, padding=1),  # the padded 8x8 buffer is tiled
        dict(kernel_size=3, ceil_mode=True),  # 7 -> 9 with the ceil-mode extension: tiled
        dict(kernel_size=3, padding=1, ceil_mode=True),  # 6 + 2 -> 9: padding and the ceil extension
    ],
    ids=["k2", "k3x2", "k1x3", "k2-pad1", "k3-ceil", "k3-pad1-ceil"],
)
@pytest.mark.parametrize("special", ["finite", "nan-inf"])
def test_max_pool2d_scatter_backward_of_tiling_windows(monkeypatch, dtype, window, special):
    """Windows that tile the (padded) input: the forward keeps each winner's absolute flat index
    in the padded gradient, and backward zeroes each block and scatters to those indices. It must
    give PyTorch's gradient bitwise and the one of an independent per-offset reference (inf and
    NaN gradients, NaN and +-inf inputs, ties), +0 for every loser, over several uneven blocks of
    more than one sample, and the same again from a second backward on the same cache."""
    from gpulayers import threads
    from gpulayers.ops import max_pool2d as ops

    rng = np.random.default_rng(21)
    size = 7 if window.get("ceil_mode") and "padding" not in window else 6
    x = rng.integers(-3, 4, (9, 3, size, size)).astype(dtype)  # small integers: many ties
    x[::2] += rng.standard_normal(x[::2].shape).astype(dtype)
    if special == "nan-inf":
        x.flat[4::23] = NAN
        x.flat[7::29] = -INF
        x.flat[11::31] = INF
        x[1, 2] = NAN  # a whole plane of NaN: the last NaN of each window wins
        x[2, 1] = -INF  # all -inf: the first real pixel wins
    a = ops.pool_arguments(
        "t", window["kernel_size"], None, window.get("padding", 0), 1, window.get("ceil_mode", False)
    )
    out = ops.pooled_output_size("t", x, a)
    padded = (out[0] * a.kernel[0]) * (out[1] * a.kernel[1])
    assert ops._padded_shape(x.shape, a, out)[2:] == (out[0] * a.kernel[0], out[1] * a.kernel[1])  # tiling
    # Two padded samples a block (the forward's and the backward's unit): blocks (0, 1), (1, 3),
    # (3, 5), (5, 7), (7, 9), so the indices must count from the batch's start, not the block's.
    monkeypatch.setattr(threads, "BLOCK_BYTES", 2 * 3 * padded * np.dtype(dtype).itemsize)
    assert len(threads.batch_blocks(9, 3 * padded * np.dtype(dtype).itemsize)) == 5
    previous = gl.get_num_threads()
    gl.set_num_threads(2)
    try:
        y, cache = ops.max_pool2d_forward(x, **window)
        assert cache.data.dtype == np.intp and cache.data.shape == y.shape  # the tiling path's indices
        # each kept index lies in its own window of the padded input, at a value equal to the maximum
        padded_x = np.full((*x.shape[:2], out[0] * a.kernel[0], out[1] * a.kernel[1]), -INF, dtype=dtype)
        padded_x[:, :, a.padding[0] : a.padding[0] + size, a.padding[1] : a.padding[1] + size] = x
        n, c, r, col = np.unravel_index(cache.data, padded_x.shape)
        grid = np.indices(y.shape)
        assert (n == grid[0]).all() and (c == grid[1]).all()
        assert (r // a.kernel[0] == grid[2]).all() and (col // a.kernel[1] == grid[3]).all()
        np.testing.assert_array_equal(padded_x[n, c, r, col], y)
        g = rng.standard_normal(y.shape).astype(dtype)
        if special == "nan-inf":
            g.flat[::5] = INF
            g.flat[1::6] = -INF
            g.flat[2::7] = NAN
        kept = cache.data.copy()
        dx = ops.max_pool2d_backward(g, cache)
        again = ops.max_pool2d_backward(g, cache)
    finally:
        gl.set_num_threads(previous)
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_array_equal(cache.data, kept)
    np.testing.assert_array_equal(again, dx)
    assert not np.signbit(dx[dx == 0]).any()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = TF.max_pool2d(xt, **window)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    # The independent reference: PyTorch's rules on a padded copy, one strided write per offset.
    (kh, kw), (ph, pw) = a.kernel, a.padding
    win = _torch_rule_winners(x, a.kernel, a.padding, out)
    want = np.zeros((*x.shape[:2], out[0] * kh, out[1] * kw), dtype=dtype)
    for t in range(kh * kw):
        view = want[:, :, t // kw :: kh, t % kw :: kw]
        view[...] = np.where(win == t, g, view)
    want = want[:, :, ph : ph + size, pw : pw + size]
    np.testing.assert_array_equal(dx, want)
    assert np.array_equal(np.signbit(dx), np.signbit(want))
