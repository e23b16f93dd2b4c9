"""CPU-side checks that the xp-generic code only asks CuPy for what CuPy has.

No GPU is needed: the CuPy namespace is inspected (``import cupy`` works without a device), and
the backend's CuPy detection runs against a small stand-in module. Together they catch a
NumPy-only function or keyword creeping into a path that runs on CuPy arrays, and CuPy arrays
that the backend would mistake for host arrays.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import backend

PACKAGE = Path(gl.__file__).resolve().parent

# Modules whose ``xp.<name>(...)`` calls run with ``xp = cupy`` on the GPU.
XP_MODULES = [
    "ops/activation.py",
    "ops/conv2d.py",
    "ops/conv2d_cuda.py",
    "ops/dropout.py",
    "ops/linear.py",
    "ops/loss.py",
    "ops/normalization.py",
    "ops/max_pool2d.py",
    "ops/avg_pool2d.py",
    "ops/max_pool2d_cuda.py",
    "_checks.py",
    "ops/special.py",
    "ops/layer_norm.py",
    "ops/group_norm.py",
    "ops/nll_loss.py",
    "ops/bce_loss.py",
    "ops/conv_transpose2d.py",
    "nn/module.py",
    "nn/summary.py",
    "optim/adam.py",
    "optim/sgd.py",
    "optim/rmsprop.py",
    "nn/utils.py",
    "optim/optimizer.py",
    "data.py",
    "gradcheck.py",
]

# Keywords CuPy's ufuncs (cupy.add, cupy.maximum, ...) take besides the operands.
UFUNC_KEYWORDS = {"out", "dtype", "casting"}


def _xp_calls(path: Path) -> list[tuple[str, list[str], int]]:
    """``(name, keywords, line)`` of every ``xp.name(...)`` call (``xp.cuda.*`` excluded)."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if isinstance(owner, ast.Name) and owner.id == "xp":
            calls.append((node.func.attr, [k.arg for k in node.keywords if k.arg], node.lineno))
    return calls


def _accepted_keywords(func) -> set[str] | None:
    """The keywords ``func`` takes, or None when it takes any (or cannot be inspected)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@pytest.mark.parametrize("module", XP_MODULES)
def test_xp_calls_exist_in_cupy_with_their_keywords(module):
    cupy = pytest.importorskip("cupy")
    ufunc_type = type(cupy.add)
    calls = _xp_calls(PACKAGE / module)
    problems = []
    for name, keywords, line in calls:
        func = getattr(cupy, name, None)
        if func is None:
            problems.append(f"{module}:{line}: cupy has no {name}")
            continue
        accepted = UFUNC_KEYWORDS if isinstance(func, ufunc_type) else _accepted_keywords(func)
        if accepted is not None:
            problems += [f"{module}:{line}: cupy.{name} takes no {k}=" for k in keywords if k not in accepted]
    assert not problems, "\n".join(problems)


def test_the_scan_sees_the_gpu_paths():
    """The scan above is only worth something if it finds the calls (guards against a refactor)."""
    names = {name for module in XP_MODULES for name, _, _ in _xp_calls(PACKAGE / module)}
    assert {"matmul", "take_along_axis", "pad", "where", "ascontiguousarray"} <= names


# -- the backend recognises CuPy arrays that the caller made --------------------------------------


def test_cupy_arrays_are_recognised_before_the_backend_imports_cupy(fake_cupy):
    x = fake_cupy.ndarray(np.arange(3.0), device=1)
    assert backend.is_cuda_array(x)
    assert backend.device_of(x) == "cuda:1"
    assert gl.get_array_module(x) is fake_cupy
    np.testing.assert_array_equal(gl.to_numpy(x), np.arange(3.0))  # .get(), not np.asarray
    assert not backend.is_cuda_array(np.arange(3.0))


def test_gpu_generator_replays_after_set_rng_state_without_manual_seed(fake_cupy, monkeypatch):
    """gradcheck replays random draws with set_rng_state: the GPU seed must not be redrawn."""
    monkeypatch.setattr(backend, "_seed", None)
    monkeypatch.setattr(backend, "_unseeded_gpu_seed", None)
    state = backend.get_rng_state()
    first = backend.rng_for(fake_cupy, 0)
    assert backend.rng_for(fake_cupy, 0) is first  # cached per device
    draws = first.random(4)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.rng_for(fake_cupy, 0).random(4), draws)  # the same seed again


def test_gpu_generators_need_no_curand_and_differ_per_device(fake_cupy, monkeypatch):
    """A seeding builds nothing on the GPU; a device's generator is a NumPy one of its own stream."""
    state = backend.get_rng_state()
    try:
        gl.manual_seed(5)
        gens = [backend.rng_for(fake_cupy, d) for d in (0, 1)]
        assert fake_cupy.seeds == []  # cupy.random (cuRAND states) never asked for
        assert all(isinstance(g, np.random.Generator) for g in gens)
        cpu = np.random.Generator(np.random.PCG64(5)).random(8)
        draws = [g.random(8) for g in gens]
        assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], cpu)
        gl.manual_seed(5)
        np.testing.assert_array_equal(backend.rng_for(fake_cupy, 1).random(8), draws[1])
    finally:
        backend.set_rng_state(state)


