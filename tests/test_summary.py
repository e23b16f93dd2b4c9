"""nn.summary: output shapes and parameter counts, against the same architecture in PyTorch."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import requires_torch, torch

import gpulayers as gl
from gpulayers import models, nn


def rows(text):
    """(name, type, shape, params) for each table row."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+(\w+)\s+(\[[-\d, ]+\])\s+([\d,]+)$", line)
        if m:
            out.append((m[1], m[2], m[3], int(m[4].replace(",", ""))))
    return out


def total(text, label):
    return int(re.search(rf"^{label}: ([\d,]+)$", text, re.M)[1].replace(",", ""))


@requires_torch
@pytest.mark.parametrize("channels,size,width", [(1, 8, 16), (1, 28, 32), (3, 32, 8)])
def test_summary_counts_match_torch(channels, size, width):
    model = models.small_cnn(channels, 10, size, width=width)
    text = nn.summary(model, (channels, size, size))
    ref = models.small_cnn(channels, 10, size, width=width, layers=torch.nn)
    assert total(text, "Total params") == sum(p.numel() for p in ref.parameters())
    assert total(text, "Trainable params") == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert total(text, "Buffers \\(running statistics\\)") == sum(b.numel() for b in ref.buffers())
    table = rows(text)
    assert [r[0] for r in table] == [str(i) for i in range(13)]
    x = torch.zeros(1, channels, size, size)
    for (_, kind, shape, params), layer in zip(table, ref, strict=True):
        x = layer(x)
        assert kind == type(layer).__name__
        assert shape == "[" + ", ".join(["-1", *map(str, x.shape[1:])]) + "]"
        assert params == sum(p.numel() for p in layer.parameters())


def test_summary_known_numbers_for_digits_model():
    text = nn.summary(models.small_cnn(1, 10, 8, width=16), (1, 8, 8))
    # conv 144 + bn 32 + conv 4608 + bn 64 + linear 128*128+128 + linear 1280+10
    assert total(text, "Total params") == 144 + 32 + 4608 + 64 + 16512 + 1290
    assert rows(text)[8] == ("8", "Flatten", "[-1, 128]", 0)
    assert "output shape: [-1, 10]" in text


def test_summary_restores_modes_caches_and_statistics():
    model = models.small_cnn(1, 10, 8, width=4)
    model[11].eval()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    gl.manual_seed(1)
    y = model(x)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    printed = []
    text = nn.summary(model, (1, 8, 8), print_fn=printed.append)
    assert printed == [text]
    assert model.training and model[0].training and not model[11].training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # eval mode: running statistics untouched
    grad_after_summary = model.backward(np.ones_like(y))  # the forward's caches survived
    gl.manual_seed(1)
    model.zero_grad()
    model.load_state_dict(before)
    y2 = model(x)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(grad_after_summary, model.backward(np.ones_like(y2)))


def test_summary_restores_on_error():
    model = models.small_cnn(1, 10, 8, width=4)
    with pytest.raises(ValueError, match="Conv2d"):
        nn.summary(model, (3, 8, 8))
    assert model.training and all(m.training for m in model.modules())
    assert all("forward" not in m.__dict__ for m in model.modules())


class TwoBranch(nn.Module):
    """A custom container (not a Sequential) with its own children."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x))


def test_summary_custom_container_and_flat_input(device):
    model = TwoBranch().to(device)
    text = nn.summary(model, 5, batch_size=3)
    assert rows(text) == [
        ("body.0", "Linear", "[-1, 4]", 24),
        ("body.1", "ReLU", "[-1, 4]", 0),
        ("head", "Linear", "[-1, 2]", 10),
    ]
    assert total(text, "Total params") == 34
    leaf = nn.summary(nn.Linear(3, 7), (3,))
    assert rows(leaf) == [("Linear", "Linear", "[-1, 7]", 28)]


def test_summary_float64_model_and_bad_shape():
    text = nn.summary(nn.Linear(2, 2).double(), (2,))
    assert "float64" in text
    with pytest.raises(ValueError, match=r"summary: expected positive sizes, got input_shape \(0, 2\)"):
        nn.summary(nn.Linear(2, 2), (0, 2))
