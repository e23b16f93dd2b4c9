"""Conv2d and the conv2d ops against PyTorch, gradcheck and a hand-computed value."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_backward_guards, requires_gpu

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn
from gpulayers.ops import conv2d as conv_ops
from gpulayers.ops import conv2d_cpu

torch = pytest.importorskip("torch")

# PyTorch warns that it pads "same" with an even kernel through a copy; so do we.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


def _torch_twin(ours: nn.Conv2d, dtype) -> torch.nn.Conv2d:
    """A PyTorch Conv2d with the same options, loaded from our state_dict."""
    ref = torch.nn.Conv2d(
        ours.in_channels,
        ours.out_channels,
        ours.kernel_size,
        stride=ours.stride,
        padding=ours.padding,
        dilation=ours.dilation,
        groups=ours.groups,
        bias=ours.bias is not None,
    )
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ref.to(torch.float64 if dtype == np.float64 else torch.float32)


def _run_both(ours: nn.Conv2d, x: np.ndarray, device: str):
    """Forward and backward in both libraries; returns ((y, dx, dw, db) ours, same for torch)."""
    dtype = x.dtype.type
    ref = _torch_twin(ours, dtype)
    ours.to(device, dtype)
    y = ours(gl.to_device(x, device))
    g = np.random.standard_normal(y.shape).astype(dtype)
    dx = ours.backward(gl.to_device(g, device))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(g))
    mine = (y, dx, ours.weight.grad, None if ours.bias is None else ours.bias.grad)
    theirs = (yt, xt.grad, ref.weight.grad, None if ref.bias is None else ref.bias.grad)
    return [None if a is None else gl.to_numpy(a) for a in mine], [
        None if t is None else t.detach().numpy() for t in theirs
    ]


# -- a value computed by hand ------------------------------------------------------------------------


def test_conv2d_golden_value(device):
    x = np.array([[1, 2, 3, 0], [4, 5, 6, 0], [7, 8, 9, 0]], dtype=np.float32).reshape(1, 1, 3, 4)
    kernel = np.array([[1, 0, -1]] * 3, dtype=np.float32).reshape(1, 1, 3, 3)
    layer = nn.Conv2d(1, 1, 3)
    layer.load_state_dict({"weight": kernel, "bias": np.zeros(1, np.float32)})
    layer.to(device)
    y = layer(gl.to_device(x, device))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(gl.to_numpy(y), [[[[-6.0, 15.0]]]])


# -- PyTorch parity ----------------------------------------------------------------------------------

PARITY = [
    # (in, out, kernel, dict of options, input (N, H, W))
    pytest.param(3, 5, 3, {}, (2, 7, 9), id="plain-odd-size"),
    pytest.param(3, 4, 3, dict(padding=1), (2, 8, 8), id="pad1"),
    pytest.param(2, 4, (3, 2), dict(stride=2, padding=(1, 0)), (3, 9, 8), id="stride2-rect"),
    pytest.param(2, 3, 3, dict(stride=(2, 3), padding=2), (2, 11, 10), id="stride-2x3"),
    pytest.param(2, 3, 3, dict(dilation=2, padding=2), (2, 9, 9), id="dilation2"),
    pytest.param(2, 3, (2, 3), dict(dilation=(3, 1), stride=2), (2, 10, 7), id="dilation-rect-stride"),
    pytest.param(4, 6, 3, dict(groups=2, padding=1), (2, 6, 5), id="groups2"),
    pytest.param(4, 8, 3, dict(groups=4, padding=1), (2, 6, 6), id="depthwise-x2"),
    pytest.param(3, 3, 5, dict(groups=3, padding="same"), (2, 7, 6), id="depthwise-same"),
    pytest.param(2, 3, 4, dict(padding="same"), (2, 6, 7), id="same-even-kernel"),
    pytest.param(2, 3, (2, 3), dict(padding="same", dilation=(1, 2)), (2, 5, 8), id="same-asymmetric"),
    pytest.param(2, 3, 3, dict(padding="valid"), (2, 5, 5), id="valid"),
    pytest.param(3, 4, 1, {}, (2, 5, 4), id="1x1"),
    pytest.param(3, 4, 3, dict(padding=1, bias=False), (1, 6, 6), id="batch1-no-bias"),
    pytest.param(1, 2, 3, dict(padding=1), (2, 28, 28), id="mnist-first-layer"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cin, cout, k, opts, shape", PARITY)
def test_conv2d_matches_torch(device, dtype, cin, cout, k, opts, shape):
    ours = nn.Conv2d(cin, cout, k, **opts)
    x = np.random.standard_normal((shape[0], cin, *shape[1:])).astype(dtype)
    mine, theirs = _run_both(ours, x, device)
    for name, a, b in zip(("y", "dx", "dw", "db"), mine, theirs, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("sample_major", [0.0, 1e9], ids=["sample-major", "channel-major"])
@pytest.mark.parametrize(
    "opts",
    [dict(padding=1), dict(padding=(2, 1), dilation=2), dict(padding="same", groups=3), dict(stride=2, groups=3)],
)
def test_conv2d_both_column_layouts_match_torch(monkeypatch, sample_major, opts):
    """The CPU column layouts (per-sample GEMMs, or one GEMM over the whole batch) agree."""
    monkeypatch.setattr(conv2d_cpu, "SAMPLE_MAJOR_MAX_RATIO", sample_major)
    ours = nn.Conv2d(3, 6, 3, **opts)
    x = np.random.standard_normal((2, 3, 6, 7))
    mine, theirs = _run_both(ours, x, "cpu")
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, **TOL[np.float64])


FLAT = [
    # (in, out, kernel, options, input (N, H, W)): stride 1 and an output as wide as the input
    pytest.param(3, 6, 3, dict(padding=1), (9, 6, 7), id="3x3-pad1"),
    pytest.param(4, 2, 3, dict(padding=1), (9, 6, 7), id="fewer-out-channels"),
    pytest.param(2, 8, 3, dict(padding=1), (9, 6, 7), id="more-out-channels"),
    pytest.param(2, 3, 3, dict(padding=(0, 1)), (9, 6, 7), id="no-vertical-padding"),
    pytest.param(2, 3, 3, dict(padding=(3, 1)), (9, 4, 7), id="taller-output"),
    pytest.param(2, 3, 3, dict(padding=(2, 2), dilation=2), (9, 6, 7), id="dilated"),
    pytest.param(2, 3, (2, 5), dict(padding=(1, 2)), (9, 6, 3), id="padding-wider-than-half-the-input"),
    pytest.param(2, 3, 5, dict(padding=6, dilation=3), (9, 7, 2), id="dilated-wider-than-the-input"),
    pytest.param(4, 6, 3, dict(padding=1, groups=2), (9, 6, 7), id="groups"),
    pytest.param(3, 4, 3, dict(padding="same", dilation=(1, 2)), (9, 6, 7), id="same-dilated"),
    pytest.param(3, 4, 1, {}, (9, 6, 7), id="1x1"),
    pytest.param(1, 4, 3, dict(padding=1, bias=False), (9, 9, 9), id="one-channel"),
    # no more output than input channels: the forward splits the kernel too
    pytest.param(4, 4, 3, dict(padding=1, groups=2), (9, 6, 7), id="split-forward-groups"),
    pytest.param(5, 3, 3, dict(padding=(2, 2), dilation=2), (9, 6, 7), id="split-forward-dilated"),
    pytest.param(4, 3, 1, {}, (9, 5, 6), id="1x1-fewer-out-channels"),
    pytest.param(4, 6, 1, dict(groups=2), (9, 5, 6), id="1x1-groups"),
    pytest.param(3, 3, (3, 2), dict(padding=1, dilation=(1, 2), bias=False), (9, 6, 7), id="split-even-kernel"),
    # no kernel column is read unshifted, so the bias has no plane to ride on: the flat columns
    pytest.param(3, 3, (3, 2), dict(padding=1, dilation=(1, 2)), (9, 6, 7), id="even-kernel-with-bias"),
]


def _values(layer: nn.Conv2d, x: np.ndarray, g: np.ndarray) -> list[np.ndarray]:
    y = layer(x)
    dx = layer.backward(g)
    return [y, dx, layer.weight.grad] + ([] if layer.bias is None else [layer.bias.grad])


@pytest.mark.parametrize("cin, cout, k, opts, shape", FLAT)
def test_conv2d_flat_run_columns_match_torch_and_the_general_path(monkeypatch, cin, cout, k, opts, shape):
    """Stride-1 convolutions with an output as wide as the input take the flat-run columns forward
    and, where it moves less data, the split backward: chunks of 2 samples (a batch of 9 makes blocks
    of 3: chunks of 2 and 1), against PyTorch and against the general im2col path; also the ops that
    compute dx or dW alone (the transposed convolution's)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((shape[0], cin, *shape[1:]))
    ours = nn.Conv2d(cin, cout, k, **opts).to(dtype=np.float64)
    ref = _torch_twin(ours, np.float64)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(g))
    theirs = [yt.detach().numpy(), xt.grad.numpy(), ref.weight.grad.numpy()]
    theirs += [] if ref.bias is None else [ref.bias.grad.numpy()]

    with monkeypatch.context() as m:  # the general path, for comparison
        m.setattr(conv2d_cpu, "_flat", lambda *_: False)
        general = nn.Conv2d(cin, cout, k, **opts).to(dtype=np.float64)
        general.load_state_dict(ours.state_dict())
        expected = _values(general, x, g)
        # the ops behind ConvTranspose2d: dx alone and dW alone (int padding only)
        alone = (ours.weight.data, (1, 1), ours.padding, ours.dilation, ours.groups)
        if not isinstance(ours.padding, str):
            expected += [conv_ops.conv2d_input_grad(g, alone[0], x.shape, *alone[1:])]
            expected += [conv_ops.conv2d_weight_grad(x, g, alone[0].shape, *alone[1:])]

    plans, sizes = [], []
    real_plan, real_bounds = conv2d_cpu._flat_backward, conv2d_cpu._chunk_bounds

    def spy_plan(*args, **kwargs):
        plans.append(real_plan(*args, **kwargs))
        return plans[-1]

    def two_per_chunk(n, size):
        sizes.append([stop - start for start, stop in real_bounds(n, 2)])
        return real_bounds(n, 2)

    forwards = set()
    for name in ("_FlatForward", "_SplitForward"):
        real = getattr(conv2d_cpu, name)

        def spy_call(self, *args, real=real, name=name):
            forwards.add(name)
            return real.__call__(self, *args)

        monkeypatch.setattr(conv2d_cpu, name, type(name, (real,), {"__call__": spy_call}))
    monkeypatch.setattr(conv2d_cpu, "_flat_backward", spy_plan)
    monkeypatch.setattr(conv2d_cpu, "_chunk_bounds", two_per_chunk)
    mine = _values(ours, x, g)
    assert [2, 1] in sizes  # the forward at least ran the flat path, in unequal chunks
    # the forward splits the kernel with no more output than input channels and a column for the bias
    kw, dw = ours.kernel_size[1], ours.dilation[1]
    unshifted = any(2 * j * dw == dw * (kw - 1) for j in range(kw))  # pw = dw*(kw-1)/2 as OW == W
    split_forward = kw > 1 and cout <= cin and (ours.bias is None or unshifted)
    assert forwards == {"_SplitForward" if split_forward else "_FlatForward"}
    dh, kh = ours.dilation[0], ours.kernel_size[0]
    ph = dh * (kh - 1) // 2 if ours.padding == "same" else ours.padding[0]
    # a 1x1 kernel: per-sample GEMMs; else the split backward unless dy cannot be padded to x's
    # height, or the split does not move clearly less data than the general path
    fewer = kh * cout // ours.groups + 2 * ours.kernel_size[1] * cin // ours.groups
    general = 2 * kh * ours.kernel_size[1] * cin // ours.groups + cout // ours.groups
    split = ph <= dh * (kh - 1) and fewer <= conv2d_cpu.SPLIT_BACKWARD_MAX_ROWS * general
    if ours.kernel_size == (1, 1):
        assert isinstance(plans[0], conv2d_cpu._PointwiseBackward)
    else:
        assert isinstance(plans[0], conv2d_cpu._SplitBackward) == split
    if not isinstance(ours.padding, str):
        mine += [conv_ops.conv2d_input_grad(g, alone[0], x.shape, *alone[1:])]
        mine += [conv_ops.conv2d_weight_grad(x, g, alone[0].shape, *alone[1:])]
        theirs += [theirs[1], theirs[2]]
    names = (
        ["y", "dx", "dW"]
        + ([] if ours.bias is None else ["db"])
        + ["dx alone", "dW alone"][: len(mine) - 3 - (ours.bias is not None)]
    )
    for name, got, want, ref_value in zip(names, mine, expected, theirs, strict=True):
        np.testing.assert_allclose(got, ref_value, err_msg=name, **TOL[np.float64])
        np.testing.assert_allclose(got, want, err_msg=name, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("budget", [None, 0], ids=["kept", "built-every-call"])
def test_conv2d_flat_scratch_shared_by_layers_of_one_shape(monkeypatch, budget):
    """Two layers of one shape interleaved (forward A, forward B, backward B, backward A) use the same
    kept scratch per thread; with a budget of 0 bytes none is kept (built afresh for every call).
    Either way the values match PyTorch's, on two threads with several blocks."""
    from gpulayers import threads

    if budget is not None:
        monkeypatch.setattr(threads, "CACHE_BYTES", budget)
    monkeypatch.setattr(conv2d_cpu, "COLUMN_BLOCK_BYTES", 1 << 12)  # blocks of 2 samples
    before = gl.get_num_threads()
    gl.set_num_threads(2)
    try:
        rng = np.random.default_rng(11)
        x = [rng.standard_normal((7, 4, 6, 5)) for _ in range(2)]
        layers = [nn.Conv2d(4, c, 3, padding=1).to(dtype=np.float64) for c in (4, 6)]  # split and flat forward
        for pair in (layers, [nn.Conv2d(4, 4, 3, padding=1).to(dtype=np.float64) for _ in range(2)]):
            twins = [_torch_twin(layer, np.float64) for layer in pair]
            ys = [layer(xi) for layer, xi in zip(pair, x, strict=True)]
            gs = [rng.standard_normal(y.shape) for y in ys]
            dxs = [pair[k].backward(gs[k]) for k in (1, 0)][::-1]
            for k in range(2):
                xt = torch.from_numpy(x[k]).requires_grad_(True)
                yt = twins[k](xt)
                yt.backward(torch.from_numpy(gs[k]))
                np.testing.assert_allclose(ys[k], yt.detach().numpy(), **TOL[np.float64])
                np.testing.assert_allclose(dxs[k], xt.grad.numpy(), **TOL[np.float64])
                np.testing.assert_allclose(pair[k].weight.grad, twins[k].weight.grad.numpy(), **TOL[np.float64])
                np.testing.assert_allclose(pair[k].bias.grad, twins[k].bias.grad.numpy(), **TOL[np.float64])
    finally:
        gl.set_num_threads(before)


def test_conv2d_state_dict_round_trip_with_torch():
    ref = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
    ours = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})  # torch -> ours
    x = np.random.standard_normal((2, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(ours(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    back = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})  # ours -> torch
    for key, value in ref.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy())
    assert list(ours.state_dict()) == ["weight", "bias"] and ours.weight.shape == (6, 2, 3, 3)


def test_conv2d_functional_matches_torch():
    x = np.random.standard_normal((2, 4, 6, 5))
    w = np.random.standard_normal((6, 2, 3, 2))
    b = np.random.standard_normal(6)
    y, cache = F.conv2d_forward(x, w, b, stride=(1, 2), padding=(1, 0), dilation=1, groups=2)
    g = np.random.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(g, cache)
    xt, wt, bt = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=(1, 2), padding=(1, 0), groups=2)
    yt.backward(torch.from_numpy(g))
    for a, t in ((y, yt), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-10, atol=1e-10)
    _, cache = F.conv2d_forward(x, w, None, groups=2)
    assert F.conv2d_backward(np.ones((2, 6, 4, 4)), cache)[2] is None


