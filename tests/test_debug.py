"""gl.set_debug: arrays that a forward keeps, edited in place before backward, are caught."""

from __future__ import annotations

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import debug, nn


@pytest.fixture(autouse=True)
def _debug_off():
    yield
    gl.set_debug(False)


def _data(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _edit_input(x, y):
    x[...] += 1


def _edit_output(x, y):
    y[...] += 1


def _edit_first_value(arr):
    arr.reshape(-1)[0] += 1


# (layer factory, input shape, edit between forward and backward)
CASES = {
    "Linear-input": (lambda: nn.Linear(3, 2), (4, 3), _edit_input),
    "Linear-weight": (lambda: nn.Linear(3, 2), (4, 3), None),
    "ReLU-output": (lambda: nn.ReLU(), (4, 3), _edit_output),
    "Sigmoid-output": (lambda: nn.Sigmoid(), (4, 3), _edit_output),
    "Tanh-output": (lambda: nn.Tanh(), (4, 3), _edit_output),
    "LeakyReLU-input": (lambda: nn.LeakyReLU(), (4, 3), _edit_input),
    "Conv2d-weight": (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5), None),
    "Conv2d-input": (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5), _edit_input),
    "BatchNorm2d-weight": (lambda: nn.BatchNorm2d(2), (3, 2, 4, 4), None),
    "BatchNorm2d-input": (lambda: nn.BatchNorm2d(2), (3, 2, 4, 4), _edit_input),
    "GELU-input": (lambda: nn.GELU(), (4, 3), _edit_input),
    "SiLU-input": (lambda: nn.SiLU(), (4, 3), _edit_input),
    "Softmax-output": (lambda: nn.Softmax(1), (4, 3), _edit_output),
    "LayerNorm-weight": (lambda: nn.LayerNorm(3), (4, 3), None),
}


def _run(make, shape, edit, debug_on):
    layer = make()
    x = _data(shape)
    with gl.debug_mode(debug_on):
        y = layer(x)
        if edit is None:  # an in-place edit of the layer's weight (as an optimiser step would do)
            _edit_first_value(layer.weight.data)
        else:
            edit(x, y)
        return layer, layer.backward(np.ones_like(y))


@pytest.mark.parametrize("case", list(CASES))
def test_in_place_edit_is_caught_in_debug_mode(case):
    make, shape, edit = CASES[case]
    name = case.split("-")[0]
    with pytest.raises(
        RuntimeError, match=rf"{name}.backward: an array that forward saved for backward .* modified in place"
    ):
        _run(make, shape, edit, True)


@pytest.mark.parametrize("case", list(CASES))
def test_in_place_edit_goes_unnoticed_without_debug_mode(case):
    """The default stays free of the check (and documents what the check is for)."""
    make, shape, edit = CASES[case]
    _run(make, shape, edit, False)


@pytest.mark.parametrize("case", list(CASES))
def test_debug_mode_changes_no_gradient(case):
    make, shape, _ = CASES[case]
    grads = []
    for on in (False, True):
        gl.manual_seed(0)
        layer = make()
        x = _data(shape)
        with gl.debug_mode(on):
            y = layer(x)
            grads.append(layer.backward(np.ones_like(y)))
    np.testing.assert_array_equal(grads[0], grads[1])


def test_bce_with_logits_input_edit_is_caught():
    criterion = nn.BCEWithLogitsLoss()
    logits, target = _data((4, 3)), np.ones((4, 3), np.float32)
    gl.set_debug(True)
    criterion(logits, target)
    logits[0, 0] = 5.0
    with pytest.raises(RuntimeError, match="BCEWithLogitsLoss.backward: an array that forward saved"):
        criterion.backward()


def test_layers_that_keep_nothing_of_yours_do_not_complain():
    """Pooling and dropout keep their own arrays: editing the input is harmless."""
    gl.set_debug(True)
    for layer in (nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Dropout(0.5), nn.Flatten()):
        x = _data((2, 2, 4, 4))
        y = layer(x)
        x[...] = 0.0
        assert layer.backward(np.ones_like(y)).shape == x.shape


def test_sequential_names_the_layer_whose_array_changed():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    gl.set_debug(True)
    x = _data((5, 3))
    model(x)
    x[0, 0] = 7.0
    with pytest.raises(RuntimeError, match="Linear.backward"):
        model.backward(np.ones((5, 2), np.float32))


def test_set_debug_and_context_manager():
    gl.set_debug(False)
    assert gl.is_debug() is False
    gl.set_debug(True)
    assert gl.is_debug() is True
    with gl.debug_mode(False):
        assert not gl.is_debug()
    assert gl.is_debug()
    gl.set_debug(False)
    with gl.debug_mode():
        assert gl.is_debug()
    assert not gl.is_debug()
    with pytest.raises(TypeError, match="set_debug: expected a bool, got int"):
        gl.set_debug(1)
    with pytest.raises(TypeError, match="debug_mode: expected a bool"):
        gl.debug_mode("yes")


@pytest.mark.parametrize("value,on", [("1", True), ("0", False), ("", False), ("yes", True)])
def test_environment_variable_turns_debug_on(value, on):
    import os
    import subprocess
    import sys

    env = {**os.environ, "GPULAYERS_DEBUG": value}
    out = subprocess.run(
        [sys.executable, "-c", "import gpulayers as gl; print(gl.is_debug())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(on)


def test_snapshot_walks_nested_caches_and_detects_nan_changes():
    class Slots:
        __slots__ = ("data", "name")

        def __init__(self, data):
            self.data, self.name = data, "s"

    a, b, c = np.zeros(3), np.full((2, 2), np.nan), np.arange(4.0)
    saved = ({"x": a, "inner": [b]}, Slots(c), 5, "text", None)
    gl.set_debug(True)
    token = debug.snapshot(saved)
    assert sorted(path for path, *_ in token) == ["[0]['inner'][0]", "[0]['x']", "[1].data"]
    debug.check_unchanged("Layer", token)  # unchanged: NaN equals itself bit for bit
    c[1] = 9.0
    with pytest.raises(RuntimeError, match=r"Layer.backward: .*\(item \[1\].data, shape \(4,\), dtype float64\)"):
        debug.check_unchanged("Layer", token)
    gl.set_debug(False)
    assert debug.snapshot(saved) is None


def test_gpu_arrays_are_checked_too(monkeypatch):
    """On the GPU the fingerprint is a device copy, compared bit for bit (here on the CuPy stand-in)."""
    from cupy_standin import install

    with install(None, monkeypatch) as cp:
        layer = nn.Linear(3, 2).to("cuda")
        gl.set_debug(True)
        x = cp.asarray(_data((4, 3)))
        y = layer(x)
        layer.backward(cp.ones_like(y))  # unchanged: fine
        y = layer(x)
        x[0, 0] = 3.0
        with pytest.raises(
            RuntimeError, match=r"Linear.backward: an array that forward saved .*\(item x, shape \(4, 3\)"
        ):
            layer.backward(cp.ones_like(y))
