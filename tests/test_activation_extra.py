"""erf, GELU, SiLU, Softmax, LogSoftmax and Dropout2d: PyTorch parity, gradcheck, bad arguments."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from helpers import torch_forward_backward

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-6, atol=2e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}


# -- erf ------------------------------------------------------------------------------------------


def test_erf_float64_is_within_a_few_ulp_of_math_erf():
    x = np.concatenate([np.linspace(-7, 7, 20001), np.random.standard_normal(5000) * 3, [1e-300, -1e-20, 5.9, 6.0]])
    ref = np.array([math.erf(v) for v in x])
    ulp = np.abs(F.erf(x) - ref) / np.spacing(np.abs(ref))
    assert ulp.max() <= 10


def test_erf_float32_matches_torch():
    x = (np.random.standard_normal(5000) * 3).astype(np.float32)
    y = F.erf(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, torch.erf(torch.from_numpy(x)).numpy(), rtol=4e-7, atol=1e-7)


def test_erf_special_values():
    y = F.erf(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 100.0, -100.0]))
    np.testing.assert_array_equal(y[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(y[1]) and np.isnan(y[4])
    np.testing.assert_array_equal(y[5:], [1.0, -1.0])


def _normal_cdf_reference(v: float) -> float:
    """Phi(v) for v <= 0 from math.erfc, correcting for the rounding of v / sqrt(2) (which the tail
    amplifies by 2 t^2) in extended precision."""
    t = -np.longdouble(v) / np.sqrt(np.longdouble(2))
    rounded = float(t)
    return float(np.longdouble(0.5) * np.longdouble(math.erfc(rounded)) * (1 - 2 * rounded * (t - rounded)))


@pytest.mark.parametrize(("dtype", "ulps"), [(np.float64, 10), (np.float32, 8)])
def test_normal_cdf_is_accurate_relative_to_itself_in_the_lower_tail(dtype, ulps):
    x = np.linspace(-14, 0, 20001).astype(dtype)
    ref = np.array([_normal_cdf_reference(float(v)) for v in x]).astype(dtype)
    cdf, gauss = F.normal_cdf(x)
    assert cdf.dtype == gauss.dtype == dtype
    normal = ref > np.finfo(dtype).tiny
    assert (np.abs(cdf - ref)[normal] / np.spacing(ref[normal])).max() <= ulps
    exact = np.exp(-0.5 * x.astype(np.longdouble) ** 2).astype(np.float64)  # x^2 rounded would cost x^2 ulp
    big = exact > np.finfo(dtype).tiny  # subnormal results have fewer digits
    np.testing.assert_allclose(gauss[big], exact[big], rtol=4 * np.finfo(dtype).eps, atol=0)


def test_normal_cdf_upper_half_and_special_values():
    x = np.linspace(0, 9, 1001)
    ref = np.array([1 - 0.5 * math.erfc(v / math.sqrt(2)) for v in x])
    np.testing.assert_allclose(F.normal_cdf(x)[0], ref, rtol=1e-15, atol=0)
    cdf, gauss = F.normal_cdf(np.array([np.inf, -np.inf, np.nan, 40.0, -40.0]))
    np.testing.assert_array_equal(cdf[[0, 1, 3, 4]], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(gauss[[0, 1, 3, 4]], [0.0, 0.0, 0.0, 0.0])
    assert np.isnan(cdf[2]) and np.isnan(gauss[2])


# -- element-wise activations -----------------------------------------------------------------------

ACTIVATIONS = {
    "silu": (lambda: nn.SiLU(), lambda: torch.nn.SiLU()),
    "gelu": (lambda: nn.GELU(), lambda: torch.nn.GELU()),
    "gelu_tanh": (lambda: nn.GELU("tanh"), lambda: torch.nn.GELU("tanh")),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_matches_torch(device, name, dtype):
    make, make_ref = ACTIVATIONS[name]
    special = [0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 6.0, -6.0, 30.0, -30.0, 1e4, -1e4, np.nan]
    x = np.concatenate([np.random.standard_normal(67) * 4, special]).astype(dtype).reshape(8, 10)
    g = np.random.standard_normal(x.shape).astype(dtype)
    layer = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings for large |x|
        y = layer(gl.to_device(x, device))
        dx = layer.backward(gl.to_device(g, device))
    # The oracle runs in float64: in float32, 1 + erf and 1 + tanh cancel for negative x, and
    # PyTorch's float32 results there are off by up to eps32 * |x| (ours take the normal tail).
    y_ref, dx_ref = torch_forward_backward(make_ref(), x.astype(np.float64), g.astype(np.float64))
    assert y.dtype == dtype and dx.dtype == dtype
    tol = TOL[dtype]
    if dtype == np.float32 and name == "gelu_tanh":  # our tanh form runs in float32 too
        tol = dict(rtol=2e-6, atol=8e-6)
    if dtype == np.float64 and name == "gelu_tanh":  # 1 + tanh: one ulp of tanh, times |x|
        tol = dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(gl.to_numpy(y), y_ref, equal_nan=True, **tol)
    np.testing.assert_allclose(gl.to_numpy(dx), dx_ref, equal_nan=True, **tol)


def test_gelu_float32_is_closer_to_the_exact_value_than_cancellation_allows():
    x = np.array([-3.3, -4.0, -5.5], np.float32)
    exact = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    np.testing.assert_allclose(nn.GELU()(x), exact, rtol=1e-6, atol=0)  # PyTorch: 0.6 at -5.5


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradcheck(name):
    assert gl.gradcheck(ACTIVATIONS[name][0](), np.random.standard_normal((3, 5)) * 3)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match=r"GELU: expected approximate 'none' or 'tanh', got 'erf'"):
        nn.GELU("erf")
    with pytest.raises(ValueError, match="gelu: expected approximate"):
        F.gelu_forward(np.zeros(2), "fast")


def test_activation_reprs():
    assert repr(nn.SiLU()) == "SiLU()"
    assert repr(nn.GELU()) == "GELU(approximate='none')"
    assert repr(nn.GELU(approximate="tanh")) == "GELU(approximate='tanh')"
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"
    assert repr(nn.LogSoftmax(dim=-1)) == "LogSoftmax(dim=-1)"
    assert repr(nn.Dropout2d()) == "Dropout2d(p=0.5, inplace=False)"


# -- softmax / log-softmax --------------------------------------------------------------------------

SOFTMAX = {"softmax": (nn.Softmax, torch.nn.Softmax), "log_softmax": (nn.LogSoftmax, torch.nn.LogSoftmax)}


@pytest.mark.parametrize("kind", list(SOFTMAX))
@pytest.mark.parametrize("dim", [0, 1, -1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_matches_torch(device, kind, dim, dtype):
    make, make_ref = SOFTMAX[kind]
    x = (np.random.standard_normal((3, 4, 5)) * 10).astype(dtype)
    x[0, 0, 0] = 1e4  # overflows a naive exp
    g = np.random.standard_normal(x.shape).astype(dtype)
    layer = make(dim=dim)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer(gl.to_device(x, device))
        dx = layer.backward(gl.to_device(g, device))
    y_ref, dx_ref = torch_forward_backward(make_ref(dim=dim), x, g)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gl.to_numpy(y), y_ref, **tol)
    np.testing.assert_allclose(gl.to_numpy(dx), dx_ref, **tol)


@pytest.mark.parametrize("kind", list(SOFTMAX))
def test_softmax_gradcheck(kind):
    assert gl.gradcheck(SOFTMAX[kind][0](dim=1), np.random.standard_normal((2, 4, 3)))


@pytest.mark.parametrize("kind", list(SOFTMAX))
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 3, 4), (2, 3, 4, 2)])
def test_softmax_implicit_dim_follows_torch_with_a_warning(kind, shape):
    make, make_ref = SOFTMAX[kind]
    x = np.random.standard_normal(shape)
    with pytest.warns(UserWarning, match="implicit dimension"):
        y = make()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_ref = make_ref()(torch.from_numpy(x)).numpy()
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", list(SOFTMAX))
def test_softmax_bad_dim(kind):
    make = SOFTMAX[kind][0]
    name = make.__name__
    with pytest.raises(IndexError, match=rf"{name}: dim 3 is out of range for a 3-D input"):
        make(dim=3)(np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match=rf"{name}: expected dim to be an int or None, got 1.0"):
        make(dim=1.0)
    with pytest.raises(TypeError, match=rf"{name}: expected a floating-point input"):
        make(dim=0)(np.zeros(3, np.int64))


def test_softmax_backward_before_forward_names_the_layer():
    with pytest.raises(RuntimeError, match="Softmax.backward: called before forward"):
        nn.Softmax(dim=0).backward(np.zeros(3))


# -- Dropout2d --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6, 3, 5), (6, 3, 5)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout2d_drops_whole_channels(device, shape, dtype):
    p = 0.4
    x = gl.to_device(np.random.standard_normal(shape).astype(dtype) + 5.0, device)  # no zeros in x
    layer = nn.Dropout2d(p)
    y = gl.to_numpy(layer(x))
    g = np.random.standard_normal(shape).astype(dtype)
    dx = gl.to_numpy(layer.backward(gl.to_device(g, device)))
    x = gl.to_numpy(x)
    ratio = y / x
    kept = ratio.reshape(shape[:-2] + (-1,))
    assert y.dtype == dtype and dx.dtype == dtype
    # every plane is either all zero or all scaled by 1 / (1 - p); backward uses the same planes
    per_plane = kept[..., :1]
    np.testing.assert_allclose(kept, np.broadcast_to(per_plane, kept.shape), rtol=1e-6)
    scaled = np.isclose(per_plane, 1 / (1 - p), rtol=1e-6)
    assert np.all(scaled | (per_plane == 0)) and scaled.any() and (~scaled).any()
    np.testing.assert_allclose(dx, g * ratio, rtol=1e-6)


def test_dropout2d_keeps_the_expected_fraction_like_torch():
    x = np.ones((200, 50, 2, 2))
    p = 0.3
    y = nn.Dropout2d(p)(x)
    y_ref = torch.nn.Dropout2d(p)(torch.from_numpy(x)).numpy()
    ours, theirs = (y[:, :, 0, 0] > 0).mean(), (y_ref[:, :, 0, 0] > 0).mean()
    assert abs(ours - 0.7) < 0.02 and abs(theirs - 0.7) < 0.02  # 10,000 planes: 4.6 sigma
    assert set(np.unique(y)) == set(np.unique(y_ref)) == {0.0, 1 / 0.7}


def test_dropout2d_eval_and_extremes():
    x = np.random.standard_normal((2, 3, 4, 4))
    layer = nn.Dropout2d(0.5).eval()
    assert layer(x) is x
    np.testing.assert_array_equal(nn.Dropout2d(1.0)(x), 0.0)
    np.testing.assert_array_equal(nn.Dropout2d(0.0)(x), x)


def test_dropout2d_gradcheck_replays_the_mask():
    assert gl.gradcheck(nn.Dropout2d(0.5), np.random.standard_normal((2, 3, 2, 2)))


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda: nn.Dropout2d(1.5), ValueError, r"Dropout2d: expected the dropout probability p in \[0, 1\], got 1.5"),
        (lambda: nn.Dropout2d("0.5"), TypeError, "Dropout2d: expected the dropout probability p to be a number"),
        (lambda: nn.Dropout2d()(np.zeros((2, 3))), ValueError, r"Dropout2d: expected a 3-D or 4-D input"),
        (lambda: nn.Dropout2d()(np.zeros((2, 3, 4, 4), np.int32)), TypeError, "Dropout2d: expected a floating"),
    ],
)
def test_dropout2d_bad_arguments(make, err, match):
    with pytest.raises(err, match=match):
        make()