def test_conv2d_gradients_accumulate():
    layer = nn.Conv2d(2, 3, 3, padding=1).double()
    x = np.random.standard_normal((2, 2, 4, 4))
    g = np.random.standard_normal((2, 3, 4, 4))
    layer(x)
    layer.backward(g)
    once = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * once[0])
    np.testing.assert_allclose(layer.bias.grad, 2 * once[1])


def test_conv2d_zero_size_batch_gives_empty_output(device):
    layer = nn.Conv2d(3, 4, 3, padding=1).to(device)
    x = gl.to_device(np.zeros((0, 3, 5, 5), np.float32), device)
    y = layer(x)
    assert y.shape == (0, 4, 5, 5) and y.dtype == np.float32
    dx = layer.backward(gl.to_device(np.zeros((0, 4, 5, 5), np.float32), device))
    assert dx.shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(gl.to_numpy(layer.weight.grad), 0)


# -- gradcheck ---------------------------------------------------------------------------------------

GRADCHECK = [
    pytest.param(2, 3, 3, {}, (2, 5, 5), id="plain"),
    pytest.param(2, 3, 3, dict(stride=2, padding=1), (2, 5, 6), id="stride2-pad1"),
    pytest.param(2, 2, (2, 3), dict(stride=(1, 2), padding=(1, 2)), (1, 4, 5), id="rect"),
    pytest.param(2, 2, 3, dict(dilation=2, padding=1), (1, 6, 5), id="dilation"),
    pytest.param(4, 2, 3, dict(groups=2, padding=1), (1, 4, 4), id="groups"),
    pytest.param(3, 3, 3, dict(groups=3, padding=1), (2, 4, 4), id="depthwise"),
    pytest.param(2, 2, 3, dict(padding="same"), (1, 4, 5), id="same"),
    pytest.param(2, 2, (2, 4), dict(padding="same"), (1, 4, 5), id="same-asymmetric"),
    pytest.param(2, 2, 3, dict(padding="valid", bias=False), (2, 4, 4), id="valid-no-bias"),
]


