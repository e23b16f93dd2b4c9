"""A CuPy stand-in built on NumPy: runs the library's GPU code path on the CPU and counts its cost.

``cupy_standin.install()`` puts a module named ``cupy`` in ``sys.modules`` (and makes the
backend believe a GPU is present). Its arrays wrap NumPy arrays; every operation computes with
NumPy and records one :class:`Event` in :data:`COUNTER`:

* ``launch``  a CuPy kernel (element-wise, reduction, fill, gather) or a memset;
* ``kernel``  a custom kernel through :func:`gpulayers.kernels.get_function` (run on the g++
  host harness of ``tests/kernel_harness`` when one is given, so its results are real);
* ``cublas``  a cuBLAS call (``matmul``, ``dot``, ``@``, ``cupy.cublas.gemm``);
* ``copy``    a device-to-device copy (``copy``, ``astype``, making an array contiguous);
* ``h2d`` / ``d2h``  host-to-device / device-to-host transfers;
* ``sync``    a host synchronisation (``.get()``, ``.item()``, ``float()``, ``int()``, ``bool()``,
  ``asnumpy``, printing, boolean-mask indexing, ``Stream.synchronize``).

The module is generic: ``cupy.<name>`` for any NumPy function or ufunc is NumPy's, wrapped to
count one launch (views such as ``reshape`` or ``expand_dims`` count none), so new library code
is counted without editing this file. Counting follows CuPy 14's behaviour where it matters for
the budget (``matmul`` on 3-D operands copies non-contiguous ones; a reduction is one kernel);
a composite CuPy function counts as one launch, so totals are lower bounds for those.

This file is the entry point (array functions, generators, the module, :func:`install`); the
device array is in ``cupy_standin_arrays``, the counter and the runtime (devices, streams, stream
capture, graphs, memory pool) in ``cupy_standin_runtime``.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any

import numpy as np
from cupy_standin_arrays import _device_of, _is_view, _record_result, _sync, _unwrap, _wrap, dot, matmul, ndarray
from cupy_standin_runtime import (
    _CAPTURING,
    _RECORDING,
    COUNTER,
    LAUNCHES,
    TRANSFERS,
    Device,
    Event,
    Graph,
    MemoryPool,
    Stream,
    _current,
    _record,
    _refuse_under_capture,
    _Runtime,
    using_allocator,
)

__all__ = ["COUNTER", "LAUNCHES", "TRANSFERS", "Device", "Event", "ndarray", "install", "module"]

# ----------------------------------------------------------------------------------------------
# Functions
# ----------------------------------------------------------------------------------------------
# Functions that only make a view (no launch), allocate (no launch), or cost more than one launch.
_VIEWS = {
    "reshape", "expand_dims", "squeeze", "transpose", "moveaxis", "swapaxes", "broadcast_to", "atleast_1d",
    "atleast_2d", "ravel", "shape", "ndim", "size", "result_type", "can_cast", "promote_types", "isscalar",
    "broadcast_shapes", "iscomplexobj", "isrealobj", "dtype", "finfo", "iinfo", "split", "array_split",
}  # fmt: skip
_ALLOC = {"empty", "empty_like"}
_MEMSET = {"zeros", "zeros_like"}


def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return a.astype(dtype)
    if isinstance(a, (np.ndarray, list, tuple)) or np.ndim(a) > 0:
        COUNTER.add("h2d", "asarray from host")
    else:
        COUNTER.add("h2d", "asarray of a scalar")
    return ndarray._of(np.array(_unwrap(a), dtype=dtype, order=order or "K"))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        COUNTER.add("copy", "array (copy)")
        return ndarray._of(np.array(a._a, dtype=dtype, order=order, ndmin=ndmin), a.device.id)
    COUNTER.add("h2d", "array from host")
    return ndarray._of(np.array(a, dtype=dtype, order=order, ndmin=ndmin))


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        return asarray(np.ascontiguousarray(a, dtype=dtype))
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    if a.device.id != _current[0]:
        COUNTER.add("launch", "ascontiguousarray on another device")  # lands on the current device
    COUNTER.add("copy", "ascontiguousarray")
    return ndarray._of(np.ascontiguousarray(a._a, dtype=dtype), _current[0])


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        _sync("asnumpy")
        return a._a.copy()
    return np.asarray(a)


def get_array_module(*args):
    return module if any(isinstance(a, ndarray) for a in args) else np


def _gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    """``cupy.cublas.gemm``: ``out = alpha * op(a) @ op(b) + beta * out`` on 2-D arrays."""
    for arr in (a, b):
        if arr.ndim != 2:
            raise ValueError("cupy.cublas.gemm takes 2-D arrays")
    op_a = a._a.T if transa in ("T", "t", 1) else a._a
    op_b = b._a.T if transb in ("T", "t", 1) else b._a
    _refuse_under_capture("cuBLAS", NotImplementedError)
    COUNTER.add("cublas", "cublas.gemm")
    result = alpha * (op_a @ op_b)
    if out is None:
        return ndarray._of(np.ascontiguousarray(result.astype(a.dtype, copy=False)), a.device.id)
    if beta:
        result = result + beta * out._a
    out._a[...] = result
    return out


def _function(name: str, fn):
    def wrapper(*args, **kwargs):
        dev = _device_of(args)
        out = kwargs.get("out")
        raw_args, raw_kwargs = _unwrap(args), _unwrap(kwargs)
        result = fn(*raw_args, **raw_kwargs)
        if name in _MEMSET:
            COUNTER.add("launch", f"{name} (memset)")
        elif name not in _VIEWS and name not in _ALLOC and not _is_view(result, args):
            if isinstance(result, (np.ndarray, np.generic, tuple, list)):
                COUNTER.add("launch", name)
        wrapped = out if isinstance(out, ndarray) else _wrap(result, dev)
        if name not in _VIEWS and name not in _ALLOC and not _is_view(result, args):
            _record_result(lambda: fn(*raw_args, **raw_kwargs), wrapped)
        return wrapped

    wrapper.__name__ = name
    return wrapper


# -- random ------------------------------------------------------------------------------------
class Generator:
    def __init__(self, seed) -> None:
        COUNTER.add("launch", "random.default_rng (generator setup)")
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def random(self, size=None, dtype=np.float64, out=None):
        _refuse_under_capture("cuRAND", NotImplementedError)
        COUNTER.add("launch", "Generator.random")
        return ndarray._of(self._rng.random(size, dtype=dtype))

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        _refuse_under_capture("cuRAND", NotImplementedError)
        COUNTER.add("launch", "Generator.integers")
        return ndarray._of(np.asarray(self._rng.integers(low, high, size=size, dtype=dtype, endpoint=endpoint)))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        _refuse_under_capture("cuRAND", NotImplementedError)
        COUNTER.add("launch", "Generator.standard_normal")
        return ndarray._of(self._rng.standard_normal(size, dtype=dtype))


# -- the module --------------------------------------------------------------------------------
def _build_module() -> types.ModuleType:
    mod = types.ModuleType("cupy")
    mod.__file__ = __file__
    mod.__version__ = "14.2.0-standin"
    mod.ndarray = ndarray
    mod.asarray = asarray
    mod.array = array
    mod.ascontiguousarray = ascontiguousarray
    mod.asnumpy = asnumpy
    mod.get_array_module = get_array_module
    mod.matmul = matmul
    mod.dot = dot
    mod.cublas = types.SimpleNamespace(gemm=_gemm)
    mod.random = types.SimpleNamespace(default_rng=Generator, Generator=Generator)
    mod.cuda = types.SimpleNamespace(
        Device=Device,
        Stream=Stream,
        Graph=Graph,
        MemoryPool=MemoryPool,
        using_allocator=using_allocator,
        get_current_stream=lambda: Stream(),
        runtime=_Runtime(),
        is_available=lambda: True,
    )
    cache: dict[str, Any] = {}

    def __getattr__(name: str):  # noqa: N807 - module-level getattr
        if name in cache:
            return cache[name]
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):
            value = _function(name, value)
        cache[name] = value
        return value

    mod.__getattr__ = __getattr__
    return mod


module = _build_module()


class _CountingKernel:
    """A kernel from ``kernels.get_function``: counts each launch and runs it (harness) or skips it."""

    def __init__(self, name: str, run) -> None:
        self.name, self.run = name, run

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None):
        COUNTER.add("kernel", self.name)
        if self.run is not None:
            raw = tuple(_unwrap(a) for a in args)
            self.run(grid, block, raw)
            _record(lambda: self.run(grid, block, raw))


@contextlib.contextmanager
def install(harness=None, monkeypatch=None):
    """Make ``cupy`` this stand-in and the backend see a GPU; custom kernels run on ``harness``.

    Args:
        harness: a ``tests.kernel_harness.HarnessLibrary`` (or anything with its
            ``get_function``); None counts custom kernels without running them.
        monkeypatch: pytest's fixture (undone by pytest), or None to undo on exit.
    """
    import gpulayers.backend as backend  # noqa: PLC0415
    import gpulayers.kernels as kernels  # noqa: PLC0415

    def get_function(filename, kernel, dtype):
        run = None if harness is None else harness.get_function(filename, kernel, dtype)
        return _CountingKernel(kernels.name_expression(kernel, dtype), run)

    patches = [
        (sys.modules, "cupy", module),
        (backend, "_cupy", module),
        (backend, "_cupy_import_error", None),
        (backend, "_cuda_checked", True),
        (backend, "_cuda_ok", True),
        (backend, "_cuda_reason", "CuPy stand-in (NumPy on the CPU)"),
        (backend, "_gpu_rngs", {}),
        (backend, "_philox_states", {}),
        (kernels, "get_function", get_function),
    ]
    saved = []
    for target, key, value in patches:
        if monkeypatch is not None:
            if isinstance(target, dict):
                monkeypatch.setitem(target, key, value)
            else:
                monkeypatch.setattr(target, key, value)
            continue
        if isinstance(target, dict):
            saved.append((target, key, target.get(key, _MISSING)))
            target[key] = value
        else:
            saved.append((target, key, getattr(target, key)))
            setattr(target, key, value)
    COUNTER.reset()
    _CAPTURING[0] = False
    _RECORDING[0] = None
    try:
        yield module
    finally:
        for target, key, old in reversed(saved):
            if isinstance(target, dict):
                if old is _MISSING:
                    target.pop(key, None)
                else:
                    target[key] = old
            else:
                setattr(target, key, old)


_MISSING = object()
