"""ReLU, LeakyReLU, Sigmoid, Tanh and Dropout: PyTorch parity, NaN handling, gradcheck, mask statistics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import torch_forward_backward

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=1e-6, atol=1e-7), np.float64: dict(rtol=1e-14, atol=1e-15)}
# 1 - y**2 and y * (1 - y) cancel near saturation: a 1-ulp difference in y (libm vs PyTorch's
# vectorised tanh/exp) shows up as an absolute difference of about float32 eps in the gradient.
GRAD_TOL = {np.float32: dict(rtol=1e-6, atol=5e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}

ACTIVATIONS = [
    (lambda: nn.ReLU(), lambda: torch.nn.ReLU()),
    (lambda: nn.LeakyReLU(), lambda: torch.nn.LeakyReLU()),
    (lambda: nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2)),
    (lambda: nn.Sigmoid(), lambda: torch.nn.Sigmoid()),
    (lambda: nn.Tanh(), lambda: torch.nn.Tanh()),
]
ACT_IDS = ["relu", "leaky", "leaky0.2", "sigmoid", "tanh"]

# values at and around the kinks, large magnitudes (overflow territory for a naive sigmoid), NaN
SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 30.0, -30.0, 100.0, -100.0, 1e4, -1e4, np.inf, -np.inf]


@pytest.mark.parametrize("make,make_ref", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_matches_torch(device, make, make_ref, dtype):
    x = np.concatenate([np.random.standard_normal(40) * 5, SPECIAL, [np.nan]]).astype(dtype).reshape(5, 11)
    g = np.random.standard_normal(x.shape).astype(dtype)
    layer = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings for large |x|
        y = layer(gl.to_device(x, device))
        dx = layer.backward(gl.to_device(g, device))
    y_ref, dx_ref = torch_forward_backward(make_ref(), x, g)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(gl.to_numpy(y), y_ref, equal_nan=True, **TOL[dtype])
    np.testing.assert_allclose(gl.to_numpy(dx), dx_ref, equal_nan=True, **GRAD_TOL[dtype])


@pytest.mark.parametrize("make", [m for m, _ in ACTIVATIONS], ids=ACT_IDS)
def test_activation_nan_propagates(make):
    y = make()(np.array([np.nan, 1.0, -1.0], np.float32))
    assert np.isnan(y[0]) and not np.isnan(y[1:]).any()


@pytest.mark.parametrize("make", [m for m, _ in ACTIVATIONS], ids=ACT_IDS)
def test_activation_gradcheck(make):
    x = np.random.standard_normal((3, 4)) * 2
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink, where central differences straddle it
    assert gl.gradcheck(make(), x)


def test_sigmoid_is_exact_in_the_tails():
    y, _ = F.sigmoid_forward(np.array([-1e4, -50.0, 50.0, 1e4], np.float64))
    np.testing.assert_allclose(y, [0.0, np.exp(-50.0) / (1 + np.exp(-50.0)), 1.0, 1.0], rtol=1e-15, atol=0)
    assert y[1] > 0  # not flushed to zero by 1 - (1 - tiny)


def test_activation_reprs_and_inplace_keyword():
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert repr(nn.LeakyReLU()) == "LeakyReLU(negative_slope=0.01)"
    assert repr(nn.LeakyReLU(0.2, inplace=True)) == "LeakyReLU(negative_slope=0.2, inplace=True)"
    assert repr(nn.Sigmoid()) == "Sigmoid()" and repr(nn.Tanh()) == "Tanh()"
    x = np.array([-1.0, 2.0], np.float32)
    y = nn.ReLU(inplace=True)(x)
    np.testing.assert_array_equal(y, [0, 2])
    assert list(nn.ReLU().parameters()) == [] and nn.ReLU().state_dict() == {}


@pytest.mark.parametrize("make", [m for m, _ in ACTIVATIONS], ids=ACT_IDS)
def test_activation_bad_input(make):
    layer = make()
    name = type(layer).__name__
    with pytest.raises(TypeError, match=f"{name}: expected a floating-point input.*int64"):
        layer(np.arange(3))
    with pytest.raises(RuntimeError, match=f"{name}.backward: called before forward"):
        layer.backward(np.zeros(3, np.float32))
    layer(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=rf"{name}.backward: expected grad_output of shape \(2, 3\), got \(3,\)"):
        layer.backward(np.zeros(3, np.float32))


def test_leaky_relu_bad_slope():
    with pytest.raises(TypeError, match="LeakyReLU: expected negative_slope to be a number, got str"):
        nn.LeakyReLU("0.1")


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_mask_statistics(device, p, dtype):
    n = 200_000
    x = gl.to_device(np.full(n, 2.0, dtype=dtype), device)
    layer = nn.Dropout(p)
    y = gl.to_numpy(layer(x))
    assert y.dtype == dtype
    kept = y != 0
    # binomial: 5 standard deviations of the kept fraction
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], 2.0 / (1 - p), rtol=1e-6)
    dx = gl.to_numpy(layer.backward(gl.to_device(np.ones(n, dtype=dtype), device)))
    np.testing.assert_array_equal(dx != 0, kept)  # the same mask in backward
    np.testing.assert_allclose(dx[kept], 1 / (1 - p), rtol=1e-6)


def test_dropout_reproducible_under_manual_seed(device):
    x = gl.to_device(np.ones((64, 32), np.float32), device)
    layer = nn.Dropout(0.5)
    gl.manual_seed(123)
    a = gl.to_numpy(layer(x))
    b = gl.to_numpy(layer(x))
    gl.manual_seed(123)
    np.testing.assert_array_equal(gl.to_numpy(layer(x)), a)
    assert not np.array_equal(a, b)  # a fresh mask each call


def test_dropout_identity_in_eval_and_for_p0(device):
    x = gl.to_device(np.random.standard_normal((4, 5)).astype(np.float32), device)
    g = gl.to_device(np.random.standard_normal((4, 5)).astype(np.float32), device)
    for layer in (nn.Dropout(0.5).eval(), nn.Dropout(0.0)):
        np.testing.assert_array_equal(gl.to_numpy(layer(x)), gl.to_numpy(x))
        np.testing.assert_array_equal(gl.to_numpy(layer.backward(g)), gl.to_numpy(g))


def test_dropout_p1_gives_zeros():
    layer = nn.Dropout(1.0)
    x = np.random.standard_normal((3, 4)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and not y.any() and not np.isnan(y).any()
    assert not layer.backward(np.ones((3, 4), np.float32)).any()


def test_dropout_matches_torch_in_distribution_and_scaling():
    # Same rule as torch: kept values are x / (1 - p), the rest 0.
    x = np.random.standard_normal(10_000).astype(np.float32)
    y = nn.Dropout(0.3)(x)
    yt = torch.nn.Dropout(0.3)(torch.from_numpy(x)).numpy()
    for out in (y, yt):
        kept = out != 0
        np.testing.assert_allclose(out[kept], x[kept] / 0.7, rtol=1e-6)
        assert abs(kept.mean() - 0.7) < 0.03


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_dropout_gradcheck_with_replayed_mask(p):
    assert gl.gradcheck(nn.Dropout(p), np.random.standard_normal((4, 6)))


def test_dropout_op_pair():
    x = np.random.standard_normal((50, 50))
    y, cache = F.dropout_forward(x, 0.25, True)
    mask = cache.mask
    assert set(np.unique(mask)) <= {0.0, 1 / 0.75}
    np.testing.assert_array_equal(y, x * mask)
    np.testing.assert_array_equal(F.dropout_backward(np.ones_like(x), cache), mask)
    y, cache = F.dropout_forward(x, 0.25, False)
    assert y is x and F.dropout_backward(x, cache) is x


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match=r"Dropout: expected the dropout probability p in \[0, 1\]"):
        nn.Dropout(p)
    with pytest.raises(ValueError, match=r"dropout: expected the dropout probability p in \[0, 1\]"):
        F.dropout_forward(np.zeros(2), p, True)


def test_dropout_repr_and_errors():
    assert repr(nn.Dropout()) == "Dropout(p=0.5, inplace=False)"
    with pytest.raises(TypeError, match="Dropout: expected the dropout probability p to be a number, got str"):
        nn.Dropout("0.5")
    layer = nn.Dropout()
    with pytest.raises(TypeError, match="Dropout: expected a floating-point input"):
        layer(np.ones(3, np.int32))
    with pytest.raises(RuntimeError, match="Dropout.backward: called before forward"):
        layer.backward(np.ones(3, np.float32))


def test_dropout_empty_batch():
    y = nn.Dropout(0.5)(np.zeros((0, 4), np.float32))
    assert y.shape == (0, 4)


@pytest.mark.parametrize("upstream", [np.inf, -np.inf, np.nan])
def test_relu_backward_non_finite_upstream_matches_torch(upstream):
    # Where the output is <= 0 the gradient is exactly 0, even for an inf/NaN upstream gradient.
    x = np.array([[-2.0, -0.0, 0.0, 1.5, np.nan, 3.0]], np.float32)
    dy = np.array([[upstream, upstream, 1.0, upstream, 2.0, 1.0]], np.float32)
    layer = nn.ReLU()
    layer(x)
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    torch.relu(tx).backward(torch.tensor(dy))
    np.testing.assert_array_equal(dx, tx.grad.numpy())
