"""BatchNorm1d / BatchNorm2d and the batch_norm ops against PyTorch, float64 formulas and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, requires_gpu, torch_forward_backward

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}

# (layer class, torch class, input shape)
CASES = [
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 3)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (4, 3, 5)),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (3, 3, 4, 5)),
]
CASE_IDS = ["1d-NC", "1d-NCL", "2d"]


def _pair(cls, tcls, c, dtype, device, **kw):
    """Our layer and PyTorch's, with the same (random) affine parameters."""
    ours = cls(c, **kw).to(device, dtype)
    ref = tcls(c, **kw).to(torch.float64 if dtype == np.float64 else torch.float32)
    if ours.weight is not None:
        w = np.random.uniform(0.5, 1.5, c)
        b = np.random.uniform(-0.5, 0.5, c)
        ours.load_state_dict({**ours.state_dict(), "weight": w, "bias": b})
        with torch.no_grad():
            ref.weight.copy_(torch.from_numpy(w))
            ref.bias.copy_(torch.from_numpy(b))
    return ours, ref


@pytest.mark.parametrize("cls,tcls,shape", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_train_then_eval_matches_torch(device, cls, tcls, shape, dtype, affine, momentum):
    c = shape[1]
    ours, ref = _pair(cls, tcls, c, dtype, device, affine=affine, momentum=momentum)
    rng = np.random.default_rng(3)
    for step in range(3):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        ours.zero_grad()
        ref.zero_grad()
        y = ours(gl.to_device(x, device))
        dx = ours.backward(gl.to_device(g, device))
        y_ref, dx_ref = torch_forward_backward(ref, x, g)
        assert y.dtype == dtype and dx.dtype == dtype
        assert_close(y, y_ref, **TOL[dtype])
        assert_close(dx, dx_ref, **TOL[dtype])
        if affine:
            assert_close(ours.weight.grad, ref.weight.grad.numpy(), **TOL[dtype])
            assert_close(ours.bias.grad, ref.bias.grad.numpy(), **TOL[dtype])
        assert_close(ours.running_mean, ref.running_mean.numpy(), **TOL[dtype])
        assert_close(ours.running_var, ref.running_var.numpy(), **TOL[dtype])
        assert int(gl.to_numpy(ours.num_batches_tracked)) == int(ref.num_batches_tracked) == step + 1
    ours.eval()
    ref.eval()
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y = ours(gl.to_device(x, device))
    dx = ours.backward(gl.to_device(g, device))
    y_ref, dx_ref = torch_forward_backward(ref, x, g)
    assert_close(y, y_ref, **TOL[dtype])
    assert_close(dx, dx_ref, **TOL[dtype])
    assert set(ours.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize("cls,tcls,shape", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_without_running_stats_matches_torch(device, cls, tcls, shape, training):
    ours, ref = _pair(cls, tcls, shape[1], np.float64, device, track_running_stats=False)
    ours.train(training)
    ref.train(training)
    assert ours.running_mean is None and ours.num_batches_tracked is None
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"weight", "bias"}
    x = np.random.standard_normal(shape) * 3 + 1
    g = np.random.standard_normal(shape)
    y = ours(gl.to_device(x, device))
    dx = ours.backward(gl.to_device(g, device))
    y_ref, dx_ref = torch_forward_backward(ref, x, g)
    assert_close(y, y_ref, **TOL[np.float64])
    assert_close(dx, dx_ref, **TOL[np.float64])
    # batch statistics in eval too: each channel of the output has mean bias and std ~ weight
    axes = (0,) + tuple(range(2, len(shape)))
    np.testing.assert_allclose(gl.to_numpy(y).mean(axis=axes), gl.to_numpy(ours.bias.data), atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 3, 2, 2)], ids=["1d-L4", "2d-2x2"])
