"""Cross-entropy with weight / ignore_index / label smoothing / probability targets, NLLLoss and
BCEWithLogitsLoss, against PyTorch: loss values and input gradients, every reduction."""

from __future__ import annotations

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=3e-5, atol=1e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}
REDUCTIONS = ["mean", "sum", "none"]


def _upstream(reduction, shape, dtype, rng):
    """The gradient fed into backward: an array for "none", a scalar otherwise."""
    if reduction == "none":
        return rng.standard_normal(shape).astype(dtype)
    return np.asarray(0.7, dtype=dtype)


def _check(ours, ref, x, target, reduction, dtype, device, seed=0):
    """Loss and input gradient of ``ours`` (our criterion) and ``ref`` (PyTorch's) on the same data."""
    rng = np.random.default_rng(seed)
    loss = ours(gl.to_device(x, device), gl.to_device(target, device))
    xt = torch.from_numpy(x).requires_grad_(True)
    tt = torch.from_numpy(target)
    loss_t = ref(xt, tt)
    g = _upstream(reduction, tuple(loss_t.shape), dtype, rng)
    loss_t.backward(torch.from_numpy(g) if reduction == "none" else torch.tensor(float(g), dtype=loss_t.dtype))
    dx = ours.backward(gl.to_device(g, device) if reduction == "none" else float(g))
    np.testing.assert_allclose(np.asarray(gl.to_numpy(loss)), loss_t.detach().numpy(), **TOL[dtype])
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_allclose(gl.to_numpy(dx), xt.grad.numpy(), **TOL[dtype])


def _weights(use, c, dtype, device):
    if not use:
        return None, None
    w = np.random.default_rng(7).uniform(0.2, 2.0, c).astype(dtype)
    return gl.to_device(w, device), torch.from_numpy(w)


def _targets(shape, c, ignore_index, rng):
    """Class indices with about a quarter set to ``ignore_index``."""
    t = rng.integers(0, c, shape).astype(np.int64)
    t[rng.random(shape) < 0.25] = ignore_index
    return t


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 2, 3)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weight"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_options_match_torch(device, shape, weighted, ignore_index, smoothing, reduction, dtype):
    rng = np.random.default_rng(1)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    target = _targets((shape[0],) + shape[2:], c, ignore_index, rng)
    w, wt = _weights(weighted, c, dtype, device)
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    _check(nn.CrossEntropyLoss(w, **kw), torch.nn.CrossEntropyLoss(wt, **kw), x, target, reduction, dtype, device)


@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 2, 2)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weight"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_probability_targets_match_torch(device, shape, weighted, smoothing, reduction, dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    q = rng.random(shape)
    q = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
    w, wt = _weights(weighted, shape[1], dtype, device)
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    _check(nn.CrossEntropyLoss(w, **kw), torch.nn.CrossEntropyLoss(wt, **kw), x, q, reduction, dtype, device)


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 2, 3)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weight"])
@pytest.mark.parametrize("ignore_index", [-100, 0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_loss_matches_torch(device, shape, weighted, ignore_index, reduction, dtype):
    rng = np.random.default_rng(3)
    c = shape[1]
    x = np.log(rng.dirichlet(np.ones(c), size=(shape[0],) + shape[2:])).astype(dtype)
    x = np.moveaxis(x, -1, 1).copy()
    target = _targets((shape[0],) + shape[2:], c, ignore_index, rng)
    w, wt = _weights(weighted, c, dtype, device)
    kw = dict(ignore_index=ignore_index, reduction=reduction)
    _check(nn.NLLLoss(w, **kw), torch.nn.NLLLoss(wt, **kw), x, target, reduction, dtype, device)


def test_log_softmax_then_nll_equals_cross_entropy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3))
    t = np.array([0, 2, 1, 1, 0])
    w = np.array([0.5, 1.0, 2.0])
    ce = nn.CrossEntropyLoss(w)
    log_softmax, nll = nn.LogSoftmax(dim=1), nn.NLLLoss(w)
    assert ce(x, t) == pytest.approx(nll(log_softmax(x), t), rel=1e-14)
    np.testing.assert_allclose(ce.backward(), log_softmax.backward(nll.backward()), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kind", ["ce", "nll"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_target_ignored_matches_torch(kind, reduction):
    x = np.random.standard_normal((3, 4))
    t = np.full(3, -100)
    ours = nn.CrossEntropyLoss(reduction=reduction) if kind == "ce" else nn.NLLLoss(reduction=reduction)
    ref = torch.nn.CrossEntropyLoss(reduction=reduction) if kind == "ce" else torch.nn.NLLLoss(reduction=reduction)
    loss = ours(x, t)
    expected = ref(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_array_equal(np.asarray(loss), expected)  # NaN for "mean", zeros otherwise
    grad = ours.backward(np.ones(3) if reduction == "none" else None)
    assert grad.shape == x.shape and not np.any(grad[np.isfinite(grad)])


@pytest.mark.parametrize(
    ("weight_shape", "pos_weight_shape"),
    [(None, None), ((4,), None), (None, (4,)), ((3, 1), (4,)), ((3, 4), (1, 4))],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_matches_torch(device, weight_shape, pos_weight_shape, reduction, dtype):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 4)) * 4).astype(dtype)
    x[0, :2] = [80.0, -80.0]  # exp overflow territory for a naive formula
    y = rng.random((3, 4)).astype(dtype)
    y[1] = np.round(y[1])
    w = None if weight_shape is None else rng.uniform(0.5, 2, weight_shape).astype(dtype)
    pw = None if pos_weight_shape is None else rng.uniform(0.5, 3, pos_weight_shape).astype(dtype)
    ours = nn.BCEWithLogitsLoss(
        None if w is None else gl.to_device(w, device),
        reduction=reduction,
        pos_weight=None if pw is None else gl.to_device(pw, device),
    )
    ref = torch.nn.BCEWithLogitsLoss(
        None if w is None else torch.from_numpy(w),
        reduction=reduction,
        pos_weight=None if pw is None else torch.from_numpy(pw),
    )
    _check(ours, ref, x, y, reduction, dtype, device)


