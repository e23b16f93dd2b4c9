"""CrossEntropyLoss and MSELoss (modules and ops) against PyTorch, float64 formulas and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import requires_gpu

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def _torch_ce(logits, target, g=None, **kw):
    lt = torch.from_numpy(logits).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(lt, torch.from_numpy(target).long(), **kw)
    loss.backward(None if g is None else torch.from_numpy(g))
    return loss.detach().numpy(), lt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_module_matches_torch(device, dtype, reduction, smoothing):
    logits = (np.random.standard_normal((7, 5)) * 3).astype(dtype)
    target = np.random.randint(0, 5, size=7).astype(np.int64)
    crit = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    loss = crit(gl.to_device(logits, device), gl.to_device(target, device))
    grad = crit.backward()
    g = np.ones(7, dtype) if reduction == "none" else None
    loss_ref, grad_ref = _torch_ce(logits, target, g, reduction=reduction, label_smoothing=smoothing)
    if reduction == "none":
        assert loss.shape == (7,) and loss.dtype == dtype
        np.testing.assert_allclose(gl.to_numpy(loss), loss_ref, **TOL[dtype])
    else:
        assert loss.shape == () and gl.backend.device_of(loss) == gl.backend.device_of(gl.to_device(logits, device))
        np.testing.assert_allclose(gl.to_numpy(loss), float(loss_ref), **TOL[dtype])
    assert grad.dtype == dtype and gl.get_array_module(grad) is gl.get_array_module(gl.to_device(logits, device))
    np.testing.assert_allclose(gl.to_numpy(grad), grad_ref, **TOL[dtype])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_op_with_upstream_gradient(reduction):
    logits = np.random.standard_normal((6, 4))
    target = np.random.randint(0, 4, size=6)
    loss, cache = F.cross_entropy_forward(logits, target, reduction, 0.2)
    g = np.random.standard_normal(6) if reduction == "none" else np.array(2.5)
    loss_ref, grad_ref = _torch_ce(logits, target, g, reduction=reduction, label_smoothing=0.2)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    np.testing.assert_allclose(F.cross_entropy_backward(cache, g), grad_ref, rtol=1e-12, atol=1e-15)


def test_cross_entropy_matches_float64_formula():
    logits = np.random.standard_normal((5, 3))
    target = np.array([0, 2, 1, 1, 0])
    loss, _ = F.cross_entropy_forward(logits, target, "none")
    want = np.log(np.exp(logits).sum(1)) - logits[np.arange(5), target]
    np.testing.assert_allclose(loss, want, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_cross_entropy_large_logits_stay_finite_and_match_torch(device, dtype, scale):
    logits = (np.random.standard_normal((6, 10)) * scale).astype(dtype)
    logits[0] = scale  # ties at the maximum
    logits[1, 3] = -scale
    target = np.array([0, 3, 9, 1, 2, 5])
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = gl.to_numpy(crit(gl.to_device(logits, device), gl.to_device(target, device)))
    grad = gl.to_numpy(crit.backward())
    loss_ref, grad_ref = _torch_ce(logits, target, label_smoothing=0.1)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, float(loss_ref), rtol=1e-5)
    np.testing.assert_allclose(grad, grad_ref, **TOL[dtype])


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.uint8])
def test_cross_entropy_accepts_integer_label_dtypes(label_dtype):
    logits = np.random.standard_normal((4, 3)).astype(np.float32)
    target = np.array([2, 0, 1, 2], dtype=label_dtype)
    crit = nn.CrossEntropyLoss()
    loss = crit(logits, target)
    loss_ref, grad_ref = _torch_ce(logits, target.astype(np.int64))
    np.testing.assert_allclose(loss, float(loss_ref), rtol=1e-6)
    np.testing.assert_allclose(crit.backward(), grad_ref, rtol=1e-5, atol=1e-7)


def test_cross_entropy_spatial_targets_match_torch():
    logits = np.random.standard_normal((2, 4, 3, 3))
    target = np.random.randint(0, 4, size=(2, 3, 3))
    crit = nn.CrossEntropyLoss(label_smoothing=0.05)
    loss = crit(logits, target)
    loss_ref, grad_ref = _torch_ce(logits, target, label_smoothing=0.05)
    np.testing.assert_allclose(loss, float(loss_ref), rtol=1e-12)
    np.testing.assert_allclose(crit.backward(), grad_ref, rtol=1e-12, atol=1e-15)


def test_cross_entropy_gradient_by_finite_differences():
    logits = np.random.standard_normal((3, 4))
    target = np.array([1, 3, 0])
    _, cache = F.cross_entropy_forward(logits, target, "mean", 0.3)
    grad = F.cross_entropy_backward(cache)
    eps = 1e-6
    num = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[i] += eps
        minus[i] -= eps
        num[i] = (
            F.cross_entropy_forward(plus, target, "mean", 0.3)[0]
            - F.cross_entropy_forward(minus, target, "mean", 0.3)[0]
        ) / (2 * eps)
    np.testing.assert_allclose(grad, num, atol=1e-8)


@pytest.mark.parametrize("reduction,expected", [("mean", "nan"), ("sum", 0.0)])
def test_cross_entropy_empty_batch_as_torch(reduction, expected):
    crit = nn.CrossEntropyLoss(reduction=reduction)
    loss = crit(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    assert np.isnan(loss) if expected == "nan" else loss == expected
    assert crit.backward().shape == (0, 3)


@pytest.mark.parametrize(
    "logits,target,exc,pattern",
    [
        (np.zeros((3, 4), np.float32), np.array([0, 4, 1]), ValueError, r"class indices in \[0, 3\].*got 4"),
        (np.zeros((3, 4), np.float32), np.array([0, -1, 1]), ValueError, r"class indices in \[0, 3\].*got -1"),
        (np.zeros((3, 4), np.float32), np.array([0, 1]), ValueError, r"expected target of shape \(3,\).*got \(2,\)"),
        (np.zeros((3, 4), np.float32), np.zeros((3, 1), np.int64), ValueError, r"target of shape \(3,\).*got \(3, 1\)"),
        (np.zeros((3, 4), np.float32), np.zeros(3, np.float32), TypeError, "integer class indices.*float32"),
        (
            np.zeros((3, 4), np.float32),
            np.zeros((3, 5), np.float32),
            TypeError,
            r"class probabilities of the logits' shape \(3, 4\).*float32 of shape \(3, 5\)",
        ),
        (np.zeros(4, np.float32), np.array(1), ValueError, r"logits of shape \(N, C\).*got shape \(4,\)"),
        (np.zeros((3, 4), np.int64), np.zeros(3, np.int64), TypeError, "floating-point logits.*int64"),
        (np.zeros((3, 4), np.float32), [0, 1, 2], TypeError, "integer array of class indices, got list"),
    ],
    ids=["too-large", "negative", "short", "2-D", "float", "probabilities", "1-D", "int-logits", "list"],
)
def test_cross_entropy_bad_input(logits, target, exc, pattern):
    crit = nn.CrossEntropyLoss()
    with pytest.raises(exc, match="CrossEntropyLoss: .*" + pattern):
        crit(logits, target)
    with pytest.raises(exc, match="cross_entropy: .*" + pattern):
        F.cross_entropy_forward(logits, target)


def test_cross_entropy_bad_arguments_and_backward_errors():
    with pytest.raises(ValueError, match="CrossEntropyLoss: expected reduction 'mean', 'sum' or 'none', got 'avg'"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected label_smoothing in \[0, 1\], got 1.5"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    crit = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.backward: called before forward"):
        crit.backward()
    crit(np.zeros((3, 2)), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.backward: .*grad_output of shape \(3,\).*got \(2,\)"):
        crit.backward(np.ones(2))
    # a failed forward leaves no stale cache behind
    with pytest.raises(ValueError):
        crit(np.zeros((3, 2)), np.array([0, 5, 1]))
    with pytest.raises(RuntimeError, match="called before forward"):
        crit.backward()


def test_loss_reprs():
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1)) == (
        "CrossEntropyLoss(reduction='sum', label_smoothing=0.1)"
    )
    assert repr(nn.MSELoss()) == "MSELoss()" and repr(nn.MSELoss("none")) == "MSELoss(reduction='none')"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_module_matches_torch(device, dtype, reduction):
    x = np.random.standard_normal((4, 3, 2)).astype(dtype)
    t = np.random.standard_normal((4, 3, 2)).astype(dtype)
    crit = nn.MSELoss(reduction)
    loss = crit(gl.to_device(x, device), gl.to_device(t, device))
    grad = crit.backward()
    xt = torch.from_numpy(x).requires_grad_(True)
    lt = torch.nn.functional.mse_loss(xt, torch.from_numpy(t), reduction=reduction)
    lt.backward(torch.ones_like(lt))
    if reduction == "none":
        np.testing.assert_allclose(gl.to_numpy(loss), lt.detach().numpy(), **TOL[dtype])
    else:
        assert loss.shape == () and loss.dtype == dtype
        np.testing.assert_allclose(gl.to_numpy(loss), lt.item(), **TOL[dtype])
    assert grad.dtype == dtype
    np.testing.assert_allclose(gl.to_numpy(grad), xt.grad.numpy(), **TOL[dtype])


def test_mse_op_upstream_gradient_and_empty_batch():
    x, t = np.random.standard_normal(5), np.random.standard_normal(5)
    loss, cache = F.mse_loss_forward(x, t, "none")
    g = np.random.standard_normal(5)
    np.testing.assert_allclose(F.mse_loss_backward(cache, g), 2 * (x - t) * g, rtol=1e-13)
    loss, cache = F.mse_loss_forward(x, t, "mean")
    np.testing.assert_allclose(F.mse_loss_backward(cache, 3.0), 6 * (x - t) / 5, rtol=1e-13)
    assert np.isnan(nn.MSELoss()(np.zeros((0, 2)), np.zeros((0, 2))))


@pytest.mark.parametrize(
    "x,t,exc,pattern",
    [
        (np.zeros((3, 2)), np.zeros((3, 1)), ValueError, r"target of the input's shape \(3, 2\), got \(3, 1\)"),
        (np.zeros((3, 2)), np.zeros(2), ValueError, r"target of the input's shape \(3, 2\), got \(2,\)"),
        (np.zeros((3, 2)), np.zeros((3, 2), np.int64), TypeError, "a floating-point target.*int64"),
        (np.zeros((3, 2), np.int64), np.zeros((3, 2)), TypeError, "a floating-point input.*int64"),
    ],
    ids=["shape", "broadcast", "int-target", "int-input"],
)
def test_mse_bad_input(x, t, exc, pattern):
    with pytest.raises(exc, match="MSELoss: expected " + pattern):
        nn.MSELoss()(x, t)


def test_losses_in_a_training_step_reduce_the_loss():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    crit = nn.CrossEntropyLoss()
    x = np.random.standard_normal((16, 4)).astype(np.float32)
    y = np.random.randint(0, 3, 16)
    first = crit(model(x), y)
    for _ in range(30):
        model.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        for p in model.parameters():
            p.data -= 0.5 * p.grad
    assert crit(model(x), y) < 0.7 * first


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_label_range_checked_on_every_device(device, reduction):
    crit = nn.CrossEntropyLoss(reduction=reduction)
    logits = gl.to_device(np.zeros((3, 4), np.float32), device)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected class indices in \[0, 3\].*got 7"):
        # the CPU raises in forward; the GPU flags the batch on the device (the loss is NaN) and
        # check_targets() raises on request, without a synchronisation in every step
        bad = crit(logits, gl.to_device(np.array([0, 7, 1]), device))
        assert np.isnan(gl.to_numpy(bad)).any()
        crit.check_targets()
    loss = crit(logits, gl.to_device(np.array([0, 3, 1]), device))
    np.testing.assert_allclose(gl.to_numpy(loss), np.log(4.0) if reduction == "mean" else np.full(3, np.log(4.0)))


@pytest.mark.gpu
@requires_gpu
def test_losses_reject_mixed_devices():
    logits = gl.to_device(np.zeros((3, 4), np.float32), "cuda")
    with pytest.raises(RuntimeError, match="CrossEntropyLoss: input is on cuda:0 but the target is on cpu"):
        nn.CrossEntropyLoss()(logits, np.array([0, 1, 2]))
    with pytest.raises(RuntimeError, match="MSELoss: input is on cuda:0 but the target is on cpu"):
        nn.MSELoss()(logits, np.zeros((3, 4), np.float32))


@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_fused_cross_entropy_gradient_with_huge_logits(scale, harness_libraries, monkeypatch):
    """The GPU kernels (on the CuPy stand-in and the host harness) keep the max logit and the log of
    the sum of exponentials apart: their float32 sum would round the latter away."""
    from cupy_standin import install

    logits = (np.random.default_rng(0).standard_normal((6, 10)) * scale).astype(np.float32)
    logits[0] = scale  # ties at the maximum
    target = np.array([0, 3, 9, 1, 2, 5])
    loss_ref, grad_ref = _torch_ce(logits, target, label_smoothing=0.1)
    with install(harness_libraries["launcher"], monkeypatch) as cp:
        crit = nn.CrossEntropyLoss(label_smoothing=0.1)
        loss = crit(cp.asarray(logits), cp.asarray(target))
        grad = crit.backward().get()
    np.testing.assert_allclose(float(loss.get()), float(loss_ref), rtol=1e-6)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-7)