@pytest.mark.parametrize("cin, cout, k, opts, shape", GRADCHECK)
def test_conv2d_gradcheck(cin, cout, k, opts, shape):
    layer = nn.Conv2d(cin, cout, k, **opts).double()
    assert gl.gradcheck(layer, np.random.standard_normal((shape[0], cin, *shape[1:])))


# -- layer surface -----------------------------------------------------------------------------------


def test_conv2d_defaults_and_repr_match_torch():
    cases = [
        ((1, 8, 3), dict(padding=1)),
        ((4, 8, (3, 5)), dict(stride=2, padding="valid", dilation=2, groups=2, bias=False)),
        ((2, 2, 3), dict(padding="same")),
    ]
    for args, kwargs in cases:
        assert repr(nn.Conv2d(*args, **kwargs)) == repr(torch.nn.Conv2d(*args, **kwargs))
    assert repr(nn.Conv2d(1, 8, 3, padding=1)) == "Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    layer = nn.Conv2d(6, 4, 3, groups=2)
    assert layer.weight.shape == (4, 3, 3, 3) and layer.weight.dtype == np.float32
    bound = 1 / np.sqrt(3 * 3 * 3)  # kaiming-uniform(a=sqrt(5)) and the bias share this bound
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(stride=0), ValueError, r"Conv2d: expected stride >= 1"),
        (dict(padding=-1), ValueError, r"Conv2d: expected padding >= 0"),
        (dict(dilation=0), ValueError, r"Conv2d: expected dilation >= 1"),
        (dict(groups=4), ValueError, r"Conv2d: expected in_channels divisible by groups=4, got 6"),
        (dict(groups=3, out=4), ValueError, r"Conv2d: expected out_channels divisible by groups=3, got 4"),
        (dict(groups=0), ValueError, r"Conv2d: expected groups to be a positive int"),
        (dict(padding="same", stride=2), ValueError, r"Conv2d: padding='same' needs stride 1"),
        (dict(padding="full"), ValueError, r"Conv2d: expected padding to be .*'full'"),
        (dict(padding_mode="reflect"), ValueError, r"Conv2d: only padding_mode='zeros' .*'reflect'"),
        (dict(stride=1.5), TypeError, r"Conv2d: expected stride to be an int or a pair"),
    ],
)
def test_conv2d_rejects_bad_arguments(kwargs, exc, match):
    out = kwargs.pop("out", 6)
    with pytest.raises(exc, match=match):
        nn.Conv2d(6, out, 3, **kwargs)


