"""ConvTranspose2d against PyTorch (forward, input, weight and bias gradients), gradcheck, the GPU
code path on the CPU (CuPy stand-in + kernel harness, every conv algorithm), bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

import gpulayers as gl
import gpulayers.cuda
from gpulayers import functional as F
from gpulayers import nn

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}

# (in, out, kernel, stride, padding, output_padding, dilation, groups, bias, input H x W)
CASES = {
    "plain": (3, 4, 3, 1, 0, 0, 1, 1, True, (5, 6)),
    "stride2": (3, 4, 3, 2, 0, 0, 1, 1, True, (4, 5)),
    "stride2_pad1_outpad1": (4, 2, 3, 2, 1, 1, 1, 1, True, (5, 4)),
    "stride3_outpad2": (2, 3, 2, 3, 0, 2, 1, 1, False, (3, 3)),
    "rect_kernel_mixed": (3, 5, (3, 2), (2, 1), (1, 0), (1, 0), (1, 2), 1, True, (4, 5)),
    "dilated": (2, 3, 3, 1, 2, 0, 2, 1, True, (6, 5)),
    "outpad_from_dilation": (2, 3, 3, 1, 1, 1, 2, 1, True, (4, 4)),
    "outpad_above_stride": (4, 2, 2, 2, 0, 2, 3, 2, True, (3, 4)),
    "groups2": (4, 6, 3, 2, 1, 1, 1, 2, True, (4, 4)),
    "depthwise": (4, 4, 3, 2, 1, 0, 1, 4, False, (5, 5)),
    "groups_multiplier": (3, 6, (2, 3), 2, 0, (1, 0), 1, 3, True, (3, 4)),
    "pointwise": (5, 3, 1, 1, 0, 0, 1, 1, True, (3, 3)),
    "large_padding": (2, 2, 5, 2, 3, 1, 1, 1, True, (6, 6)),
}


def _pair_of_layers(case, dtype, device, seed=0):
    cin, cout, k, s, p, op, d, g, bias, _ = case
    kw = dict(stride=s, padding=p, output_padding=op, dilation=d, groups=g, bias=bias)
    ref = torch.nn.ConvTranspose2d(cin, cout, k, **kw).to(torch.float64 if dtype == np.float64 else torch.float32)
    ours = nn.ConvTranspose2d(cin, cout, k, **kw)
    ours.load_state_dict({key: v.detach().numpy() for key, v in ref.state_dict().items()})
    return ours.to(device, dtype), ref


def _inputs(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, case[0], *case[9])).astype(dtype)
    return x, rng


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose2d_matches_torch(device, name, dtype):
    case = CASES[name]
    ours, ref = _pair_of_layers(case, dtype, device)
    x, rng = _inputs(case, dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    g = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(g))
    y = ours(gl.to_device(x, device))
    dx = ours.backward(gl.to_device(g, device))
    assert y.shape == tuple(yt.shape) and y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(gl.to_numpy(y), yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(gl.to_numpy(dx), xt.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(gl.to_numpy(ours.weight.grad), ref.weight.grad.numpy(), **TOL[dtype])
    if ref.bias is not None:
        np.testing.assert_allclose(gl.to_numpy(ours.bias.grad), ref.bias.grad.numpy(), **TOL[dtype])
    else:
        assert ours.bias is None


@pytest.mark.parametrize("name", ["stride2_pad1_outpad1", "outpad_above_stride", "groups_multiplier"])
def test_conv_transpose2d_gradcheck(name):
    case = CASES[name]
    layer = nn.ConvTranspose2d(*case[:3], case[3], case[4], case[5], case[7], case[8], case[6]).double()
    x = np.random.default_rng(1).standard_normal((1, case[0], 3, 3))
    assert gl.gradcheck(layer, x)


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    """<conv2d(u), v> == <u, conv_transpose2d(v)> for the same weight: the defining property."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 3))
    u = rng.standard_normal((2, 3, 9, 8))
    opts = dict(stride=2, padding=1, dilation=1, groups=1)
    cu, _ = F.conv2d_forward(u, w, None, **opts)
    v = rng.standard_normal(cu.shape)
    tv, _ = F.conv_transpose2d_forward(v, w, None, output_padding=(0, 1), **opts)
    assert tv.shape == u.shape
    assert np.vdot(cu, v) == pytest.approx(np.vdot(u, tv), rel=1e-12)


