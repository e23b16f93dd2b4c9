"""Acceptance checks of docs/API.md (the public API contract) that compare numbers with PyTorch.

Each section follows the contract: layers (forward, input and parameter gradients, buffers),
zero-size batches, losses, optimisers step for step, the one-training-step snippet and the
functional pairs. The contract's rules (signatures, Module members, bad input) are in
test_api_contract.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import one_block_cnn

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn, optim

tnn = torch.nn


# ---------------------------------------------------------------------------------------------
# Layers against PyTorch: forward, input gradient, parameter gradients, buffers
# ---------------------------------------------------------------------------------------------

LAYER_CASES = {
    "conv-same": (lambda ns: ns.Conv2d(2, 3, 3, padding="same"), (2, 2, 6, 7), True),
    "conv-same-even-dilated": (lambda ns: ns.Conv2d(2, 3, (2, 4), padding="same", dilation=(1, 2)), (2, 2, 6, 9), True),
    "conv-valid": (lambda ns: ns.Conv2d(2, 3, 3, padding="valid"), (2, 2, 6, 7), True),
    "conv-pair": (lambda ns: ns.Conv2d(4, 6, 3, 2, (1, 2), 1, 2, False), (2, 4, 7, 8), True),
    "maxpool-default-stride": (lambda ns: ns.MaxPool2d(2), (2, 3, 7, 6), True),
    "maxpool-pad-ceil-dilation": (lambda ns: ns.MaxPool2d(3, 2, 1, 2, ceil_mode=True), (2, 2, 9, 8), True),
    "avgpool-default": (lambda ns: ns.AvgPool2d(3), (2, 2, 7, 6), True),
    "avgpool-ceil-nopadcount": (lambda ns: ns.AvgPool2d((2, 3), (1, 2), 1, True, False), (2, 2, 7, 6), True),
    "avgpool-ceil-padcount": (lambda ns: ns.AvgPool2d(3, 2, 1, ceil_mode=True), (2, 2, 6, 6), True),
    "adaptive-int": (lambda ns: ns.AdaptiveAvgPool2d(1), (2, 3, 5, 4), True),
    "adaptive-pair": (lambda ns: ns.AdaptiveAvgPool2d((4, 3)), (2, 3, 7, 5), True),
    "adaptive-none": (lambda ns: ns.AdaptiveAvgPool2d((None, 2)), (2, 3, 5, 5), True),
    "bn2d-train": (lambda ns: ns.BatchNorm2d(3), (4, 3, 3, 3), True),
    "bn2d-eval": (lambda ns: ns.BatchNorm2d(3), (4, 3, 3, 3), False),
    "bn2d-noaffine": (lambda ns: ns.BatchNorm2d(3, affine=False), (4, 3, 3, 3), True),
    "bn2d-notrack-eval": (lambda ns: ns.BatchNorm2d(3, track_running_stats=False), (4, 3, 3, 3), False),
    "bn1d-cumulative": (lambda ns: ns.BatchNorm1d(3, momentum=None), (5, 3), True),
    "bn1d-3d": (lambda ns: ns.BatchNorm1d(3), (4, 3, 5), True),
    "linear-3d": (lambda ns: ns.Linear(5, 3), (2, 4, 5), True),
    "dropout-eval": (lambda ns: ns.Dropout(0.5), (4, 5), False),
    "leaky-default": (lambda ns: ns.LeakyReLU(), (4, 5), True),
    "flatten-negative": (lambda ns: ns.Flatten(-3, -2), (2, 3, 4, 5), True),
    "flatten-all": (lambda ns: ns.Flatten(0, -1), (2, 3, 4), True),
    "flatten-single": (lambda ns: ns.Flatten(2, 2), (2, 3, 4), True),
}


def _pair(factory):
    ours, theirs = factory(nn), factory(tnn)
    if theirs.state_dict():
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def _out_shape(factory, x, training):
    probe = factory(tnn).train(training)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(probe(torch.from_numpy(x)).shape)


def _compare(ours, theirs, x, dy, training=True, atol=1e-5):
    ours.train(training)
    theirs.train(training)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns about even 'same' kernels
        yt = theirs(xt)
    y = ours(x)
    assert y.shape == tuple(yt.shape) and y.dtype == x.dtype
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=atol, rtol=1e-5)
    dx = ours.backward(dy)
    yt.backward(torch.from_numpy(dy))
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=atol, rtol=1e-4)
    for (name, p), tp in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), atol=1e-6, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_contract_layer_matches_pytorch(case):
    factory, shape, training = LAYER_CASES[case]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    ours, theirs = _pair(factory)
    dy = rng.standard_normal(_out_shape(factory, x, training)).astype(np.float32)
    _compare(ours, theirs, x, dy, training)


def test_contract_maxpool_pads_with_minus_inf_first_tie_wins_nan_propagates():
    rng = np.random.default_rng(1)
    negative = -np.abs(rng.standard_normal((1, 2, 5, 5))).astype(np.float32) - 3  # zero padding would win
    ties = np.ones((1, 1, 4, 4), np.float32)
    nans = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    nans[0, 0, 0, 1] = np.nan
    nans[0, 0, 2, 2] = np.inf
    for factory, x in [
        (lambda ns: ns.MaxPool2d(3, 2, 1), negative),
        (lambda ns: ns.MaxPool2d(2, 1), ties),
        (lambda ns: ns.MaxPool2d(3, 1, 1), nans),
    ]:
        _compare(*_pair(factory), x, np.ones(_out_shape(factory, x, True), np.float32))
    assert np.isnan(nn.MaxPool2d(2)(nans)[0, 0, 0, 0])
    assert nn.MaxPool2d(2).stride == 2


def test_contract_batchnorm_running_var_is_unbiased():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 2, 3, 3)).astype(np.float64)
    bn = nn.BatchNorm2d(2, momentum=1.0).double()
    bn(x)
    np.testing.assert_allclose(bn.running_var, x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)


def test_contract_dropout_identity_in_eval_and_inverted_in_training():
    x = np.ones((100, 100), np.float32)
    d = nn.Dropout(0.25)
    d.eval()
    np.testing.assert_array_equal(d(x), x)
    np.testing.assert_array_equal(d.backward(x), x)
    d.train()
    y = d(x)
    assert set(np.unique(y).tolist()) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.03


# ---------------------------------------------------------------------------------------------
# Zero-size batches behave as in PyTorch
# ---------------------------------------------------------------------------------------------

EMPTY_CASES = {
    "conv": (lambda ns: ns.Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5)),
    "maxpool": (lambda ns: ns.MaxPool2d(2), (0, 2, 4, 4)),
    "avgpool": (lambda ns: ns.AvgPool2d(2), (0, 2, 4, 4)),
    "adaptive": (lambda ns: ns.AdaptiveAvgPool2d((2, 1)), (0, 2, 4, 4)),
    "bn2d": (lambda ns: ns.BatchNorm2d(2), (0, 2, 3, 3)),
    "bn1d": (lambda ns: ns.BatchNorm1d(2), (0, 2)),
    "linear": (lambda ns: ns.Linear(3, 2), (0, 3)),
    "dropout": (lambda ns: ns.Dropout(), (0, 3)),
    "relu": (lambda ns: ns.ReLU(), (0, 3)),
    "leaky": (lambda ns: ns.LeakyReLU(), (0, 3)),
    "sigmoid": (lambda ns: ns.Sigmoid(), (0, 3)),
    "tanh": (lambda ns: ns.Tanh(), (0, 3)),
    "flatten": (lambda ns: ns.Flatten(), (0, 2, 3, 3)),
    "model": (one_block_cnn, (0, 1, 28, 28)),
}


@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_contract_zero_size_batch_like_pytorch(case, training):
    factory, shape = EMPTY_CASES[case]
    x = np.zeros(shape, np.float32)
    _compare(*_pair(factory), x, np.zeros(_out_shape(factory, x, training), np.float32), training)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("which", ["ce", "ce-smooth", "mse"])
def test_contract_losses_on_empty_batch_like_pytorch(which, reduction):
    if which == "mse":
        ours, theirs = nn.MSELoss(reduction), tnn.MSELoss(reduction=reduction)
        x, t = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
        tt = torch.from_numpy(t)
    else:
        smoothing = 0.1 if which == "ce-smooth" else 0.0
        ours = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
        theirs = tnn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
        x, t = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        tt = torch.from_numpy(t)
    value = ours(x, t)
    ref = theirs(torch.from_numpy(x), tt).numpy()
    if reduction == "none":
        assert value.shape == ref.shape
    else:
        assert isinstance(value, np.ndarray) and value.shape == ()  # a 0-d array on the input's device
        np.testing.assert_array_equal(value, ref)  # nan for "mean", 0 for "sum"
    assert ours.backward().shape == x.shape


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["normal", "large-logits"])
def test_contract_cross_entropy_value_and_gradient(reduction, smoothing, label_dtype, scale):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((6, 5)) * scale).astype(np.float32)
    target = rng.integers(0, 5, 6).astype(label_dtype)
    crit = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    loss = crit(logits, target)
    lt = torch.from_numpy(logits).requires_grad_(True)
    ref = tnn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(lt, torch.from_numpy(target).long())
    ref.backward()
    assert isinstance(loss, np.ndarray) and loss.shape == () and np.isfinite(loss)
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-5)
    grad = crit.backward()
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, lt.grad.numpy(), atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_contract_mse_value_and_gradient(reduction):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 4, 2)).astype(np.float32), rng.standard_normal((3, 4, 2)).astype(np.float32)
    crit = nn.MSELoss(reduction)
    loss = crit(a, b)
    at = torch.from_numpy(a).requires_grad_(True)
    ref = tnn.MSELoss(reduction=reduction)(at, torch.from_numpy(b))
    ref.backward()
    assert isinstance(loss, np.ndarray) and loss.shape == ()
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-6)
    np.testing.assert_allclose(crit.backward(), at.grad.numpy(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Optimisers: PyTorch's formulas, step for step
# ---------------------------------------------------------------------------------------------

OPTIM_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, betas=(0.5, 0.6), weight_decay=0.5)),
]


@pytest.mark.parametrize(("name", "kwargs"), OPTIM_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIM_CASES)])
def test_contract_optimiser_matches_pytorch(name, kwargs):
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    p = nn.Parameter(w0.copy())
    tp = tnn.Parameter(torch.from_numpy(w0.copy()))
    ours, theirs = getattr(optim, name)([p], **kwargs), getattr(torch.optim, name)([tp], **kwargs)
    for _ in range(6):
        g = rng.standard_normal((3, 4)).astype(np.float32)
        ours.zero_grad()
        theirs.zero_grad()
        assert p.grad is None or not p.grad.any()
        p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    assert p.data.dtype == np.float32
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# One training step (the snippet, verbatim) and the functional pairs
# ---------------------------------------------------------------------------------------------


def test_contract_one_training_step_snippet():
    gl.manual_seed(0)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    model = one_block_cnn(nn).to(gl.default_device())
    x, y = gl.to_device(x, gl.default_device()), gl.to_device(y, gl.default_device())
    criterion = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.copy() for k, v in model.state_dict().items()}

    opt.zero_grad()
    loss = criterion(model(x), y)
    dx = model.backward(criterion.backward())
    opt.step()

    assert isinstance(loss, np.ndarray) and loss.shape == () and np.isfinite(loss)
    assert dx.shape == x.shape
    after = model.state_dict()
    changed = [k for k in before if "weight" in k or "bias" in k]
    assert all(not np.array_equal(before[k], after[k]) for k in changed)
    assert int(after["1.num_batches_tracked"]) == 1


def test_contract_functional_pairs_return_shapes():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w, b = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    y, cache = F.conv2d_forward(x, w, b, 2, 1, 2, 1)
    xt, wt, bt = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))
    ref = torch.nn.functional.conv2d(xt, wt, bt, 2, 1, 2, 1)
    np.testing.assert_allclose(y, ref.detach().numpy(), atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ref.backward(torch.from_numpy(dy))
    dx, dw, db = F.conv2d_backward(dy, cache)
    for ours, theirs in ((dx, xt), (dw, wt), (db, bt)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), atol=1e-4)

    y, cache = F.max_pool2d_forward(x, 2)
    assert y.shape == (2, 3, 3, 3) and F.max_pool2d_backward(np.ones_like(y), cache).shape == x.shape
    y, cache = F.linear_forward(x.reshape(2, -1), np.ones((5, 108), np.float32), None)
    dx, dw, db = F.linear_backward(np.ones_like(y), cache)
    assert (dx.shape, dw.shape, db) == ((2, 108), (5, 108), None)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    y, cache = F.batch_norm_forward(x, ones, zeros, zeros.copy(), ones.copy(), True, 0.1, 1e-5)
    dx, dw, db = F.batch_norm_backward(np.ones_like(y), cache)
    assert dx.shape == x.shape and dw.shape == db.shape == (3,)
    y, cache = F.dropout_forward(x, 0.5, False)
    np.testing.assert_array_equal(y, x)
    assert F.dropout_backward(np.ones_like(x), cache).shape == x.shape
