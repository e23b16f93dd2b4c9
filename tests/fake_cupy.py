"""A small fake ``cupy`` module for tests that check how the library talks to CuPy, without a GPU.

Unlike ``cupy_standin`` (a NumPy-backed CuPy that runs whole GPU paths), this fake has only the
few attributes the backend and the kernel loader ask for, each recording what it was asked:

- ``ndarray``: wraps a NumPy array on a device; ``.get()`` copies it out, ``np.asarray`` refuses
  it (as CuPy does);
- ``cuda.Device(index)``: a device with ``.id``, usable as a context manager; ``.use()`` makes it
  current, and ``cuda.Device()`` is the current one;
- ``cuda.runtime.getDeviceCount``: the callable given (one device by default);
- ``random.default_rng``: records each seed in ``seeds`` (cuRAND generators asked for);
- ``RawModule``: records each module built in ``RawModule.created``; ``get_function`` returns
  ``("function", current device id, name)`` and fails as NVRTC does when the code holds ``oops``.

The ``fake_cupy`` fixture (a plugin loaded by conftest) installs one as ``sys.modules["cupy"]``
with the backend's CuPy cache emptied, as if the caller, not the backend, imported CuPy.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import numpy as np
import pytest

from gpulayers import backend


class FakeCompileError(Exception):
    """What ``RawModule.get_function`` raises for a source that does not compile."""

    def get_message(self) -> str:
        return 'kern.cu(3): error: identifier "oops" is undefined'


def make_fake_cupy(get_device_count: Callable[[], int] = lambda: 1) -> types.ModuleType:
    """A fresh fake ``cupy`` module (see the module docstring for what it holds)."""
    module = types.ModuleType("cupy")
    current = {"id": 0}

    class Device:
        def __init__(self, index: int | None = None):
            self.id = current["id"] if index is None else index

        def use(self) -> None:
            current["id"] = self.id

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class ndarray:  # noqa: N801 - CuPy's name
        def __init__(self, host: np.ndarray, device: int = 0):
            self._host, self.device = host, Device(device)
            self.dtype, self.shape = host.dtype, host.shape

        def get(self):
            return self._host.copy()

        def __array__(self, *args, **kwargs):  # as CuPy: no implicit conversion to NumPy
            raise TypeError("Implicit conversion to a NumPy array is not allowed")

    class RawModule:
        created: list = []

        def __init__(self, code, options, name_expressions):
            self.code, self.options, self.name_expressions = code, options, name_expressions
            RawModule.created.append(self)

        def get_function(self, name):
            if "oops" in self.code:
                raise FakeCompileError()
            assert name in self.name_expressions
            return ("function", current["id"], name)

    def default_rng(seed):
        module.seeds.append(seed)
        return ("generator", seed)

    ndarray.__module__ = "cupy"
    module.ndarray = ndarray
    module.RawModule = RawModule
    module.seeds = []
    module.random = types.SimpleNamespace(default_rng=default_rng)
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    module.cuda = types.SimpleNamespace(Device=Device, runtime=runtime)
    return module


@pytest.fixture
def fake_cupy(monkeypatch) -> types.ModuleType:
    """A fake CuPy imported by the caller, never by the backend (its cache still empty)."""
    fake = make_fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_import_error", None)
    monkeypatch.setattr(backend, "_gpu_rngs", {})
    return fake
