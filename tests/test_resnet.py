"""ResNet-20: structure, and PyTorch parity of a twin built with the same key names."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import requires_torch, torch
from torch_twins import assert_parity, copy_weights, torch_layers

import gpulayers as gl
from gpulayers import models, nn, train


def torch_resnet20(num_classes=10, in_channels=3):
    """ResNet-20 in PyTorch, with the library's key names (the same builder given PyTorch's layers)."""
    return models.resnet20(num_classes, in_channels, layers=torch_layers)


def test_resnet20_structure():
    model = models.resnet20()
    assert sum(p.size for p in model.parameters()) == 272_474  # He et al.'s 0.27M
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 + 2  # 19 3x3 convolutions and two 1x1 projections
    assert [c.kernel_size for c in convs if c.kernel_size == (1, 1)] == [(1, 1), (1, 1)]
    residuals = [m for m in model.modules() if isinstance(m, nn.Residual)]
    assert len(residuals) == 9 and sum(r.shortcut is not None for r in residuals) == 2
    assert "layer2.0.0.shortcut.0.weight" in model.state_dict()
    assert models.MODELS["resnet20"] is models.resnet20
    with pytest.raises(ValueError, match="resnet20: expected num_classes to be an int >= 1, got 0"):
        models.resnet20(0)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("in_channels,size", [(3, 8), (1, 8)], ids=["cifar-like", "digits"])
def test_resnet20_matches_torch_twin(in_channels, size, dtype, device):
    gl.manual_seed(0)
    ours, theirs = models.resnet20(10, in_channels), torch_resnet20(10, in_channels)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_weights(ours, theirs)
    ours.to(device, dtype)
    x = np.random.default_rng(0).standard_normal((4, in_channels, size, size))
    assert_parity(ours, theirs, [x], dtype, device)  # training mode: batch statistics
    tstate = theirs.state_dict()
    for key, value in ours.state_dict().items():
        np.testing.assert_allclose(value, tstate[key].numpy(), rtol=1e-4, atol=1e-6, err_msg=key)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x.astype(dtype))).numpy()
    with gl.no_grad():
        got = gl.to_numpy(ours(gl.to_device(x.astype(dtype), device)))
    np.testing.assert_allclose(got, expected, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-5)


def test_cli_trains_resnet20_on_digits(capsys):
    argv = ["--model", "resnet20", "--epochs", "1", "--limit", "16", "--batch-size", "8", "--no-progress"]
    assert train.main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "model: resnet20, 272,186 parameters" in out and "final test accuracy:" in out  # 1 input channel


def test_cli_rejects_an_unknown_model(capsys):
    try:
        code = train.main(["--model", "resnet50"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert "invalid choice: 'resnet50'" in capsys.readouterr().err
