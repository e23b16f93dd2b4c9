"""Acceptance checks of docs/API.md (the public API contract), statement by statement: the rules.

Each section follows the contract: devices and arrays, layer and optimiser signatures (PyTorch's
names, order and defaults), the Module members, and the bad-input rules. The numbers against
PyTorch (layers, zero-size batches, losses, optimisers, the training-step snippet, the functional
pairs) are in test_api_contract_pytorch.py.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from helpers import one_block_cnn

import gpulayers as gl
from gpulayers import nn, optim

tnn = torch.nn

# ---------------------------------------------------------------------------------------------
# Devices and arrays
# ---------------------------------------------------------------------------------------------


def test_contract_imports_and_backend_basics():
    x = np.arange(6, dtype=np.float32)
    assert gl.to_device(x, "cpu") is x  # no copy when already there
    assert gl.to_numpy(x) is x
    assert isinstance(gl.to_numpy([1.0, 2.0]), np.ndarray)
    assert gl.get_array_module(x) is np
    assert isinstance(gl.cuda_is_available(), bool)
    assert gl.default_device() in ("cpu", "cuda")


def test_contract_manual_seed_covers_init_dropout_and_shuffling():
    def draw():
        gl.manual_seed(1234)
        w = nn.Conv2d(2, 3, 3).weight.data.copy()
        mask = nn.Dropout(0.5)(np.ones((8, 8), np.float32))
        data = (np.zeros((20, 1, 2, 2), np.float32), np.arange(20))
        order = np.concatenate([y for _, y in gl.data.DataLoader(data, batch_size=5, shuffle=True)])
        return w, mask, order

    first, second = draw(), draw()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], np.arange(20))  # it did shuffle
    gl.manual_seed(99)
    assert not np.array_equal(nn.Conv2d(2, 3, 3).weight.data, first[0])


# ---------------------------------------------------------------------------------------------
# Signatures: PyTorch's names, order and defaults
# ---------------------------------------------------------------------------------------------

API_SIGNATURES = {
    "Conv2d": "in_channels out_channels kernel_size stride=1 padding=0 dilation=1 groups=1 bias=True",
    "MaxPool2d": "kernel_size stride=None padding=0 dilation=1 ceil_mode=False",
    "AvgPool2d": "kernel_size stride=None padding=0 ceil_mode=False count_include_pad=True",
    "AdaptiveAvgPool2d": "output_size",
    "BatchNorm1d": "num_features eps=1e-05 momentum=0.1 affine=True track_running_stats=True",
    "BatchNorm2d": "num_features eps=1e-05 momentum=0.1 affine=True track_running_stats=True",
    "Linear": "in_features out_features bias=True",
    "Dropout": "p=0.5",
    "LeakyReLU": "negative_slope=0.01",
    "Flatten": "start_dim=1 end_dim=-1",
    "CrossEntropyLoss": "weight=None ignore_index=-100 reduction=mean label_smoothing=0.0",
    "NLLLoss": "weight=None ignore_index=-100 reduction=mean",
    "BCEWithLogitsLoss": "weight=None reduction=mean pos_weight=None",
    "MSELoss": "reduction=mean",
    "ConvTranspose2d": (
        "in_channels out_channels kernel_size stride=1 padding=0 output_padding=0 groups=1 bias=True dilation=1"
    ),
    "GroupNorm": "num_groups num_channels eps=1e-05 affine=True",
    "LayerNorm": "normalized_shape eps=1e-05 elementwise_affine=True bias=True",
    "Dropout2d": "p=0.5",
    "Softmax": "dim=None",
    "LogSoftmax": "dim=None",
    "GELU": "approximate=none",
    "SiLU": "",
}


def _described(cls) -> list[str]:
    params = inspect.signature(cls).parameters.values()
    return [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default}" for p in params]


@pytest.mark.parametrize("name", sorted(API_SIGNATURES))
def test_contract_layer_signature_matches_api_and_pytorch(name):
    want = API_SIGNATURES[name].split()
    assert _described(getattr(nn, name))[: len(want)] == want
    torch_params = inspect.signature(getattr(tnn, name)).parameters
    for p in inspect.signature(getattr(nn, name)).parameters.values():
        assert p.name in torch_params, p.name
        assert p.default == torch_params[p.name].default, p.name


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("SGD", "params lr momentum=0 dampening=0 weight_decay=0 nesterov=False"),
        ("Adam", "params lr=0.001 betas=(0.9,0.999) eps=1e-08 weight_decay=0"),
        ("AdamW", "params lr=0.001 betas=(0.9,0.999) eps=1e-08 weight_decay=0.01"),
        ("RMSprop", "params lr=0.01 alpha=0.99 eps=1e-08 weight_decay=0 momentum=0 centered=False"),
    ],
)
def test_contract_optimiser_signature(name, want):
    want = want.split()
    assert [d.replace(" ", "") for d in _described(getattr(optim, name))][: len(want)] == want


# ---------------------------------------------------------------------------------------------
# Module members
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["to_float64", "double", "to_positional", "float"])
def test_contract_to_float_double_return_self_and_cast_floating_buffers(method):
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    want = np.float32 if method == "float" else np.float64
    if method == "float":
        m.double()
    out = {
        "to_float64": lambda: m.to(dtype=np.float64),
        "double": m.double,
        "to_positional": lambda: m.to("cpu", np.float64),
        "float": m.float,
    }[method]()
    assert out is m
    assert m.to("cpu") is m
    bn = m[1]
    assert all(p.data.dtype == want for p in m.parameters())
    assert bn.running_mean.dtype == want and bn.running_var.dtype == want
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()


@pytest.mark.parametrize(
    "factory",
    [
        lambda ns: ns.BatchNorm2d(3),
        lambda ns: ns.BatchNorm2d(3, affine=False),
        lambda ns: ns.BatchNorm2d(3, track_running_stats=False),
        lambda ns: ns.BatchNorm1d(3, affine=False, track_running_stats=False),
        lambda ns: ns.Conv2d(2, 3, 3, bias=False),
        lambda ns: ns.Linear(2, 3, bias=False),
        one_block_cnn,
    ],
    ids=["bn", "bn-noaffine", "bn-notrack", "bn1d-bare", "conv-nobias", "linear-nobias", "model"],
)
def test_contract_state_dict_keys_dtypes_shapes_match_pytorch(factory):
    ours, theirs = factory(nn).state_dict(), factory(tnn).state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert type(ours[key]) is np.ndarray
        assert ours[key].dtype == value.numpy().dtype, key
        assert ours[key].shape == tuple(value.shape), key
    assert [n for n, _ in factory(nn).named_parameters()] == [n for n, _ in factory(tnn).named_parameters()]


@pytest.mark.parametrize("form", ["numpy", "tensor", "float64-numpy"])
def test_contract_load_state_dict_from_pytorch_keeps_dtype(form):
    torch.manual_seed(0)
    ref = one_block_cnn(tnn)
    ref.train()
    ref(torch.randn(3, 1, 28, 28))  # running stats and num_batches_tracked move
    sd = ref.state_dict()
    if form == "numpy":
        sd = {k: v.numpy() for k, v in sd.items()}
    elif form == "float64-numpy":
        sd = {k: v.numpy().astype(np.float64) if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    m = one_block_cnn(nn)
    result = m.load_state_dict(sd)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    got = m.state_dict()
    for key, value in ref.state_dict().items():
        np.testing.assert_allclose(got[key], value.numpy(), rtol=1e-6)
        assert got[key].dtype == value.numpy().dtype  # the module's dtype, not the source's
    assert int(got["1.num_batches_tracked"]) == 1
    m.eval()
    ref.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(m(x), ref(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_contract_load_state_dict_into_double_model_stays_double():
    m = nn.BatchNorm2d(2).double()
    m.load_state_dict({k: v.numpy() for k, v in tnn.BatchNorm2d(2).state_dict().items()})
    assert m.weight.data.dtype == np.float64 and m.running_var.dtype == np.float64
    assert m.num_batches_tracked.dtype == np.int64


def test_contract_load_state_dict_non_strict_reports_keys_like_pytorch():
    m = nn.Linear(2, 3)
    sd = {"weight": np.ones((3, 2), np.float32), "extra": np.zeros(1)}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert list(missing) == ["bias"] and list(unexpected) == ["extra"]
    np.testing.assert_array_equal(m.weight.data, 1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda sd: sd.pop("1.running_var"), r"missing keys.*'1\.running_var'"),
        (lambda sd: sd.update({"7.weight": np.zeros(1)}), r"unexpected keys.*'7\.weight'"),
        (lambda sd: sd.update({"6.bias": np.zeros(11)}), r"'6\.bias'.*expected \(10,\), got \(11,\)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_contract_load_state_dict_strict_errors_name_the_key(change, match):
    m = one_block_cnn(nn)
    sd = m.state_dict()
    change(sd)
    with pytest.raises(RuntimeError, match=match):
        m.load_state_dict(sd)


def test_contract_zero_grad_backward_adds_and_sequential_runs_in_reverse():
    order = []

    class Spy(nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def forward(self, x):
            return x

        def backward(self, grad_output):
            order.append(self.tag)
            return grad_output

    seq = nn.Sequential(Spy(0), nn.Linear(2, 2), Spy(2))
    x = np.ones((3, 2), np.float32)
    seq(x)
    seq.backward(np.ones((3, 2), np.float32))
    assert order == [2, 0]
    lin = seq[1]
    first = lin.weight.grad.copy()
    seq(x)
    seq.backward(np.ones((3, 2), np.float32))
    np.testing.assert_allclose(lin.weight.grad, 2 * first)  # adds, does not overwrite
    seq.zero_grad()
    assert all(p.grad is None or not p.grad.any() for p in seq.parameters())


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Bad input: the right exception, naming the layer, the expected and the received value
# ---------------------------------------------------------------------------------------------


def _f32(*shape):
    return np.zeros(shape, np.float32)


def _run_backward(layer, x, dy):
    layer(x)
    layer.backward(dy)


BAD_INPUT = {
    "conv-rank": (
        lambda: nn.Conv2d(3, 4, 3)(_f32(3, 5, 5)),
        ValueError,
        r"Conv2d: expected a 4-D .*got shape \(3, 5, 5\)",
    ),
    "conv-channels": (
        lambda: nn.Conv2d(3, 4, 3)(_f32(1, 4, 5, 5)),
        ValueError,
        r"Conv2d: expected .*3 channels, got 4",
    ),
    "conv-int": (lambda: nn.Conv2d(3, 4, 3)(np.zeros((1, 3, 5, 5), np.int64)), TypeError, r"Conv2d: .*floating.*int64"),
    "conv-dtype": (lambda: nn.Conv2d(3, 4, 3)(np.zeros((1, 3, 5, 5))), TypeError, r"Conv2d: .*float64.*float32"),
    "conv-small": (lambda: nn.Conv2d(3, 4, 5)(_f32(1, 3, 3, 3)), ValueError, r"Conv2d: the kernel .*larger"),
    "conv-stride0": (lambda: nn.Conv2d(3, 4, 3, stride=0), ValueError, r"Conv2d: expected stride >= 1, got 0"),
    "conv-negpad": (lambda: nn.Conv2d(3, 4, 3, padding=-1), ValueError, r"Conv2d: expected padding >= 0, got -1"),
    "conv-groups": (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, r"Conv2d: .*divisible by groups=2, got 3"),
    "conv-same-stride": (lambda: nn.Conv2d(3, 4, 3, 2, "same"), ValueError, r"Conv2d: padding='same'.*stride"),
    "conv-grad-shape": (
        lambda: _run_backward(nn.Conv2d(3, 4, 3), _f32(1, 3, 5, 5), _f32(1, 4, 2, 2)),
        ValueError,
        r"Conv2d.backward: expected grad_output of shape \(1, 4, 3, 3\), got \(1, 4, 2, 2\)",
    ),
    "maxpool-rank": (lambda: nn.MaxPool2d(2)(_f32(3, 4, 4)), ValueError, r"MaxPool2d: expected a 4-D"),
    "maxpool-window": (lambda: nn.MaxPool2d(5)(_f32(1, 1, 3, 3)), ValueError, r"MaxPool2d: the window .*3 \+ 2\*0"),
    "maxpool-stride0": (lambda: nn.MaxPool2d(2, 0), ValueError, r"MaxPool2d: expected stride >= 1, got 0"),
    "maxpool-negpad": (lambda: nn.MaxPool2d(2, 2, -1), ValueError, r"MaxPool2d: expected padding >= 0, got -1"),
    "avgpool-window": (lambda: nn.AvgPool2d(4)(_f32(1, 1, 3, 3)), ValueError, r"AvgPool2d: the window .*larger"),
    "avgpool-int": (lambda: nn.AvgPool2d(2)(np.zeros((1, 1, 4, 4), np.int32)), TypeError, r"AvgPool2d: .*int32"),
    "adaptive-zero": (lambda: nn.AdaptiveAvgPool2d(0), ValueError, r"AdaptiveAvgPool2d: .*>= 1.*got 0"),
    "adaptive-empty-image": (
        lambda: nn.AdaptiveAvgPool2d(2)(_f32(1, 1, 0, 3)),
        ValueError,
        r"AdaptiveAvgPool2d: expected a non-empty image.*\(1, 1, 0, 3\)",
    ),
    "bn-rank": (lambda: nn.BatchNorm2d(3)(_f32(2, 3)), ValueError, r"BatchNorm2d: expected a 4-D .*\(2, 3\)"),
    "bn-channels": (lambda: nn.BatchNorm1d(3)(_f32(2, 4)), ValueError, r"BatchNorm1d: expected .*3 features.*got 4"),
    "bn-single": (
        lambda: nn.BatchNorm2d(3)(_f32(1, 3, 1, 1)),
        ValueError,
        r"BatchNorm2d: .*more than 1 value.*\(1, 3, 1, 1\)",
    ),
    "linear-features": (lambda: nn.Linear(3, 2)(_f32(2, 4)), ValueError, r"Linear: expected .*3 features.*got 4"),
    "linear-int": (lambda: nn.Linear(3, 2)(np.zeros((2, 3), np.int64)), TypeError, r"Linear: .*int64"),
    "dropout-p": (lambda: nn.Dropout(1.5), ValueError, r"Dropout: .*\[0, 1\], got 1\.5"),
    "relu-int": (lambda: nn.ReLU()(np.zeros(3, np.int64)), TypeError, r"ReLU: .*int64"),
    "flatten-order": (
        lambda: nn.Flatten(3, 1)(_f32(2, 3, 4, 5)),
        ValueError,
        r"Flatten: start_dim \(3\).*end_dim \(1\)",
    ),
    "ce-range": (
        lambda: nn.CrossEntropyLoss()(_f32(2, 3), np.array([0, 3])),
        ValueError,
        r"CrossEntropyLoss: expected class indices in \[0, 2\].*got 3",
    ),
    "ce-negative": (
        lambda: nn.CrossEntropyLoss()(_f32(2, 3), np.array([-1, 0])),
        ValueError,
        r"CrossEntropyLoss: .*got -1",
    ),
    "ce-shape": (
        lambda: nn.CrossEntropyLoss()(_f32(2, 3), np.array([0, 1, 2])),
        ValueError,
        r"CrossEntropyLoss: expected target of shape \(2,\).*got \(3,\)",
    ),
    "ce-float-labels": (
        lambda: nn.CrossEntropyLoss()(_f32(2, 3), np.zeros(2)),
        TypeError,
        r"CrossEntropyLoss: .*float64",
    ),
    "mse-shape": (lambda: nn.MSELoss()(_f32(2, 3), _f32(3)), ValueError, r"MSELoss: .*\(2, 3\), got \(3,\)"),
    "to-int-dtype": (lambda: nn.Linear(1, 1).to(dtype=np.int32), TypeError, r"Linear.to: .*floating.*int32"),
}

BACKWARD_FIRST = [
    nn.Conv2d(1, 1, 1),
    nn.MaxPool2d(2),
    nn.AvgPool2d(2),
    nn.AdaptiveAvgPool2d(1),
    nn.BatchNorm1d(2),
    nn.Linear(2, 2),
    nn.Dropout(),
    nn.ReLU(),
    nn.LeakyReLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Flatten(),
    nn.CrossEntropyLoss(),
    nn.MSELoss(),
]


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_contract_bad_input_raises_naming_layer_and_values(case):
    fn, kind, match = BAD_INPUT[case]
    with pytest.raises(kind, match=match):
        fn()


@pytest.mark.parametrize("layer", BACKWARD_FIRST, ids=lambda m: type(m).__name__)
def test_contract_backward_before_forward_raises(layer):
    name = type(layer).__name__
    with pytest.raises(RuntimeError, match=rf"{name}\.backward: called before forward"):
        layer.backward(np.ones((1, 2), np.float32)) if "Loss" not in name else layer.backward()


def test_contract_asking_for_cuda_without_one_says_why():
    if gl.cuda_is_available():
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(RuntimeError, match=r"'cuda'.*not usable: \w+"):
        gl.to_device(np.zeros(1), "cuda")
    with pytest.raises(RuntimeError, match=r"not usable"):
        nn.Linear(1, 1).to("cuda")