def test_batchnorm_batch_of_one_is_legal_with_several_values(shape):
    cls, tcls = (nn.BatchNorm1d, torch.nn.BatchNorm1d) if len(shape) == 3 else (nn.BatchNorm2d, torch.nn.BatchNorm2d)
    ours, ref = _pair(cls, tcls, 3, np.float64, "cpu")
    x = np.random.standard_normal(shape)
    g = np.random.standard_normal(shape)
    y_ref, dx_ref = torch_forward_backward(ref, x, g)
    assert_close(ours(x), y_ref, **TOL[np.float64])
    assert_close(ours.backward(g), dx_ref, **TOL[np.float64])
    assert_close(ours.running_var, ref.running_var.numpy(), **TOL[np.float64])


def test_batchnorm_eval_accepts_a_single_sample():
    ours, ref = _pair(nn.BatchNorm1d, torch.nn.BatchNorm1d, 4, np.float32, "cpu")
    ours.eval()
    ref.eval()
    x = np.random.standard_normal((1, 4)).astype(np.float32)
    assert_close(ours(x), ref(torch.from_numpy(x)).detach().numpy(), **TOL[np.float32])


@pytest.mark.parametrize(
    "layer,shape",
    [
        (lambda: nn.BatchNorm1d(3), (1, 3)),
        (lambda: nn.BatchNorm1d(3), (1, 3, 1)),
        (lambda: nn.BatchNorm2d(3), (1, 3, 1, 1)),
        (lambda: nn.BatchNorm1d(3, track_running_stats=False).eval(), (1, 3)),
    ],
    ids=["1d", "1d-L1", "2d", "no-running-stats-eval"],
)
def test_batchnorm_single_value_per_channel_in_training_raises(layer, shape):
    bn = layer()
    with pytest.raises(ValueError, match=r"BatchNorm[12]d: expected more than 1 value per channel.*\(1, 3"):
        bn(np.zeros(shape, dtype=np.float32))


def test_batchnorm_op_single_value_raises():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm_forward(np.ones((1, 2)), None, None, None, None, True, 0.1, 1e-5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    "cls,shape", [(nn.BatchNorm1d, (5, 3)), (nn.BatchNorm1d, (3, 2, 4)), (nn.BatchNorm2d, (2, 2, 3, 3))]
)
def test_batchnorm_gradcheck(cls, shape, training, affine):
    bn = cls(shape[1], affine=affine).double()
    bn.train()
    bn(np.random.standard_normal(shape) + 2)  # non-trivial running statistics for the eval case
    bn.train(training)
    if affine:
        bn.weight.data[...] = np.random.uniform(0.5, 1.5, shape[1])
        bn.bias.data[...] = np.random.uniform(-1, 1, shape[1])
    assert gl.gradcheck(bn, np.random.standard_normal(shape) * 2 + 1)


def test_batchnorm_gradcheck_without_running_stats():
    bn = nn.BatchNorm2d(2, track_running_stats=False).double().eval()
    assert gl.gradcheck(bn, np.random.standard_normal((2, 2, 3, 2)))


def test_batchnorm_op_matches_float64_formula_and_updates_in_place():
    x = np.random.standard_normal((8, 3, 5)) * 2 + 3
    rm, rv = np.zeros(3), np.ones(3)
    rm_id, rv_id = id(rm), id(rv)
    nbt = np.array(0, dtype=np.int64)
    w, b = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 1.0])
    y, cache = F.batch_norm_forward(x, w, b, rm, rv, True, 0.25, 1e-5, nbt)
    mean = x.mean(axis=(0, 2))
    var = x.var(axis=(0, 2))
    want = (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5) * w[None, :, None] + b[None, :, None]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * x.var(axis=(0, 2), ddof=1), rtol=1e-12)
    assert id(rm) == rm_id and id(rv) == rv_id and int(nbt) == 1
    dx, dw, db = F.batch_norm_backward(np.ones_like(x), cache)
    np.testing.assert_allclose(db, np.full(3, 40.0))
    np.testing.assert_allclose(dx, 0, atol=1e-12)  # a constant upstream gradient is normalised away


