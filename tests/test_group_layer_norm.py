"""GroupNorm and LayerNorm against PyTorch (forward, input and parameter gradients), gradcheck, bad arguments."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-11)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _copy_affine(ours, ref, rng):
    """Random affine parameters, the same in both layers."""
    for name in ("weight", "bias"):
        p = getattr(ours, name)
        if p is None:
            assert getattr(ref, name) is None
            continue
        value = rng.uniform(0.5, 1.5, p.shape)
        ours.load_state_dict({**ours.state_dict(), name: value})
        with torch.no_grad():
            getattr(ref, name).copy_(torch.from_numpy(value))


def _compare(ours, ref, shape, dtype, device, seed=0):
    rng = np.random.default_rng(seed)
    ours.to(device, dtype)
    ref.to(TORCH_DTYPE[dtype])
    _copy_affine(ours, ref, rng)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y = ours(gl.to_device(x, device))
    dx = ours.backward(gl.to_device(g, device))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(g))
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(gl.to_numpy(y), yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(gl.to_numpy(dx), xt.grad.numpy(), **TOL[dtype])
    for name in ("weight", "bias"):
        p = getattr(ours, name)
        if p is not None:
            assert p.grad.dtype == dtype
            np.testing.assert_allclose(gl.to_numpy(p.grad), getattr(ref, name).grad.numpy(), **TOL[dtype])
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())


@pytest.mark.parametrize(
    ("groups", "shape"),
    [(1, (2, 4, 3, 3)), (2, (3, 4, 5, 2)), (4, (2, 4, 3, 3)), (3, (2, 6, 7)), (2, (5, 4)), (2, (2, 4, 2, 3, 2))],
)
@pytest.mark.parametrize("affine", [dict(), dict(affine=False), dict(bias=False)], ids=["affine", "plain", "nobias"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_norm_matches_torch(device, groups, shape, affine, dtype):
    c = shape[1]
    if "bias" in affine and "bias" not in inspect.signature(torch.nn.GroupNorm).parameters:
        pytest.skip(f"this PyTorch ({torch.__version__}) has no GroupNorm(bias=...) to compare with")
    _compare(nn.GroupNorm(groups, c, **affine), torch.nn.GroupNorm(groups, c, **affine), shape, dtype, device)


def test_group_norm_eps_and_eval_mode_match_torch():
    ours, ref = nn.GroupNorm(2, 4, eps=0.5).double().eval(), torch.nn.GroupNorm(2, 4, eps=0.5).double().eval()
    x = np.random.standard_normal((2, 4, 3, 3)) * 0.3
    np.testing.assert_allclose(ours(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    ("normalized_shape", "shape"),
    [(5, (3, 5)), ((5,), (2, 3, 5)), ((3, 4), (2, 3, 4)), ((2, 3, 4), (2, 2, 3, 4)), (6, (6,))],
)
@pytest.mark.parametrize(
    "affine", [dict(), dict(elementwise_affine=False), dict(bias=False)], ids=["affine", "plain", "nobias"]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_matches_torch(device, normalized_shape, shape, affine, dtype):
    ours, ref = nn.LayerNorm(normalized_shape, **affine), torch.nn.LayerNorm(normalized_shape, **affine)
    _compare(ours, ref, shape, dtype, device)


@pytest.mark.parametrize(
    "make", [lambda: nn.GroupNorm(2, 4), lambda: nn.LayerNorm((3, 2))], ids=["group_norm", "layer_norm"]
)
def test_norm_gradcheck(make):
    layer = make().double()
    layer.load_state_dict({k: np.random.uniform(0.5, 1.5, v.shape) for k, v in layer.state_dict().items()})
    assert gl.gradcheck(layer, np.random.standard_normal((2, 4, 3, 2)))


def test_norm_functional_matches_the_float64_formula():
    x = np.random.standard_normal((2, 6, 3))
    y, _ = F.group_norm_forward(x, 3, eps=1e-5)
    g = x.reshape(2, 3, -1)
    ref = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref.reshape(x.shape), rtol=1e-13, atol=1e-14)
    y, _ = F.layer_norm_forward(x, (3,), eps=1e-5)
    ref = (x - x.mean(axis=2, keepdims=True)) / np.sqrt(x.var(axis=2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-14)


def test_norm_zero_size_batch_gives_an_empty_output_like_torch():
    x = np.zeros((0, 4, 3, 3), np.float32)
    assert nn.GroupNorm(2, 4)(x).shape == (0, 4, 3, 3)
    assert nn.LayerNorm(3)(x).shape == (0, 4, 3, 3)


def test_norm_reprs_and_state_dict_keys_match_torch():
    assert repr(nn.GroupNorm(2, 4)) == repr(torch.nn.GroupNorm(2, 4))
    assert repr(nn.LayerNorm((3, 4), eps=1e-6)) == repr(torch.nn.LayerNorm((3, 4), eps=1e-6))
    assert repr(nn.GroupNorm(1, 2, affine=False, bias=False)) == repr(
        torch.nn.GroupNorm(1, 2, affine=False, bias=False)
    )
    assert list(nn.LayerNorm(4, bias=False).state_dict()) == ["weight"]
    assert list(nn.GroupNorm(2, 4, bias=False).state_dict()) == ["weight"]
    assert list(nn.GroupNorm(1, 4, affine=False).state_dict()) == []


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda: nn.GroupNorm(3, 4), ValueError, "GroupNorm: expected num_channels divisible by num_groups"),
        (lambda: nn.GroupNorm(0, 4), ValueError, "GroupNorm: expected num_groups >= 1, got 0"),
        (lambda: nn.GroupNorm(2.0, 4), TypeError, "GroupNorm: expected num_groups to be an int"),
        (lambda: nn.GroupNorm(2, 4, eps=-1), ValueError, "GroupNorm: expected a finite eps >= 0"),
        (lambda: nn.GroupNorm(2, 4)(np.zeros((2, 6, 3), np.float32)), ValueError, "GroupNorm: expected input with 4"),
        (lambda: nn.GroupNorm(2, 4)(np.zeros(4, np.float32)), ValueError, r"GroupNorm: expected an input of shape"),
        (lambda: nn.GroupNorm(2, 4)(np.zeros((2, 4), np.int64)), TypeError, "GroupNorm: expected a floating"),
        (lambda: nn.LayerNorm("3"), TypeError, "LayerNorm: expected normalized_shape to be an int or a tuple"),
        (lambda: nn.LayerNorm((3, -1)), ValueError, "LayerNorm: expected non-negative sizes"),
        (lambda: nn.LayerNorm(3, eps="a"), ValueError, "LayerNorm: expected a finite eps >= 0"),
        (
            lambda: nn.LayerNorm((3, 4))(np.zeros((2, 4, 3), np.float32)),
            ValueError,
            r"LayerNorm: expected an input whose last 2 dimension\(s\) are \(3, 4\)",
        ),
        (lambda: nn.LayerNorm(3)(np.zeros((2, 3))), TypeError, "LayerNorm: input dtype float64 does not match"),
        (lambda: nn.LayerNorm(3).backward(np.zeros(3)), RuntimeError, "LayerNorm.backward: called before forward"),
        (lambda: F.group_norm_forward(np.zeros((2, 4)), 0), ValueError, "group_norm: expected num_groups"),
        (
            lambda: F.layer_norm_forward(np.zeros((2, 4)), (4,), np.ones(3)),
            ValueError,
            r"layer_norm: expected a weight of shape \(4,\), got \(3,\)",
        ),
    ],
)
def test_norm_bad_arguments(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_norm_backward_checks_the_gradient_shape():
    layer = nn.LayerNorm(3)
    layer(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"LayerNorm.backward: expected grad_output of shape \(2, 3\)"):
        layer.backward(np.zeros((3, 2), np.float32))
