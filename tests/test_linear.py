"""Linear, Flatten and Identity against PyTorch and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import requires_gpu

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _torch_linear(ours: nn.Linear, dtype) -> torch.nn.Linear:
    ref = torch.nn.Linear(ours.in_features, ours.out_features, bias=ours.bias is not None)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ref.to(torch.float64 if dtype == np.float64 else torch.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 4), (1, 4), (2, 3, 4), (4,)], ids=["N", "N1", "leading", "vector"])
def test_linear_matches_torch(device, dtype, bias, shape):
    ours = nn.Linear(4, 3, bias=bias)
    ref = _torch_linear(ours, dtype)
    ours.to(device, dtype)
    x = np.random.standard_normal(shape).astype(dtype)
    g = np.random.standard_normal(shape[:-1] + (3,)).astype(dtype)
    y = ours(gl.to_device(x, device))
    dx = ours.backward(gl.to_device(g, device))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(g))
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == tuple(yt.shape)
    np.testing.assert_allclose(gl.to_numpy(y), yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(gl.to_numpy(dx), xt.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(gl.to_numpy(ours.weight.grad), ref.weight.grad.numpy(), **TOL[dtype])
    if bias:
        np.testing.assert_allclose(gl.to_numpy(ours.bias.grad), ref.bias.grad.numpy(), **TOL[dtype])
    else:
        assert ours.bias is None and "bias" not in ours.state_dict()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 4), (2, 2, 4)])
def test_linear_gradcheck(bias, shape):
    layer = nn.Linear(4, 2, bias=bias).double()
    assert gl.gradcheck(layer, np.random.standard_normal(shape))


def test_linear_op_matches_float64_formula():
    x, w, b = np.random.standard_normal((5, 3)), np.random.standard_normal((2, 3)), np.random.standard_normal(2)
    y, cache = F.linear_forward(x, w, b)
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-12)
    dy = np.random.standard_normal((5, 2))
    dx, dw, db = F.linear_backward(dy, cache)
    np.testing.assert_allclose(dx, dy @ w, rtol=1e-12)
    np.testing.assert_allclose(dw, dy.T @ x, rtol=1e-12)
    np.testing.assert_allclose(db, dy.sum(0), rtol=1e-12)
    assert F.linear_backward(dy, F.linear_forward(x, w, None)[1])[2] is None


def test_linear_init_and_state_dict_match_torch_layout():
    ours = nn.Linear(50, 7)
    assert ours.weight.shape == (7, 50) and ours.weight.dtype == np.float32
    bound = 1 / np.sqrt(50)  # kaiming-uniform(a=sqrt(5)) and the bias both give U(-1/sqrt(fan_in), ...)
    assert np.abs(ours.weight.data).max() <= bound and np.abs(ours.weight.data).max() > 0.8 * bound
    assert np.abs(ours.bias.data).max() <= bound
    ref = torch.nn.Linear(50, 7)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    np.testing.assert_array_equal(ours.weight.data, ref.weight.detach().numpy())
    assert repr(ours) == "Linear(in_features=50, out_features=7, bias=True)"
    assert repr(nn.Linear(2, 3, bias=False)) == "Linear(in_features=2, out_features=3, bias=False)"


def test_linear_init_is_reproducible_under_manual_seed():
    gl.manual_seed(7)
    a = nn.Linear(3, 3).weight.data.copy()
    gl.manual_seed(7)
    np.testing.assert_array_equal(nn.Linear(3, 3).weight.data, a)


def test_linear_accumulates_parameter_grads():
    layer = nn.Linear(3, 2).double()
    x, g = np.random.standard_normal((4, 3)), np.random.standard_normal((4, 2))
    layer(x)
    layer.backward(g)
    layer(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * g.T @ x, rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, 2 * g.sum(0), rtol=1e-12)


def test_linear_empty_batch():
    layer = nn.Linear(3, 2)
    y = layer(np.zeros((0, 3), np.float32))
    assert y.shape == (0, 2)
    assert layer.backward(np.zeros((0, 2), np.float32)).shape == (0, 3)
    np.testing.assert_array_equal(layer.weight.grad, np.zeros((2, 3)))


@pytest.mark.parametrize(
    "x,exc,pattern",
    [
        (np.zeros((2, 5), np.float32), ValueError, r"Linear: expected input with 4 features \(last axis\), got 5"),
        (np.zeros((2, 4), np.int32), TypeError, r"Linear: expected a floating-point input.*int32"),
        (
            np.zeros((2, 4), np.float64),
            TypeError,
            r"Linear: input dtype float64 does not match the weight dtype float32",
        ),
        (np.float32(1.0) * np.ones((), np.float32), ValueError, r"Linear: expected an input of shape \(\*, 4\)"),
        ([[1.0, 2.0, 3.0, 4.0]], TypeError, r"Linear: expected a NumPy or CuPy array, got list"),
    ],
    ids=["features", "int", "dtype", "0-D", "list"],
)
def test_linear_bad_input(x, exc, pattern):
    with pytest.raises(exc, match=pattern):
        nn.Linear(4, 3)(x)


def test_linear_bad_constructor_and_backward_errors():
    with pytest.raises(ValueError, match="Linear: expected in_features >= 0, got -1"):
        nn.Linear(-1, 3)
    with pytest.raises(TypeError, match="Linear: expected out_features to be an int, got float"):
        nn.Linear(3, 2.5)
    layer = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="Linear.backward: called before forward"):
        layer.backward(np.zeros((1, 2), np.float32))
    layer(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"Linear.backward: expected grad_output of shape \(4, 2\), got \(4, 3\)"):
        layer.backward(np.zeros((4, 3), np.float32))


@pytest.mark.parametrize(
    "start,end,shape",
    [
        (1, -1, (2, 3, 4, 5)),
        (0, -1, (2, 3, 4)),
        (1, 2, (2, 3, 4, 5)),
        (-3, -2, (2, 3, 4, 5)),
        (2, 2, (2, 3, 4)),
        (1, -1, (0, 3, 4)),
    ],
)
def test_flatten_matches_torch(device, start, end, shape):
    x = np.random.standard_normal(shape).astype(np.float32)
    layer = nn.Flatten(start, end)
    y = layer(gl.to_device(x, device))
    want = torch.nn.Flatten(start, end)(torch.from_numpy(x)).numpy()
    assert y.shape == want.shape
    np.testing.assert_array_equal(gl.to_numpy(y), want)
    g = np.random.standard_normal(want.shape).astype(np.float32)
    np.testing.assert_array_equal(gl.to_numpy(layer.backward(gl.to_device(g, device))), g.reshape(shape))


def test_flatten_gradcheck_repr_and_errors():
    assert gl.gradcheck(nn.Flatten(), np.random.standard_normal((2, 2, 3)))
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    with pytest.raises(ValueError, match=r"Flatten: start_dim=3 is out of range for a 3-D input"):
        nn.Flatten(3)(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"Flatten: start_dim \(2\) comes after end_dim \(1\)"):
        nn.Flatten(2, 1)(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(RuntimeError, match="Flatten.backward: called before forward"):
        nn.Flatten().backward(np.zeros((2, 3), np.float32))


def test_identity_passes_through():
    layer = nn.Identity(54, unused="ignored")
    x = np.random.standard_normal((2, 3)).astype(np.float32)
    assert layer(x) is x
    g = np.ones((2, 3), np.float32)
    assert layer.backward(g) is g
    assert repr(layer) == "Identity()"
    with pytest.raises(RuntimeError, match="Identity.backward: called before forward"):
        nn.Identity().backward(g)


def test_linear_in_sequential_with_flatten_matches_torch():
    ours = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = np.random.standard_normal((3, 3, 4)).astype(np.float32)
    g = np.random.standard_normal((3, 2)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    ref(xt).backward(torch.from_numpy(g))
    np.testing.assert_allclose(ours(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    for (name, p), (tname, tp) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert name == tname
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@requires_gpu
def test_linear_rejects_mixed_devices():
    layer = nn.Linear(3, 2).to("cuda")
    with pytest.raises(RuntimeError, match="Linear: input is on cpu but the weight is on cuda:0"):
        layer(np.zeros((2, 3), np.float32))
    layer = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="Linear: input is on cuda:0 but the weight is on cpu"):
        layer(gl.to_device(np.zeros((2, 3), np.float32), "cuda"))


@pytest.mark.parametrize(
    "x,w,b,pattern",
    [
        (
            np.zeros((2, 3)),
            np.zeros(3),
            None,
            r"linear: expected a 2-D weight \(out_features, in_features\)",
        ),
        (np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(3), r"linear: expected a bias of shape \(4,\), got \(3,\)"),
        (np.zeros((2, 5)), np.zeros((4, 3)), None, r"linear: expected input with 3 features \(last axis\), got 5"),
    ],
    ids=["1-D weight", "bias", "features"],
)
def test_linear_op_validates_its_arrays(x, w, b, pattern):
    with pytest.raises(ValueError, match=pattern):
        F.linear_forward(x, w, b)


def test_ops_name_their_caller_in_backward():
    _, cache = F.linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), name="MyLayer")
    with pytest.raises(ValueError, match=r"MyLayer.backward: expected grad_output of shape \(2, 4\), got \(2, 3\)"):
        F.linear_backward(np.zeros((2, 3)), cache)
    _, cache = F.relu_forward(np.zeros((2, 3)), name="MyAct")
    with pytest.raises(ValueError, match=r"MyAct.backward: expected grad_output of shape \(2, 3\)"):
        F.relu_backward(np.zeros(3), cache)