def test_batchnorm_momentum_none_is_cumulative_average():
    bn = nn.BatchNorm1d(2, momentum=None).double()
    batches = [np.random.standard_normal((6, 2)) + i for i in range(4)]
    for xb in batches:
        bn(xb)
    np.testing.assert_allclose(bn.running_mean, np.mean([xb.mean(0) for xb in batches], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean([xb.var(0, ddof=1) for xb in batches], axis=0), rtol=1e-12)


def test_batchnorm_op_momentum_none_needs_counter():
    with pytest.raises(ValueError, match="num_batches_tracked"):
        F.batch_norm_forward(np.ones((3, 2)), None, None, np.zeros(2), np.ones(2), True, None, 1e-5)


def test_batchnorm_float32_stats_stay_accurate_with_a_large_offset():
    # A one-pass E[x^2] - E[x]^2 variance would lose every digit here in float32.
    x = (1e4 + np.random.standard_normal((64, 4))).astype(np.float32)
    bn = nn.BatchNorm1d(4)
    y = bn(x)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    np.testing.assert_allclose(y, want, atol=2e-3)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x64.var(0, ddof=1), rtol=1e-3)


@pytest.mark.parametrize(
    "cls,tcls,shape",
    [(nn.BatchNorm1d, torch.nn.BatchNorm1d, (0, 3)), (nn.BatchNorm2d, torch.nn.BatchNorm2d, (0, 3, 2, 2))],
    ids=["1d", "2d"],
)
def test_batchnorm_empty_batch_as_torch(cls, tcls, shape):
    ours, ref = cls(3), tcls(3)
    x = np.zeros(shape, dtype=np.float32)
    y = ours(x)
    ref(torch.from_numpy(x))
    assert y.shape == shape
    assert ours.backward(np.zeros(shape, dtype=np.float32)).shape == shape
    np.testing.assert_array_equal(ours.running_mean, ref.running_mean.numpy())
    np.testing.assert_array_equal(ours.running_var, ref.running_var.numpy())
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)


def test_batchnorm_state_dict_round_trips_with_torch():
    ref = torch.nn.BatchNorm2d(4)
    ref(torch.randn(3, 4, 2, 2) + 1)
    ours = nn.BatchNorm2d(4)
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.num_batches_tracked.dtype == np.int64 and ours.num_batches_tracked.shape == ()
    ours.eval()
    ref.eval()
    x = np.random.standard_normal((2, 4, 3, 3)).astype(np.float32)
    assert_close(ours(x), ref(torch.from_numpy(x)).detach().numpy(), **TOL[np.float32])
    ours.double()
    assert ours.running_mean.dtype == np.float64 and ours.num_batches_tracked.dtype == np.int64


def test_batchnorm_repr_and_defaults():
    assert repr(nn.BatchNorm2d(8)) == "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    bn = nn.BatchNorm1d(3, momentum=None, affine=False)
    assert repr(bn) == "BatchNorm1d(3, eps=1e-05, momentum=None, affine=False, track_running_stats=True)"
    assert [n for n, _ in bn.named_parameters()] == []
    bn = nn.BatchNorm2d(2)
    np.testing.assert_array_equal(bn.weight.data, [1, 1])
    np.testing.assert_array_equal(bn.bias.data, [0, 0])
    assert bn.weight.dtype == np.float32


