"""The backend shim: device discovery never raises, CuPy absent or without a GPU falls back to NumPy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fake_cupy import make_fake_cupy

import gpulayers as gl
from gpulayers import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code: str, env_extra: dict[str, str] | None = None, block_cupy: bool = False) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, which is returned."""
    prelude = ""
    if block_cupy:
        # A None entry in sys.modules makes `import cupy` raise ImportError, as if it were not installed.
        prelude = "import sys\nsys.modules['cupy'] = None\n"
    env = dict(os.environ)
    env.pop("GPULAYERS_DEVICE", None)
    env.update(env_extra or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def fresh_probe(monkeypatch):
    """Forget the cached CUDA probe so a test can fake what CuPy does."""
    for name, value in [("_cuda_checked", False), ("_cuda_ok", False), ("_cuda_reason", "")]:
        monkeypatch.setattr(backend, name, value)
    return monkeypatch


CHECK_FALLBACK = """
import json, numpy as np
import gpulayers as gl
from gpulayers import nn
out = {"available": gl.cuda_is_available(), "default": gl.default_device()}
try:
    gl.to_device(np.zeros(2), "cuda")
    out["to_cuda_error"] = None
except RuntimeError as exc:
    out["to_cuda_error"] = str(exc)
gl.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
y = model(x)
dx = model.backward(np.ones_like(y))
out["xp"] = gl.get_array_module(y).__name__
out["dx_shape"] = list(dx.shape)
print(json.dumps(out))
"""


def test_backend_without_cupy_falls_back_to_numpy():
    out = _run_python(CHECK_FALLBACK, block_cupy=True)
    assert out["available"] is False
    assert out["default"] == "cpu"
    assert out["xp"] == "numpy"
    assert out["dx_shape"] == [2, 1, 4, 4]
    assert "CuPy is not installed" in out["to_cuda_error"]


def test_backend_forcing_cuda_without_cupy_raises_clear_error():
    code = """
    import json, gpulayers as gl
    try:
        gl.default_device()
        print(json.dumps({"error": None}))
    except RuntimeError as exc:
        print(json.dumps({"error": str(exc)}))
    """
    out = _run_python(code, env_extra={"GPULAYERS_DEVICE": "cuda"}, block_cupy=True)
    assert out["error"] is not None
    assert "cuda" in out["error"] and "CuPy" in out["error"]


def test_backend_env_override_cpu():
    out = _run_python(
        "import json, gpulayers as gl\nprint(json.dumps({'d': gl.default_device()}))",
        env_extra={"GPULAYERS_DEVICE": "cpu"},
    )
    assert out["d"] == "cpu"


def test_backend_env_override_rejects_nonsense():
    code = """
    import json, gpulayers as gl
    try:
        gl.default_device(); print(json.dumps({"error": None}))
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
    """
    out = _run_python(code, env_extra={"GPULAYERS_DEVICE": "tpu"})
    assert out["error"] and "tpu" in out["error"]


def test_backend_with_cupy_installed_but_no_gpu():
    pytest.importorskip("cupy")
    if gl.cuda_is_available():
        pytest.skip("a GPU is usable here; this test covers the machine without one")
    out = _run_python(CHECK_FALLBACK)
    assert out["available"] is False
    assert out["default"] == "cpu"
    assert out["xp"] == "numpy"
    assert "not usable" in out["to_cuda_error"] or "no usable" in out["to_cuda_error"]


class _FakeRuntimeError(RuntimeError):
    pass


@pytest.mark.parametrize(
    "behaviour, reason_part",
    [
        ("insufficient_driver", "cudaErrorInsufficientDriver"),
        ("no_device", "cudaErrorNoDevice"),
        ("zero", "device count is 0"),
        ("weird", "ZeroDivisionError"),
    ],
)
def test_backend_cuda_probe_never_raises(fresh_probe, behaviour, reason_part):
    def get_count():
        if behaviour == "insufficient_driver":
            raise _FakeRuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
        if behaviour == "no_device":
            raise _FakeRuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        if behaviour == "weird":
            return 1 // 0
        return 0

    fresh_probe.setattr(backend, "_cupy", make_fake_cupy(get_count))
    assert gl.cuda_is_available() is False
    assert reason_part in backend.cuda_unavailable_reason()


def test_backend_get_array_module_and_to_numpy():
    x = np.arange(6.0).reshape(2, 3)
    assert gl.get_array_module(x) is np
    assert gl.to_numpy(x) is x
    assert gl.to_device(x, "cpu") is x  # no copy when already there
    assert isinstance(gl.to_numpy([1, 2]), np.ndarray)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "", "cuda:-1"])
def test_backend_parse_device_rejects(bad):
    with pytest.raises(ValueError, match="device"):
        backend.parse_device(bad)


def test_backend_parse_device_type():
    with pytest.raises(TypeError, match="device"):
        backend.parse_device(3)


def test_backend_manual_seed_reproduces_cpu_draws():
    gl.manual_seed(123)
    a = backend.cpu_rng().random(5)
    gl.manual_seed(123)
    b = backend.cpu_rng().random(5)
    gl.manual_seed(124)
    c = backend.cpu_rng().random(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_backend_manual_seed_reproduces_init_and_dropout():
    from gpulayers import nn

    def run():
        gl.manual_seed(7)
        model = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5))
        y = model(np.ones((4, 6), np.float32))
        return model.state_dict()["0.weight"], y

    (w1, y1), (w2, y2) = run(), run()
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(y1, y2)


def test_backend_rng_state_roundtrip_is_json():
    gl.manual_seed(5)
    backend.cpu_rng().random(3)
    state = backend.get_rng_state()
    text = json.dumps(state)
    expected = backend.cpu_rng().random(4)
    backend.set_rng_state(json.loads(text))
    np.testing.assert_array_equal(backend.cpu_rng().random(4), expected)


def test_backend_manual_seed_rejects_negative():
    with pytest.raises(ValueError, match="manual_seed"):
        gl.manual_seed(-1)
