"""Bad inputs to the layers, optimisers and library functions: always a clear TypeError/ValueError
(or RuntimeError for state) naming the class or function, never an IndexError, a broadcast
error or a silent result. A seeded, bounded random sweep plus the known cases one by one."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import functional as F
from gpulayers import nn, optim

NAN, INF = math.nan, math.inf
CLEAR = (TypeError, ValueError, RuntimeError)

# name -> (factory, a valid input shape, the axes whose size the layer fixes)
LAYERS = {
    "Linear": (lambda: nn.Linear(3, 2), (4, 3)),
    "Conv2d": (lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 2, 3, 3)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (2, 2, 4, 4)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), (2, 2, 4, 4)),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d(2), (2, 2, 4, 4)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), (4, 3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(2), (2, 2, 4, 4)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (2, 4, 3)),
    "LayerNorm": (lambda: nn.LayerNorm(3), (4, 3)),
    "ReLU": (lambda: nn.ReLU(), (4, 3)),
    "LeakyReLU": (lambda: nn.LeakyReLU(), (4, 3)),
    "Sigmoid": (lambda: nn.Sigmoid(), (4, 3)),
    "Tanh": (lambda: nn.Tanh(), (4, 3)),
    "GELU": (lambda: nn.GELU(), (4, 3)),
    "SiLU": (lambda: nn.SiLU(), (4, 3)),
    "Softmax": (lambda: nn.Softmax(1), (4, 3)),
    "LogSoftmax": (lambda: nn.LogSoftmax(1), (4, 3)),
    "Dropout": (lambda: nn.Dropout(0.5), (4, 3)),
    "Dropout2d": (lambda: nn.Dropout2d(0.5), (2, 3, 2, 2)),
}

BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, np.float16, object]


def _mutations(shape: tuple[int, ...], rng: np.random.Generator):
    """One random bad (or borderline) input: (label, array-like, must_fail)."""
    kind = rng.integers(0, 7)
    if kind == 0:
        dtype = BAD_DTYPES[rng.integers(0, len(BAD_DTYPES))]
        return f"dtype {np.dtype(dtype)}", np.zeros(shape, dtype), True
    if kind == 1:
        return "python list", np.zeros(shape, np.float32).tolist(), True
    if kind == 2:  # another rank
        extra = int(rng.integers(1, 3))
        new = shape + (2,) * extra if rng.random() < 0.5 else shape[: max(0, len(shape) - extra)]
        return f"rank {len(new)}", np.zeros(new, np.float32), None
    if kind == 3:  # another size on a fixed axis (channels or features)
        axis = int(rng.integers(0, len(shape)))
        new = list(shape)
        new[axis] = int(rng.integers(1, 9))
        return f"shape {tuple(new)}", np.zeros(new, np.float32), None
    if kind == 4:
        return "empty batch", np.zeros((0,) + shape[1:], np.float32), None
    if kind == 5:
        return "float64 into float32 parameters", np.zeros(shape, np.float64), None
    return "0-d", np.float32(1.0), None


def _cases(draws_per_layer: int = 12):
    cases = []
    for name in LAYERS:
        rng = np.random.default_rng(sum(map(ord, name)))
        for i in range(draws_per_layer):
            cases.append(pytest.param(name, _mutations(LAYERS[name][1], rng), id=f"{name}-{i}"))
    return cases


@pytest.mark.parametrize("name,mutation", _cases())
def test_random_bad_inputs_give_clear_errors(name, mutation):
    label, x, must_fail = mutation
    make, shape = LAYERS[name]
    layer = make()
    try:
        y = layer(x)
    except CLEAR as exc:
        assert str(exc).startswith(name), f"{label}: message does not name {name}: {exc}"
        return
    except IndexError as exc:  # only a dim out of range, as PyTorch's IndexError, and named
        assert str(exc).startswith(f"{name}: dim "), f"{name} with {label}: IndexError: {exc}"
        return
    except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
        pytest.fail(f"{name} with {label}: {type(exc).__name__}: {exc}")
    assert not must_fail, f"{name} accepted {label} silently"
    # Accepted: a floating result of the input's dtype, and a backward that runs.
    assert y.dtype == np.asarray(x).dtype and np.dtype(y.dtype) in (np.float32, np.float64)
    try:
        dx = layer.backward(np.ones_like(y))
    except CLEAR as exc:
        assert str(exc).startswith(name), exc
        return
    assert dx.shape == np.shape(x)


@pytest.mark.parametrize("name", list(LAYERS))
def test_each_layer_refuses_complex_and_float16(name):
    make, shape = LAYERS[name]
    for dtype in (np.complex64, np.float16):
        with pytest.raises(TypeError, match=rf"{name}: expected a floating-point input \(float32 or float64\)"):
            make()(np.zeros(shape, dtype))


# ------------------------------------------------------------------------------------------------ constructors
BAD_VALUES = [True, False, -1, 0, 2.5, NAN, INF, -INF, "x", None, (1, 2, 3), -(2**40), [], np.float64(NAN)]

CONSTRUCTORS = {
    "Linear": (nn.Linear, dict(in_features=3, out_features=2, bias=True)),
    "Conv2d": (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, stride=1, padding=0, dilation=1)),
    "MaxPool2d": (nn.MaxPool2d, dict(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)),
    "AvgPool2d": (nn.AvgPool2d, dict(kernel_size=2, stride=2, padding=0, ceil_mode=False, count_include_pad=True)),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, dict(output_size=2)),
    "BatchNorm2d": (nn.BatchNorm2d, dict(num_features=2, eps=1e-5, momentum=0.1, affine=True)),
    "LeakyReLU": (nn.LeakyReLU, dict(negative_slope=0.01, inplace=False)),
    "ReLU": (nn.ReLU, dict(inplace=False)),
    "Dropout": (nn.Dropout, dict(p=0.5, inplace=False)),
    "Flatten": (nn.Flatten, dict(start_dim=1, end_dim=-1)),
    "SGD": (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False)),
    "Adam": (optim.Adam, dict(lr=0.1, eps=1e-8, weight_decay=0.0, amsgrad=False)),
}


def _build(name, kwargs):
    cls, _ = CONSTRUCTORS[name]
    if name in ("SGD", "Adam"):
        return cls([nn.Parameter(np.zeros(2, np.float32))], **kwargs)
    return cls(**kwargs)


def _constructor_cases(draws: int = 10):
    cases = []
    rng = np.random.default_rng(2024)
    for name, (_, good) in CONSTRUCTORS.items():
        for i in range(draws):
            arg = list(good)[rng.integers(0, len(good))]
            value = BAD_VALUES[rng.integers(0, len(BAD_VALUES))]
            cases.append(pytest.param(name, arg, value, id=f"{name}-{i}-{arg}={value!r}"))
    return cases


# (constructor, argument) -> the values among BAD_VALUES that are legal there (PyTorch takes them too)
_LEGAL = {
    ("Linear", "in_features"): [0],
    ("Linear", "out_features"): [0],
    ("Conv2d", "padding"): [0],
    ("MaxPool2d", "stride"): [None, []],
    ("MaxPool2d", "padding"): [0],
    ("AvgPool2d", "stride"): [None, []],
    ("AvgPool2d", "padding"): [0],
    ("AdaptiveAvgPool2d", "output_size"): [None],
    ("BatchNorm2d", "momentum"): [None, 0],
    ("BatchNorm2d", "eps"): [2.5],
    ("LeakyReLU", "negative_slope"): [-1, 0, 2.5, -(2**40)],
    ("Dropout", "p"): [0],
    ("Flatten", "start_dim"): [-1, 0],
    ("Flatten", "end_dim"): [-1, 0, -(2**40)],
    ("SGD", "lr"): [0, 2.5],
    ("SGD", "momentum"): [0, 2.5],
    ("SGD", "weight_decay"): [0, 2.5],
    ("Adam", "lr"): [0, 2.5],
    ("Adam", "eps"): [0, 2.5],
    ("Adam", "weight_decay"): [0, 2.5],
}


def _legal(name: str, arg: str, value) -> bool:
    if isinstance(CONSTRUCTORS[name][1][arg], bool):
        return isinstance(value, bool)
    return any(type(value) is type(v) and value == v for v in _LEGAL.get((name, arg), []))


@pytest.mark.parametrize("name,arg,value", _constructor_cases())
def test_random_bad_constructor_arguments_are_refused_by_name(name, arg, value):
    kwargs = {**CONSTRUCTORS[name][1], arg: value}
    try:
        _build(name, kwargs)
    except (TypeError, ValueError) as exc:
        assert str(exc).startswith(name), f"message does not name {name}: {exc}"
        return
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{name}({arg}={value!r}): {type(exc).__name__}: {exc}")
    assert _legal(name, arg, value), f"{name}({arg}={value!r}) accepted silently"


@pytest.mark.parametrize(
    "make,exc,pattern",
    [
        (lambda: nn.Conv2d(1, 2, 3, bias="no"), TypeError, "Conv2d: expected bias to be a bool"),
        (lambda: nn.ConvTranspose2d(1, 2, 3, bias="no"), TypeError, "ConvTranspose2d: expected bias to be a bool"),
        (lambda: nn.GroupNorm(1, 2, affine="no"), TypeError, "GroupNorm: expected affine to be a bool"),
        (lambda: nn.GroupNorm(1, 2, eps=INF), ValueError, "GroupNorm: expected a finite eps >= 0"),
        (lambda: nn.LayerNorm(2, elementwise_affine="no"), TypeError, "LayerNorm: expected elementwise_affine"),
        (lambda: nn.LayerNorm(2, bias="no"), TypeError, "LayerNorm: expected bias to be a bool"),
        (lambda: nn.Linear(3, 2, bias="no"), TypeError, "Linear: expected bias to be a bool"),
        (lambda: nn.BatchNorm2d(2, affine="no"), TypeError, "BatchNorm2d: expected affine to be a bool"),
        (lambda: nn.BatchNorm2d(2, eps=INF), ValueError, "BatchNorm2d: expected a finite eps > 0"),
        (lambda: nn.MaxPool2d(2, ceil_mode="no"), TypeError, "MaxPool2d: expected ceil_mode to be a bool"),
        (lambda: nn.AvgPool2d(2, count_include_pad="no"), TypeError, "AvgPool2d: expected count_include_pad"),
        (lambda: nn.ReLU(inplace="no"), TypeError, "ReLU: expected inplace to be a bool"),
        (lambda: nn.Dropout(0.5, inplace=1), TypeError, "Dropout: expected inplace to be a bool"),
        (lambda: nn.LeakyReLU(NAN), ValueError, "LeakyReLU: expected a finite negative_slope"),
        (lambda: nn.LeakyReLU(INF), ValueError, "LeakyReLU: expected a finite negative_slope"),
        (lambda: optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, momentum=INF), ValueError, "SGD: invalid momentum"),
        (lambda: optim.Adam([nn.Parameter(np.zeros(2))], lr=INF), ValueError, "Adam: invalid learning rate lr inf"),
        (lambda: optim.Adam([nn.Parameter(np.zeros(2))], amsgrad="no"), TypeError, "Adam: expected amsgrad"),
        (lambda: optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, nesterov="no"), TypeError, "SGD: expected nesterov"),
        (lambda: gl.manual_seed(True), TypeError, "manual_seed: expected a non-negative integer, got bool"),
        (lambda: gl.manual_seed(1.5), TypeError, "manual_seed: expected a non-negative integer, got float"),
        (lambda: nn.Dropout()(np.zeros(3, np.float16)), TypeError, "Dropout: expected a floating-point input"),
        (lambda: optim.RMSprop([nn.Parameter(np.zeros(2))], centered="no"), TypeError, "RMSprop: expected centered"),
        (
            lambda: nn.CrossEntropyLoss(weight=np.array([NAN, 1.0])),
            ValueError,
            "CrossEntropyLoss: expected finite weight",
        ),
        (lambda: nn.NLLLoss(weight=np.array([INF, 1.0])), ValueError, "NLLLoss: expected finite weight"),
        (
            lambda: nn.BCEWithLogitsLoss(pos_weight=np.array([INF])),
            ValueError,
            "BCEWithLogitsLoss: expected finite pos_weight",
        ),
        (
            lambda: optim.lr_scheduler.StepLR(optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1), 2, last_epoch=True),
            TypeError,
            "StepLR: expected last_epoch to be an int, got bool",
        ),
    ],
)
def test_known_silent_or_obscure_arguments_now_refused(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


# ------------------------------------------------------------------------------------------------ functional
def _f32(*shape):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda: F.group_norm_forward(_f32(2, 4, 3), 2, eps=NAN), ValueError, "group_norm: expected a finite eps"),
        (
            lambda: F.group_norm_forward(_f32(2, 6, 3), 2, num_channels=4, name="GroupNorm"),
            ValueError,
            r"GroupNorm: expected input with 4 channels, got 6",
        ),
        (lambda: nn.GroupNorm(2, 4)(_f32(2, 6, 3)), ValueError, r"GroupNorm: expected input with 4 channels, got 6"),
        (lambda: F.layer_norm_forward(_f32(2, 3), (3,), eps=INF), ValueError, "layer_norm: expected a finite eps"),
        (lambda: F.layer_norm_forward(_f32(2, 3), True), TypeError, "layer_norm: expected normalized_shape"),
        (lambda: F.group_norm_backward(_f32(2, 4, 3), None), TypeError, "group_norm.backward: expected the cache"),
        (lambda: F.layer_norm_backward(_f32(2, 3), {}), TypeError, "layer_norm.backward: expected the cache"),
        (
            lambda: F.layer_norm_backward(_f32(2, 4), F.layer_norm_forward(_f32(2, 3), (3,))[1]),
            ValueError,
            r"layer_norm.backward: expected grad_output of shape \(2, 3\), got \(2, 4\)",
        ),
        (
            lambda: F.group_norm_backward(_f32(2, 4, 2), F.group_norm_forward(_f32(2, 4, 3), 2)[1]),
            ValueError,
            r"group_norm.backward: expected grad_output of shape \(2, 4, 3\)",
        ),
        (lambda: F.erf(np.zeros(3, np.int64)), TypeError, "erf: expected a floating-point input"),
        (lambda: F.avg_pool2d_forward(_f32(1, 1, 4, 4), 2, count_include_pad="no"), TypeError, "avg_pool2d"),
        (lambda: F.max_pool2d_forward(_f32(1, 1, 4, 4), 2, ceil_mode="no"), TypeError, "max_pool2d: expected ceil"),
        (
            lambda: F.batch_norm_forward(_f32(2, 3), None, None, None, None, True, 0.1, 0.0),
            ValueError,
            "batch_norm: expected eps > 0",
        ),
    ],
)
def test_functional_bad_arguments_name_the_op(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_layer_norm_functional_takes_an_int_shape_like_torch():
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(F.layer_norm_forward(x, 3)[0], F.layer_norm_forward(x, (3,))[0])


@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda: nn.Parameter([1.0, 2.0]), TypeError, "Parameter: expected a NumPy or CuPy array, got list"),
        (lambda: nn.Parameter(np.zeros(3, np.int64)), TypeError, "Parameter: expected a floating-point array"),
        (lambda: nn.Linear(2, 2).to(dtype=np.float16), TypeError, r"Linear.to: expected a floating dtype \(float32"),
        (lambda: nn.Linear(2, 2).train("no"), TypeError, "Linear.train: expected mode to be a bool"),
        (lambda: nn.Linear(2, 2).load_state_dict([1]), TypeError, "Linear.load_state_dict: expected a dict"),
        (
            lambda: nn.Linear(2, 2).load_state_dict(nn.Linear(2, 2).state_dict(), strict="no"),
            TypeError,
            "Linear.load_state_dict: expected strict to be a bool",
        ),
        (lambda: gl.gradcheck(3, np.zeros((2, 3))), TypeError, "gradcheck: expected a Module, got int"),
        (
            lambda: gl.gradcheck(nn.Linear(3, 2).double(), np.zeros((2, 3)), eps=NAN),
            ValueError,
            "gradcheck: expected a finite eps",
        ),
        (
            lambda: nn.summary(nn.Linear(3, 2), "abc"),
            TypeError,
            "summary: expected input_shape to be an int or a tuple",
        ),
        (lambda: nn.summary(nn.Linear(3, 2), (3,), batch_size=True), TypeError, "summary: expected batch_size"),
        (lambda: nn.summary(3, (3,)), TypeError, "summary: expected a Module"),
    ],
)
def test_module_and_tool_arguments_name_the_function(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


_F_LINEAR = [
    (lambda: F.linear_forward(np.zeros((2, 3)), np.zeros(3)), "weight"),
    (lambda: F.linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(5)), "bias"),
    (lambda: F.linear_forward(np.zeros((2, 3), np.int64), np.zeros((4, 3))), "floating"),
    (lambda: F.linear_forward([[0.0, 0.0, 0.0]], np.zeros((4, 3))), "array"),
    (lambda: F.linear_forward(np.zeros((2, 3)), np.zeros((4, 3), np.float32)), "dtype"),
    (lambda: F.linear_backward(np.zeros((2, 5)), F.linear_forward(np.zeros((2, 3)), np.zeros((4, 3)))[1]), "shape"),
    (lambda: F.linear_backward(np.zeros((2, 4)), None), "cache"),
]


@pytest.mark.parametrize("call,what", _F_LINEAR, ids=[w for _, w in _F_LINEAR])
def test_functional_linear_validates_like_the_module(call, what):
    """Once an IndexError or a NumPy broadcast error; now a message naming the op."""
    with pytest.raises((ValueError, TypeError), match=r"^linear"):
        call()