@pytest.mark.parametrize(
    "layer,x,exc,pattern",
    [
        (
            nn.BatchNorm2d(3),
            np.zeros((2, 3, 4), np.float32),
            ValueError,
            r"BatchNorm2d: expected a 4-D input.*\(2, 3, 4\)",
        ),
        (nn.BatchNorm1d(3), np.zeros((2, 3, 4, 4), np.float32), ValueError, r"BatchNorm1d: expected a 2-D or 3-D"),
        (
            nn.BatchNorm2d(3),
            np.zeros((2, 4, 2, 2), np.float32),
            ValueError,
            r"BatchNorm2d: expected input with 3 .*got 4",
        ),
        (nn.BatchNorm1d(3), np.zeros((2, 3), np.int64), TypeError, r"BatchNorm1d: expected a floating-point input"),
        (nn.BatchNorm1d(3), np.zeros((2, 3), np.float64), TypeError, r"BatchNorm1d: input dtype float64 .*float32"),
        (nn.BatchNorm1d(3, affine=False), np.zeros((2, 3), np.float64), TypeError, r"running_mean dtype float32"),
    ],
    ids=["rank-2d", "rank-1d", "channels", "int", "dtype", "dtype-no-affine"],
)
def test_batchnorm_bad_input(layer, x, exc, pattern):
    with pytest.raises(exc, match=pattern):
        layer(x)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"num_features": 0}, "num_features >= 1, got 0"),
        ({"num_features": 3, "eps": -1.0}, "a finite eps > 0"),
        ({"num_features": 3, "eps": 0}, "a finite eps > 0"),
        ({"num_features": 3, "eps": float("nan")}, "a finite eps > 0"),
        ({"num_features": 3, "momentum": 1.5}, r"momentum in \[0, 1\]"),
    ],
)
def test_batchnorm_bad_constructor_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match="BatchNorm2d: expected " + pattern):
        nn.BatchNorm2d(**kwargs)


def test_batchnorm_backward_errors():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(RuntimeError, match="BatchNorm1d.backward: called before forward"):
        bn.backward(np.zeros((2, 3), np.float32))
    bn(np.random.standard_normal((2, 3)).astype(np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d.backward: expected grad_output of shape \(2, 3\), got \(3, 3\)"):
        bn.backward(np.zeros((3, 3), np.float32))


def test_batchnorm_accumulates_parameter_grads():
    bn = nn.BatchNorm1d(3).double()
    x, g = np.random.standard_normal((4, 3)), np.random.standard_normal((4, 3))
    bn(x)
    bn.backward(g)
    first = bn.weight.grad.copy()
    bn(x)
    bn.backward(g)
    np.testing.assert_allclose(bn.weight.grad, 2 * first)


@pytest.mark.gpu
@requires_gpu
def test_batchnorm_device_mismatch_raises():
    bn = nn.BatchNorm1d(3).to("cuda")
    with pytest.raises(RuntimeError, match="BatchNorm1d: input is on cpu but the weight is on cuda"):
        bn(np.zeros((2, 3), np.float32))


def test_batchnorm_eps_zero_refused_like_torch():
    """PyTorch refuses eps <= 0 in training (it would divide by zero on constant input)."""
    with pytest.raises(ValueError, match="eps must be positive"):
        torch.nn.BatchNorm2d(1, eps=0)(torch.ones(2, 1, 2, 2))
    with pytest.raises(ValueError, match="BatchNorm2d: expected a finite eps > 0"):
        nn.BatchNorm2d(1, eps=0)
    with pytest.raises(ValueError, match="batch_norm: expected eps > 0"):
        F.batch_norm_forward(np.ones((2, 1, 2, 2)), None, None, None, None, True, 0.1, 0.0)


_HUGE = {
    "constant-1e38": lambda rng: np.full((4, 2, 2, 2), 1e38),
    "constant-3e38": lambda rng: np.full((4, 2, 2, 2), -3e38),
    "positive-near-1e38": lambda rng: rng.uniform(0.9e38, 1e38, (4, 2, 2, 2)),
    "offset-1e20": lambda rng: 1e20 + rng.uniform(-1, 1, (4, 2, 2, 2)) * 1e17,
    "mixed-sign-1e38": lambda rng: rng.uniform(-1, 1, (4, 2, 2, 2)) * 1e38,
}


@pytest.mark.parametrize("kind", list(_HUGE))
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_float32_huge_input_running_stats_match_torch(kind, momentum):
    """|x| ~ 1e38 in float32: the statistics are finite wherever PyTorch's are, and equal to them."""
    x = _HUGE[kind](np.random.default_rng(1)).astype(np.float32)
    ours, ref = nn.BatchNorm2d(2, momentum=momentum), torch.nn.BatchNorm2d(2, momentum=momentum)
    y = ours(x)
    ref(torch.from_numpy(x))
    for name in ("running_mean", "running_var"):
        want = getattr(ref, name).numpy()
        got = getattr(ours, name)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=name)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
    # The batch statistics are representable here, so the output is too (a float64 reference).
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2, 3), keepdims=True), x64.var(axis=(0, 2, 3), keepdims=True)
    if np.isfinite(var).all() and var.max() < 3e38:
        np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)