def test_conv2d_rejects_bad_input():
    layer = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"Conv2d: expected a 4-D input \(N, C, H, W\), got shape \(3, 5, 5\)"):
        layer(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: expected input with 3 channels, got 2"):
        layer(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match=r"Conv2d: expected a floating-point input .* got dtype int64"):
        layer(np.zeros((1, 3, 5, 5), np.int64))
    with pytest.raises(TypeError, match=r"Conv2d: input dtype float64 does not match the weight dtype float32"):
        layer(np.zeros((1, 3, 5, 5), np.float64))
    with pytest.raises(ValueError, match=r"Conv2d: the kernel \(3 after dilation\) is larger than the padded input"):
        layer(np.zeros((1, 3, 2, 5), np.float32))
    assert_backward_guards(layer, np.zeros((1, 3, 5, 5), np.float32), (1, 4, 3, 3))


def test_conv2d_op_rejects_bad_input():
    x, w = np.zeros((1, 4, 5, 5)), np.zeros((6, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: expected input with 8 channels .*groups=4.*got 4"):
        F.conv2d_forward(x, np.zeros((8, 2, 3, 3)), None, groups=4)
    with pytest.raises(ValueError, match=r"conv2d: expected out_channels divisible by groups=4, got 6"):
        F.conv2d_forward(np.zeros((1, 8, 5, 5)), w, None, groups=4)
    with pytest.raises(ValueError, match=r"conv2d: expected a bias of shape \(6,\), got \(5,\)"):
        F.conv2d_forward(x, w, np.zeros(5), groups=2)
    with pytest.raises(ValueError, match=r"conv2d: expected a 4-D weight"):
        F.conv2d_forward(x, np.zeros((6, 2, 3)), None)
    with pytest.raises(ValueError, match=r"conv2d: padding='same' needs stride 1"):
        F.conv2d_forward(x, w, None, stride=2, padding="same", groups=2)
    with pytest.raises(RuntimeError, match=r"conv2d.backward: called before forward"):
        F.conv2d_backward(np.zeros((1, 6, 3, 3)), None)
    _, cache = F.conv2d_forward(x, w, None, groups=2)
    with pytest.raises(ValueError, match=r"conv2d.backward: expected grad_output of shape \(1, 6, 3, 3\)"):
        F.conv2d_backward(np.zeros((1, 6, 3, 2)), cache)


@pytest.mark.gpu
@requires_gpu
def test_conv2d_rejects_input_on_another_device():
    layer = nn.Conv2d(3, 4, 3)
    with pytest.raises(RuntimeError, match=r"Conv2d: input is on cuda:0 but the weight is on cpu"):
        layer(gl.to_device(np.zeros((1, 3, 5, 5), np.float32), "cuda"))
    layer.to("cuda")
    layer(gl.to_device(np.zeros((1, 3, 5, 5), np.float32), "cuda"))
    with pytest.raises(RuntimeError, match=r"Conv2d.backward: grad_output is on cpu but the forward ran on cuda:0"):
        layer.backward(np.zeros((1, 4, 3, 3), np.float32))
