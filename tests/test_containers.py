"""Residual, Concat and ModuleList: PyTorch parity (forward, input and parameter gradients) and behaviour."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import requires_torch, torch
from torch_twins import TorchConcat, TorchResidual, assert_parity, copy_weights, torch_layers

import gpulayers as gl
from gpulayers import models, nn

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def _both(build, dtype, device):
    """``build(lib, Residual, Concat)`` for both libraries, with PyTorch's weights copied into ours."""
    ours = build(nn, nn.Residual, nn.Concat)
    theirs = build(torch_layers, TorchResidual, TorchConcat)
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_weights(ours, theirs)
    return ours.to(device, dtype), theirs


def _residual_conv(lib, Residual, Concat):
    return lib.Sequential(models.basic_block(2, 2, 1, layers=lib), models.basic_block(2, 4, 2, layers=lib))


def _residual_shared(lib, Residual, Concat):
    act = lib.Tanh()
    return lib.Sequential(Residual(lib.Sequential(lib.Linear(5, 5), act, lib.Linear(5, 5))), act)


def _concat_conv(lib, Residual, Concat):
    return lib.Sequential(
        Concat(lib.Conv2d(3, 2, 1), lib.Sequential(lib.Conv2d(3, 4, 3, padding=1), lib.ReLU()), lib.Identity()),
        lib.BatchNorm2d(9),
    )


def _concat_last_dim(lib, Residual, Concat):
    return Concat(lib.Linear(4, 3), lib.Sequential(lib.Linear(4, 2), lib.Sigmoid()), dim=-1)


CASES = {
    "residual-conv-projection": (_residual_conv, (3, 2, 6, 6)),
    "residual-identity-shared-act": (_residual_shared, (4, 5)),
    "concat-channels": (_concat_conv, (2, 3, 5, 5)),
    "concat-last-dim": (_concat_last_dim, (6, 4)),
}


@requires_torch
@DTYPES
@pytest.mark.parametrize("case", list(CASES))
def test_container_matches_torch(case, dtype, device):
    build, shape = CASES[case]
    ours, theirs = _both(build, dtype, device)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = np.random.default_rng(0).standard_normal(shape)
    assert_parity(ours, theirs, [x], dtype, device)


class Stack(nn.Module):
    """Linear-Tanh layers kept in a ModuleList; backward walks them in reverse."""

    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.act = nn.Tanh()

    def forward(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return x

    def backward(self, g):
        for layer in reversed(list(self.layers)):
            g = layer.backward(self.act.backward(g))
        return g


if torch is not None:

    class TorchStack(torch.nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
            self.act = torch.nn.Tanh()

        def forward(self, x):
            for layer in self.layers:
                x = self.act(layer(x))
            return x


@requires_torch
@DTYPES
def test_module_list_model_matches_torch(dtype, device):
    ours, theirs = Stack([4, 6, 5, 3]), TorchStack([4, 6, 5, 3])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_weights(ours, theirs)
    ours.to(device, dtype)
    assert_parity(ours, theirs, [np.random.default_rng(1).standard_normal((5, 4))], dtype, device)


def test_gradcheck_residual_and_concat():
    model = nn.Sequential(
        nn.Residual(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), nn.Linear(3, 3)),
        nn.Concat(nn.Linear(3, 2), nn.Sigmoid()),
    ).double()
    assert gl.gradcheck(model, np.random.default_rng(2).standard_normal((4, 3)))


def test_module_list_behaves_like_pytorch():
    a, b, c = nn.Linear(1, 1), nn.ReLU(), nn.Tanh()
    ml = nn.ModuleList([a, b])
    assert len(ml) == 2 and ml[0] is a and ml[-1] is b and list(ml) == [a, b]
    ml.append(c)
    ml.extend([nn.Identity()])
    ml += [nn.Sigmoid()]
    assert [type(m).__name__ for m in ml] == ["Linear", "ReLU", "Tanh", "Identity", "Sigmoid"]
    assert isinstance(ml[1:3], nn.ModuleList) and list(ml[1:3]) == [b, c]
    del ml[1]
    assert [n for n, _ in ml.named_children()] == ["0", "1", "2", "3"] and ml[1] is c
    ml.insert(0, nn.Identity())
    assert ml[1] is a
    ml[0] = b
    assert ml[0] is b
    assert list(ml.state_dict()) == ["1.weight", "1.bias"]
    with pytest.raises(IndexError, match="ModuleList: index 9 is out of range for 5 modules"):
        ml[9]
    with pytest.raises(TypeError, match="ModuleList.append: expected a Module to append, got int"):
        ml.append(3)
    with pytest.raises(NotImplementedError, match="ModuleList has no forward"):
        ml(np.ones(1))


def test_residual_children_and_repr():
    r = nn.Residual(nn.Linear(2, 2))
    assert r.shortcut is None and [n for n, _ in r.named_children()] == ["body"]
    assert "shortcut=identity" in repr(r)
    r2 = nn.Residual(nn.Linear(2, 3), nn.Linear(2, 3, bias=False))
    assert list(r2.state_dict()) == ["body.weight", "body.bias", "shortcut.weight"]


def test_residual_shape_mismatch_is_a_clear_error():
    msg = r"Residual: the body's output has shape \(2, 3\) but the input has shape \(2, 2\)"
    with pytest.raises(ValueError, match=msg):
        nn.Residual(nn.Linear(2, 3))(np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="Residual: expected a Module as body, got int"):
        nn.Residual(3)


def test_concat_errors():
    with pytest.raises(ValueError, match="Concat: expected at least one branch"):
        nn.Concat()
    msg = r"Concat: branch 1 gives shape \(2, 3, 2, 2\) but branch 0 gives \(2, 3, 4, 4\)"
    with pytest.raises(ValueError, match=msg):
        nn.Concat(nn.Identity(), nn.MaxPool2d(2))(np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="Concat: dim=3 is out of range"):
        nn.Concat(nn.Identity(), dim=3)(np.ones((2, 3), np.float32))


def test_concat_reuses_a_branch_module():
    lin = nn.Linear(3, 2).double()
    model = nn.Concat(lin, lin, dim=1)
    x = np.random.default_rng(3).standard_normal((4, 3))
    y = model(x)
    g = np.random.default_rng(4).standard_normal(y.shape)
    dx = model.backward(g)
    np.testing.assert_allclose(dx, (g[:, :2] + g[:, 2:]) @ lin.weight.data)
    np.testing.assert_allclose(lin.weight.grad, (g[:, :2] + g[:, 2:]).T @ x)


def test_readme_residual_block_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "nn.Residual(" in block)
    scope = {"nn": nn}
    exec(code, scope)  # noqa: S102 - the README's own example
    block = scope["block"]
    x = np.random.default_rng(5).standard_normal((2, 16, 8, 8)).astype(np.float32)
    y = block(x)
    assert y.shape == (2, 32, 4, 4) and (y >= 0).all()
    assert block.backward(np.ones_like(y)).shape == x.shape
    assert "0.shortcut.0.weight" in block.state_dict()


def test_sequential_from_an_ordered_dict_keeps_names():
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(fc1=nn.Linear(2, 3), act=nn.ReLU(), fc2=nn.Linear(3, 1)))
    assert list(model.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert model[0] is model.fc1 and list(model[1:]._modules) == ["act", "fc2"]  # slices keep names
    with pytest.raises(ValueError, match="Sequential: expected non-empty names without '.', got 'a.b'"):
        nn.Sequential({"a.b": nn.ReLU()})