def test_batchnorm_safe_statistics_path_matches_fast_path():
    """The overflow-safe reductions (always used on CuPy) agree with the float32 fast path."""
    from gpulayers.ops import normalization as ops

    x = np.random.default_rng(2).standard_normal((5, 3, 4, 4)).astype(np.float32) * 3 + 1
    bshape = (1, 3, 1, 1)
    fast = ops._fast_stats(x, 80, bshape)
    safe = ops._safe_stats(x, 80, bshape)
    for a, b in zip(fast, safe, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _float64_batch_norm(x, dy, weight, bias, eps=1e-5):
    """BatchNorm2d forward and backward in float64 from the textbook formulas: (y, dx, dw, db)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    axes = (0, 2, 3)
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    w = weight.reshape(1, -1, 1, 1).astype(np.float64)
    y = xhat * w + bias.reshape(1, -1, 1, 1)
    m = x.size // x.shape[1]
    db = dy.sum(axis=axes)
    dw = (dy * xhat).sum(axis=axes)
    dxhat = dy * w
    dx = (m * dxhat - dxhat.sum(axis=axes, keepdims=True) - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)) / (
        m * np.sqrt(var + eps)
    )
    return y, dx, dw, db


@pytest.mark.parametrize("offset", [0.0, 3.5, 40.0], ids=["centred", "one-pass-limit", "two-pass"])
def test_batchnorm_cpu_statistics_paths_match_float64(offset):
    """Channels whose mean^2 is at most 16 variances take the one-pass sums (and the uncentred
    backward); larger offsets take the two-pass path. Both stay within a few float32 ulps."""
    from gpulayers.ops import batch_norm_cpu

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 3, 5, 7)) + offset * np.array([1.0, -1.0, 0.5]).reshape(1, 3, 1, 1)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    x64 = x.astype(np.float64)
    mean64, var64 = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    mean, var = batch_norm_cpu.channel_mean_var(x, x.size // 3)
    np.testing.assert_allclose(mean, mean64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, var64, rtol=2e-6)
    one_pass = bool((mean64**2 <= batch_norm_cpu.ONE_PASS_MAX_RATIO * var64).all())
    assert one_pass == (offset < 4), "the offsets are chosen on either side of the threshold"
    y, cache = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)
    assert cache.uncentred == one_pass
    dx, dw, db = F.batch_norm_backward(dy, cache)
    y64, dx64, dw64, db64 = _float64_batch_norm(x, dy, w, b)
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx64, rtol=1e-4, atol=1e-5)
    # dw sums ~200 products of size ~1: the float32 mean's rounding alone moves it by ~1e-5 * sum(dy).
    np.testing.assert_allclose(dw, dw64, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db, db64, rtol=1e-5, atol=1e-5)


def test_batchnorm_cpu_uncentred_backward_matches_the_centred_one():
    """``sum(x*g) - mean*sum(g)`` and ``b*x + (c - b*mean)`` (uncentred) against the centred forms."""
    import dataclasses

    rng = np.random.default_rng(6)
    x = (rng.standard_normal((8, 4, 6, 6)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.uniform(-0.5, 0.5, 4).astype(np.float32)
    for relu in (False, True):
        _, cache = F.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, relu=relu)
        assert cache.uncentred
        fast = F.batch_norm_backward(dy, cache)
        exact = F.batch_norm_backward(dy, dataclasses.replace(cache, uncentred=False))
        for a, e in zip(fast, exact, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(fast[0], np.zeros_like(fast[0]))