def test_conv_transpose2d_accumulates_gradients_and_empty_batch():
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2).double()
    x = np.random.standard_normal((2, 2, 3, 3))
    y = layer(x)
    layer.backward(np.ones_like(y))
    first = layer.weight.grad.copy()
    layer(x)
    layer.backward(np.ones_like(y))
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-13)
    empty = layer(np.zeros((0, 2, 3, 3)))
    assert empty.shape == (0, 3, 7, 7)
    assert layer.backward(empty).shape == (0, 2, 3, 3)


def test_conv_transpose2d_init_repr_and_state_dict_like_torch():
    ours = nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2))
    ref = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2))
    assert repr(ours) == repr(ref)
    assert repr(nn.ConvTranspose2d(2, 3, 1, bias=False)) == repr(torch.nn.ConvTranspose2d(2, 3, 1, bias=False))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ref.state_dict().items()
    }
    # PyTorch's fan-in of a transposed convolution: weight.shape[1] * kh * kw = 3 * 6 = 18.
    big = nn.ConvTranspose2d(64, 30, 4)
    bound = 1 / np.sqrt(30 * 16)
    assert np.abs(big.bias.data).max() <= bound and np.abs(big.bias.data).max() > 0.8 * bound
    assert np.abs(big.weight.data).max() <= bound and big.weight.data.dtype == np.float32


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (
            lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2),
            ValueError,
            r"ConvTranspose2d: expected output_padding smaller than either stride or dilation, got "
            r"output_padding=\(2, 2\), stride=\(2, 2\), dilation=\(1, 1\)",
        ),
        (
            lambda: nn.ConvTranspose2d(2, 2, 3, output_padding=(0, 1)),
            ValueError,
            "ConvTranspose2d: expected output_padding smaller than either stride or dilation",
        ),
        (lambda: nn.ConvTranspose2d(3, 4, 3, groups=2), ValueError, "ConvTranspose2d: expected in_channels divisible"),
        (lambda: nn.ConvTranspose2d(4, 3, 3, groups=2), ValueError, "ConvTranspose2d: expected out_channels divisible"),
        (lambda: nn.ConvTranspose2d(2, 2, 0), ValueError, "ConvTranspose2d: expected kernel_size >= 1"),
        (lambda: nn.ConvTranspose2d(2, 2, 3, stride=0), ValueError, "ConvTranspose2d: expected stride >= 1"),
        (lambda: nn.ConvTranspose2d(2, 2, 3, padding=-1), ValueError, "ConvTranspose2d: expected padding >= 0"),
        (lambda: nn.ConvTranspose2d(2, 2, 3, padding="same"), TypeError, "ConvTranspose2d: expected padding to be"),
        (lambda: nn.ConvTranspose2d(0, 2, 3), ValueError, "ConvTranspose2d: expected in_channels >= 1"),
        (lambda: nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect"), ValueError, "only padding_mode='zeros'"),
        (
            lambda: nn.ConvTranspose2d(3, 2, 3)(np.zeros((1, 2, 4, 4), np.float32)),
            ValueError,
            r"ConvTranspose2d: expected input with 3 channels .*got 2",
        ),
        (
            lambda: nn.ConvTranspose2d(3, 2, 3)(np.zeros((3, 4, 4), np.float32)),
            ValueError,
            r"ConvTranspose2d: expected a 4-D input \(N, C, H, W\), got shape \(3, 4, 4\)",
        ),
        (
            lambda: nn.ConvTranspose2d(3, 2, 3)(np.zeros((1, 3, 4, 4))),
            TypeError,
            "ConvTranspose2d: input dtype float64 does not match the weight dtype float32",
        ),
        (
            lambda: nn.ConvTranspose2d(1, 1, 1, padding=2)(np.zeros((1, 1, 3, 3), np.float32)),
            ValueError,
            r"ConvTranspose2d: the output height would be -1 .*expected at least 1",
        ),
        (lambda: nn.ConvTranspose2d(1, 1, 1).backward(np.zeros(1)), RuntimeError, "ConvTranspose2d.backward: called"),
    ],
)
def test_conv_transpose2d_bad_arguments(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_conv_transpose2d_backward_checks_the_gradient():
    layer = nn.ConvTranspose2d(1, 1, 2)
    layer(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"ConvTranspose2d.backward: expected grad_output of shape \(1, 1, 4, 4\)"):
        layer.backward(np.zeros((1, 1, 3, 3), np.float32))


# -- the GPU code path, run on the CPU ---------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from kernel_harness import HarnessLibrary  # noqa: PLC0415

    return HarnessLibrary(tmp_path_factory.mktemp("conv_transpose_harness"))


@pytest.mark.parametrize("algorithm", ["implicit_gemm", "im2col", "direct"])
@pytest.mark.parametrize("name", ["stride2_pad1_outpad1", "outpad_above_stride", "groups_multiplier", "depthwise"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose2d_gpu_path_matches_the_numpy_path(monkeypatch, harness, algorithm, name, dtype):
    """The CuPy branch of the op (conv2d's CUDA kernels through the launchers) on the CuPy stand-in,
    with the kernels compiled by g++: the same results as the NumPy branch."""
    from cupy_standin import COUNTER, install  # noqa: PLC0415

    case = CASES[name]
    cpu_layer, _ = _pair_of_layers(case, dtype, "cpu")
    x, rng = _inputs(case, dtype)
    y_cpu = cpu_layer(x)
    g = rng.standard_normal(y_cpu.shape).astype(dtype)
    dx_cpu = cpu_layer.backward(g)
    with install(harness, monkeypatch):
        gl.cuda.set_conv_algorithm(algorithm)
        try:
            gpu_layer = nn.ConvTranspose2d(*case[:3], case[3], case[4], case[5], case[7], case[8], case[6])
            gpu_layer.load_state_dict(cpu_layer.state_dict())
            gpu_layer.to("cuda", dtype)
            COUNTER.reset()
            y = gpu_layer(gl.to_device(x, "cuda"))
            dx = gpu_layer.backward(gl.to_device(g, "cuda"))
            kernels_run = {e.name for e in COUNTER.events if e.kind == "kernel"}
            results = [gl.to_numpy(a) for a in (y, dx, gpu_layer.weight.grad)]
            if gpu_layer.bias is not None:
                results.append(gl.to_numpy(gpu_layer.bias.grad))
        finally:
            gl.cuda.set_conv_algorithm("auto")
    assert kernels_run, "the conv2d kernels ran"
    assert all("conv2d" in k or "im2col" in k or "col2im" in k or "gemm" in k for k in kernels_run), kernels_run
    expected = [y_cpu, dx_cpu, cpu_layer.weight.grad] + ([cpu_layer.bias.grad] if cpu_layer.bias is not None else [])
    for got, want in zip(results, expected, strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("output_size", [(9, 9), (10, 10), (10, 9), [2, 4, 9, 10]])
def test_conv_transpose2d_output_size_picks_the_output_padding_like_torch(output_size):
    ref = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1).double()
    ours = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1).double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 5))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt, output_size=output_size)
    y = ours(x, output_size=output_size)
    g = np.random.default_rng(4).standard_normal(y.shape)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ours.weight.grad, ref.weight.grad.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    ("output_size", "match"),
    [
        (
            (11, 9),
            r"ConvTranspose2d: requested an output size of \(11, 9\), but valid sizes range from 9 to 10 on axis 2",
        ),
        ((9,), r"ConvTranspose2d: expected output_size to be \(OH, OW\) or \(N, C, OH, OW\)"),
    ],
)
def test_conv_transpose2d_bad_output_size(output_size, match):
    with pytest.raises(ValueError, match=match):
        nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1)(np.zeros((1, 4, 5, 5), np.float32), output_size=output_size)