def test_gpu_generator_state_is_in_the_rng_state(fake_cupy):
    """Checkpoints store each device's generator: a resumed run draws what the first run drew next."""
    state = backend.get_rng_state()
    try:
        gl.manual_seed(9)
        backend.rng_for(fake_cupy, 1).random(3)
        saved = json.loads(json.dumps(backend.get_rng_state()))
        assert set(saved["gpu"]) == {"1"}
        want = backend.rng_for(fake_cupy, 1).integers(0, 100, 6)
        gl.manual_seed(0)
        backend.set_rng_state(saved)
        np.testing.assert_array_equal(backend.rng_for(fake_cupy, 1).integers(0, 100, 6), want)
        with pytest.raises(ValueError, match="set_rng_state: 'gpu' of device 1"):
            backend.set_rng_state({**saved, "gpu": {"1": {"bit_generator": "MT19937"}}})
    finally:
        backend.set_rng_state(state)


def test_data_loader_normalize_takes_device_arrays(fake_cupy):
    """mean/std given as CuPy arrays are read with to_numpy (np.asarray would refuse them)."""
    x = np.zeros((4, 3, 2, 2), np.uint8)
    y = np.zeros(4, np.int64)
    mean = fake_cupy.ndarray(np.array([0.1, 0.2, 0.3]))
    std = fake_cupy.ndarray(np.array([1.0, 2.0, 4.0]))
    loader = gl.data.DataLoader((x, y), batch_size=2, normalize=(mean, std))
    assert loader.normalize == ((0.1, 0.2, 0.3), (1.0, 2.0, 4.0))


def test_array_dataset_takes_device_arrays(fake_cupy):
    x = fake_cupy.ndarray(np.ones((2, 1, 2, 2), np.float32))
    y = fake_cupy.ndarray(np.array([0, 1], np.int32))
    ds = gl.data.ArrayDataset(x, y)
    assert isinstance(ds.x, np.ndarray) and ds.y.dtype == np.int64


def test_optimizer_load_state_dict_takes_device_scalars(fake_cupy):
    p = gl.nn.Parameter(np.zeros(2, np.float32))
    opt = gl.optim.Adam([p], lr=0.1)
    p.grad = np.ones(2, np.float32)
    opt.step()
    sd = opt.state_dict()
    sd["state.0.step"] = fake_cupy.ndarray(np.array(sd["state.0.step"]))
    sd["state.0.exp_avg"] = fake_cupy.ndarray(sd["state.0.exp_avg"])
    sd["param_groups.0.lr"] = fake_cupy.ndarray(np.array(0.25))
    opt.load_state_dict(sd)
    assert opt.state[p]["step"] == 1 and opt.lr == 0.25
    np.testing.assert_array_equal(opt.state[p]["exp_avg"], sd["state.0.exp_avg"].get())
