"""A whole small CNN trained side by side with PyTorch: losses, gradients, parameters and buffers agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_close, copy_weights, small_cnn, small_cnn_pair

import gpulayers as gl
from gpulayers import nn, optim


def _cnn(lib):
    """The tests' small CNN (12x12 images, biased convolutions) from ``gpulayers.nn`` or ``torch.nn``."""
    return small_cnn(lib, conv_bias=True)


def _optimisers(kind: str, ours, theirs):
    if kind == "sgd":
        return (
            optim.SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True),
            torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True),
        )
    if kind == "adam":
        return optim.Adam(ours.parameters(), lr=1e-3), torch.optim.Adam(theirs.parameters(), lr=1e-3)
    return (
        optim.AdamW(ours.parameters(), lr=1e-3, weight_decay=0.05),
        torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.05),
    )


@pytest.mark.parametrize(
    "dtype, opt_kind, rtol, atol",
    [
        (np.float64, "sgd", 1e-9, 1e-10),
        (np.float64, "adam", 1e-9, 1e-10),
        (np.float64, "adamw", 1e-9, 1e-10),
        (np.float32, "sgd", 2e-4, 2e-5),
    ],
)
def test_small_cnn_training_matches_pytorch(dtype, opt_kind, rtol, atol):
    # Start from identical weights (ours -> torch), then train both for a few steps.
    ours, theirs = small_cnn_pair(dtype, conv_bias=True)
    opt, topt = _optimisers(opt_kind, ours, theirs)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)

    for step in range(4):
        x = rng.standard_normal((6, 1, 12, 12)).astype(dtype)
        y = rng.integers(0, 10, size=6).astype(np.int64)

        opt.zero_grad()
        loss = crit(ours(x), y)
        ours.backward(crit.backward())

        topt.zero_grad()
        tloss = tcrit(theirs(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()

        assert loss == pytest.approx(tloss.item(), rel=rtol * 10, abs=atol * 10), f"step {step}"
        tparams = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            np.testing.assert_allclose(
                p.grad, tparams[name].grad.numpy(), rtol=rtol * 10, atol=atol * 10, err_msg=f"grad {name} @ {step}"
            )
        opt.step()
        topt.step()

    tstate = theirs.state_dict()
    for key, value in ours.state_dict().items():
        np.testing.assert_allclose(value, tstate[key].numpy(), rtol=rtol * 100, atol=atol * 100, err_msg=key)

    # Eval mode uses the running statistics, in both libraries.
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((3, 1, 12, 12)).astype(dtype)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), expected, rtol=rtol * 100, atol=atol * 100)


def test_small_cnn_weights_move_from_pytorch():
    theirs = _cnn(torch.nn).double()
    ours = copy_weights(theirs, _cnn(nn).double())
    x = np.random.default_rng(1).standard_normal((2, 1, 12, 12))
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    assert_close(ours(x), expected)


def test_small_cnn_float32_step_keeps_dtype():
    model = _cnn(nn)
    crit = nn.CrossEntropyLoss()
    x = np.random.default_rng(2).standard_normal((4, 1, 12, 12)).astype(np.float32)
    out = model(x)
    assert out.dtype == np.float32
    crit(out, np.array([0, 1, 2, 3]))
    dx = model.backward(crit.backward())
    assert dx.dtype == np.float32
    for name, p in model.named_parameters():
        assert p.grad.dtype == np.float32, name


def test_small_cnn_gradcheck_float64():
    gl.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    ).double()
    x = np.random.default_rng(4).standard_normal((3, 1, 4, 4))
    assert gl.gradcheck(model, x)


@pytest.mark.parametrize("conv_bias", [False, True])
def test_small_cnn_torch_twin_has_the_same_state_dict(conv_bias):
    ours, theirs = small_cnn(conv_bias=conv_bias).state_dict(), small_cnn(torch.nn, conv_bias=conv_bias).state_dict()
    assert list(ours) == list(theirs)
    assert ("0.bias" in ours) is conv_bias
    for key, value in theirs.items():
        assert ours[key].shape == tuple(value.shape), key


def test_small_cnn_conv_bias_must_be_a_bool():
    with pytest.raises(TypeError, match="small_cnn: expected conv_bias to be a bool, got int"):
        gl.models.small_cnn(conv_bias=1)