def test_bce_with_logits_functional_matches_the_float64_formula():
    x = np.linspace(-30, 30, 13)
    y = np.linspace(0, 1, 13)
    loss, cache = F.bce_with_logits_forward(x, y, reduction="none")
    s = 1 / (1 + np.exp(-x))
    # -log sigmoid(x) = log(1 + exp(-x)), -log(1 - sigmoid(x)) = log(1 + exp(x))
    expected = y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)
    np.testing.assert_allclose(loss, expected, rtol=1e-12, atol=1e-14)  # (1 - y) x + softplus(-x) cancels
    np.testing.assert_allclose(F.bce_with_logits_backward(cache, np.ones(13)), s - y, rtol=1e-12, atol=1e-15)


def test_loss_weights_are_buffers_like_torch():
    w = np.ones(3, np.float32)
    assert list(nn.CrossEntropyLoss(w).state_dict()) == list(torch.nn.CrossEntropyLoss(torch.ones(3)).state_dict())
    assert list(nn.NLLLoss().state_dict()) == list(torch.nn.NLLLoss().state_dict()) == []
    ours = nn.BCEWithLogitsLoss(w, pos_weight=w)
    assert list(ours.state_dict()) == list(
        torch.nn.BCEWithLogitsLoss(torch.ones(3), pos_weight=torch.ones(3)).state_dict()
    )
    assert ours.double().weight.dtype == np.float64


def test_loss_reprs():
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert (
        repr(nn.CrossEntropyLoss(ignore_index=3, reduction="sum"))
        == "CrossEntropyLoss(reduction='sum', ignore_index=3)"
    )
    assert repr(nn.NLLLoss()) == "NLLLoss()"
    assert repr(nn.BCEWithLogitsLoss(reduction="none")) == "BCEWithLogitsLoss(reduction='none')"


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda: nn.CrossEntropyLoss("mean"), TypeError, "CrossEntropyLoss: expected weight to be a floating"),
        (lambda: nn.CrossEntropyLoss(np.ones((2, 2))), ValueError, r"CrossEntropyLoss: expected a 1-D weight"),
        (
            lambda: nn.CrossEntropyLoss(ignore_index=1.5),
            TypeError,
            "CrossEntropyLoss: expected ignore_index to be an int",
        ),
        (lambda: nn.NLLLoss(reduction="avg"), ValueError, "NLLLoss: expected reduction 'mean', 'sum' or 'none'"),
        (lambda: nn.BCEWithLogitsLoss(pos_weight=[1.0]), TypeError, "BCEWithLogitsLoss: expected pos_weight to be"),
        (
            lambda: nn.CrossEntropyLoss(np.ones(4))(np.zeros((2, 3)), np.array([0, 1])),
            ValueError,
            r"CrossEntropyLoss: expected a weight of shape \(3,\) \(one per class\), got \(4,\)",
        ),
        (
            lambda: nn.CrossEntropyLoss(ignore_index=5)(np.zeros((2, 3)), np.array([0, 4])),
            ValueError,
            r"CrossEntropyLoss: expected class indices in \[0, 2\] or ignore_index=5 .*got 4",
        ),
        (
            lambda: nn.NLLLoss()(np.zeros((2, 3)), np.array([0, 3])),
            ValueError,
            r"NLLLoss: expected class indices in \[0, 2\] or ignore_index=-100 .*got 3",
        ),
        (
            lambda: nn.NLLLoss()(np.zeros((2, 3)), np.zeros((2, 3))),
            TypeError,
            r"NLLLoss: expected integer class indices \(int64 or int32\) as target, got dtype float64",
        ),
        (lambda: nn.NLLLoss()(np.zeros(3), np.array(1)), ValueError, r"NLLLoss: expected input of shape \(N, C\)"),
        (
            lambda: nn.BCEWithLogitsLoss()(np.zeros((2, 3)), np.zeros(3)),
            ValueError,
            r"BCEWithLogitsLoss: expected target of the input's shape \(2, 3\), got \(3,\)",
        ),
        (
            lambda: nn.BCEWithLogitsLoss()(np.zeros((2, 3)), np.zeros((2, 3), np.int64)),
            TypeError,
            "BCEWithLogitsLoss: expected a floating-point target",
        ),
        (
            lambda: nn.BCEWithLogitsLoss(pos_weight=np.ones(2))(np.zeros((2, 3)), np.zeros((2, 3))),
            ValueError,
            r"BCEWithLogitsLoss: expected a pos_weight that broadcasts to the input's shape \(2, 3\), got shape \(2,\)",
        ),
        (lambda: nn.NLLLoss().backward(), RuntimeError, "NLLLoss.backward: called before forward"),
    ],
)
def test_loss_bad_arguments(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_loss_none_backward_checks_the_upstream_shape():
    crit = nn.NLLLoss(reduction="none")
    crit(np.zeros((3, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match=r"NLLLoss.backward: expected grad_output of shape \(3,\)"):
        crit.backward(np.ones(2))
