"""``Sequential`` runs BatchNorm, ReLU and MaxPool2d as one on NumPy when the windows tile the input.

The pool then runs on each block of the normalised output while it is in cache (the full-size
output is never written), and backward spreads the pooled gradient back inside the BatchNorm's
blocks. The results must be bitwise those of the three layers run one by one: outputs, input
gradients, parameter gradients and running statistics, in training and eval mode, for finite and
non-finite gradients, NaN and infinite inputs, and modules used twice in a step. Where the
windows do not tile the input the pool runs on its own (and the pair still fuses).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import fused_and_unfused

from gpulayers import nn

torch = pytest.importorskip("torch")


def _run(model, x, dy):
    """Output, input gradient, parameter gradients and buffers of one forward/backward."""
    y = model(x)
    dx = model.backward(dy)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    buffers = {name: b.copy() for name, b in model.named_buffers()}
    return y, dx, grads, buffers


def _models():
    """(name, build, input shape, fuses): whether the pool runs inside the BatchNorm's blocks."""

    def reused():
        bn, relu, pool = nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2)
        return nn.Sequential(bn, relu, pool, nn.Conv2d(3, 3, 1), bn, relu, pool)

    def cnn():
        return nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.BatchNorm2d(5, affine=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    return [
        ("triple", lambda: nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2)), (6, 3, 8, 10), True),
        ("kernel-3x2", lambda: nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d((3, 2))), (5, 3, 9, 6), True),
        ("reused", reused, (6, 3, 8, 8), True),
        ("cnn", cnn, (6, 2, 8, 8), True),
        ("odd-size", lambda: nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2)), (6, 3, 7, 8), False),
        ("overlapping", lambda: nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2, 1)), (6, 3, 6, 6), False),
        ("padded", lambda: nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2, 2, 1)), (6, 3, 6, 6), False),
    ]


MODELS = _models()
IDS = [m[0] for m in MODELS]


def _count_pool_forwards(monkeypatch):
    """Calls of MaxPool2d's own forward op (the fused path makes none)."""
    calls = []
    inner = nn.MaxPool2d._forward_op

    def counted(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(nn.MaxPool2d, "_forward_op", staticmethod(counted))
    return calls


def _assert_same(got, want):
    for g, w in zip(got[:2], want[:2], strict=True):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    for part in (2, 3):
        assert got[part].keys() == want[part].keys()
        for key in want[part]:
            np.testing.assert_array_equal(got[part][key], want[part][key], err_msg=key)


@pytest.mark.parametrize(("name", "build", "shape", "fuses"), MODELS, ids=IDS)
@pytest.mark.parametrize("grad", ["finite", "non-finite"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NaN gradients reach the reductions
def test_fused_triple_is_bitwise_the_three_layers(monkeypatch, name, build, shape, fuses, grad, training):
    rng = np.random.default_rng(13)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    x.flat[::17] = 0.25  # repeated values: ties inside windows
    fused, plain = fused_and_unfused(build, training)
    if not training and name == "reused":  # in eval mode a reused module keeps only its latest forward
        np.testing.assert_array_equal(fused(x), plain(x))
        return
    dy = rng.standard_normal(plain(x).shape).astype(np.float32)
    if grad == "non-finite":
        dy.flat[::7] = np.inf  # inf * 0 would be NaN: masked and losing positions must still get 0
        dy.flat[3::11] = np.nan
    _, plain = fused_and_unfused(build, training)  # a fresh unfused model: the one above ran a forward
    calls = _count_pool_forwards(monkeypatch)
    got = _run(fused, x, dy)
    fused_calls = len(calls)
    want = _run(plain, x, dy)
    assert (fused_calls == 0) == fuses, f"pool forwards in the fused model: {fused_calls}"
    assert len(calls) > fused_calls  # the unfused model did run its pools
    _assert_same(got, want)


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_fused_triple_with_nan_and_infinite_inputs_in_eval_mode(monkeypatch, special):
    """Running statistics keep the other values finite: NaN wins its window (the last NaN gets the
    gradient), -inf loses, +inf wins, exactly as in the unfused layers (the careful pooling pass)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    x[0, 0, 0, :4] = special
    x[1, 1, 2:4, 2:4] = special
    fused, plain = fused_and_unfused(lambda: nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2)))
    for m in (fused, plain):
        m[0].running_mean[...] = [0.1, -0.2]
        m[0].running_var[...] = [1.5, 0.5]
        m.eval()
    dy = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    calls = _count_pool_forwards(monkeypatch)
    got = _run(fused, x, dy)
    assert not calls
    _assert_same(got, _run(plain, x, dy))


def test_fused_triple_matches_torch():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((8, 3, 12, 12)) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal((8, 3, 6, 6)).astype(np.float32)
    ours = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2))
    theirs = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    w, b = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    ours.load_state_dict({**ours.state_dict(), "0.weight": w, "0.bias": b})
    with torch.no_grad():
        theirs[0].weight.copy_(torch.from_numpy(w))
        theirs[0].bias.copy_(torch.from_numpy(b))
    y, dx, grads, buffers = _run(ours, x, dy)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = theirs(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["0.weight"], theirs[0].weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["0.bias"], theirs[0].bias.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(buffers["0.running_var"], theirs[0].running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_fused_triple_gradient_of_the_wrong_shape_names_the_layer():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2))
    model(np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="MaxPool2d"):
        model.backward(np.ones((2, 3, 4, 4), np.float32))


def test_triple_on_the_cupy_standin_pools_on_its_own_and_agrees(cp):
    """On CuPy the BatchNorm and ReLU run as the fused GPU kernels and the pool as its own kernel
    (the in-block pooling is the NumPy path's): the same results as the NumPy layers."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 3, 6, 6)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)

    def build():
        return nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2))

    want = _run(build(), x, dy)
    model = build().to("cuda")
    y = model(cp.asarray(x))
    dx = model.backward(cp.asarray(dy))
    np.testing.assert_allclose(y.get(), want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.get(), want[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model[0].weight.grad.get(), want[2]["0.weight"], rtol=1e-4, atol=1e-5)
