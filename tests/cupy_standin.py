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
"""

from __future__ import annotations

import contextlib
import sys
import types
import weakref
from collections import Counter as _Tally
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["COUNTER", "Event", "ndarray", "install", "module"]

LAUNCHES = ("launch", "kernel", "cublas", "copy", "graph")  # what costs a launch on the GPU's stream
TRANSFERS = ("h2d", "d2h", "sync")


@dataclass(frozen=True)
class Event:
    phase: str
    kind: str
    name: str


@dataclass
class _Counter:
    phase: str = "other"
    events: list[Event] = field(default_factory=list)

    def add(self, kind: str, name: str) -> None:
        self.events.append(Event(self.phase, kind, name))

    def reset(self) -> None:
        self.events.clear()
        self.phase = "other"

    @contextlib.contextmanager
    def in_phase(self, phase: str):
        old, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = old

    def count(self, kinds=LAUNCHES, phase: str | None = None) -> int:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        return sum(1 for e in self.events if e.kind in kinds and (phase is None or e.phase == phase))

    def launches(self, phase: str | None = None) -> int:
        return self.count(LAUNCHES, phase)

    def syncs(self, phase: str | None = None) -> int:
        return self.count(("sync",), phase)

    def names(self, kinds=LAUNCHES, phase: str | None = None) -> _Tally:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        return _Tally(e.name for e in self.events if e.kind in kinds and (phase is None or e.phase == phase))


COUNTER = _Counter()


# ----------------------------------------------------------------------------------------------
# Devices and streams
# ----------------------------------------------------------------------------------------------
_current = [0]


class Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = _current[0] if device is None else int(device)
        self._saved: list[int] = []

    def __enter__(self):
        self._saved.append(_current[0])
        _current[0] = self.id
        return self

    def __exit__(self, *exc):
        _current[0] = self._saved.pop()
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def synchronize(self) -> None:
        COUNTER.add("sync", "Device.synchronize")

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Stream:
    """A stream; ``begin_capture`` / ``end_capture`` emulate CUDA stream capture.

    While a stream captures, the counter's phase is ``"capture"`` and what CuPy refuses under
    capture raises as CuPy does: host synchronisations (a CUDA runtime error), cuBLAS
    (``NotImplementedError``) and cuRAND draws. As on a GPU, the capture leaves the arrays that
    existed before it as they were (their contents are put back at ``end_capture``), and the
    returned :class:`Graph` counts one ``graph`` launch per replay and recomputes the captured
    work in place, in order (kernels and array operations, into the same buffers).
    """

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        self._saved: list = []
        self._phase = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self) -> None:
        _refuse_under_capture("cudaStreamSynchronize")
        COUNTER.add("sync", "Stream.synchronize")

    def begin_capture(self, mode=None) -> None:
        if _CAPTURING[0]:
            raise RuntimeError("cudaErrorIllegalState: the stream is already capturing")
        _CAPTURING[0] = True
        _RECORDING[0] = []
        live = [ref() for ref in list(_LIVE.values())]
        roots = {id(r): r for r in (_root(a._a) for a in live if a is not None) if r.flags.writeable}
        self._snapshot = [(r, r.copy()) for r in roots.values()]
        self._phase = COUNTER.phase
        COUNTER.phase = "capture"

    def is_capturing(self) -> bool:
        return _CAPTURING[0]

    def end_capture(self) -> Graph:
        if not _CAPTURING[0]:
            raise RuntimeError("cudaErrorIllegalState: the stream is not capturing")
        _CAPTURING[0] = False
        work, _RECORDING[0] = _RECORDING[0], None
        for root, saved in self._snapshot:
            root[...] = saved  # nothing ran during the capture
        self._snapshot = []
        COUNTER.phase = self._phase
        return Graph(work)


class Graph:
    def __init__(self, work=()) -> None:
        self._work = list(work)

    def launch(self, stream=None) -> None:
        COUNTER.add("graph", "Graph.launch")
        for again in self._work:
            again()


_CAPTURING = [False]
_RECORDING: list = [None]  # under capture: how to redo each captured operation
_LIVE: dict[int, weakref.ref] = {}  # every device array, for the capture's snapshot


def _track(arr: ndarray) -> None:
    key = id(arr)
    _LIVE[key] = weakref.ref(arr, lambda _ref: _LIVE.pop(key, None))


def _record(again) -> None:
    """Under capture: remember ``again()``, which redoes an operation in place, for each replay."""
    if _RECORDING[0] is not None:
        _RECORDING[0].append(again)


def _record_result(compute, result) -> None:
    """Under capture: each replay recomputes ``compute()`` into ``result``'s buffer."""
    target = result._a if isinstance(result, ndarray) else result
    if _RECORDING[0] is not None and isinstance(target, np.ndarray):
        _record(lambda: np.copyto(target, compute(), casting="unsafe"))


def _refuse_under_capture(what: str, error=RuntimeError) -> None:
    if _CAPTURING[0]:
        if error is RuntimeError:
            raise RuntimeError(f"cudaErrorStreamCaptureUnsupported: {what} during stream capture")
        raise error(f"{what} is not supported during stream capture")


class MemoryPool:
    def __init__(self, allocator=None) -> None:
        self.allocated = 0

    def malloc(self, size: int):
        self.allocated += size
        return None

    def used_bytes(self) -> int:
        return self.allocated

    def free_all_blocks(self) -> None:
        pass


@contextlib.contextmanager
def using_allocator(allocator=None):
    yield


class _Runtime:
    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802 - CuPy's name
        return 2

    @staticmethod
    def runtimeGetVersion() -> int:  # noqa: N802
        return 13000

    @staticmethod
    def driverGetVersion() -> int:  # noqa: N802
        return 13000


# ----------------------------------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------------------------------
def _unwrap(value: Any) -> Any:
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _device_of(values) -> int:
    for v in values:
        if isinstance(v, ndarray):
            return v.device.id
        if isinstance(v, (list, tuple)):
            for w in v:
                if isinstance(w, ndarray):
                    return w.device.id
    return _current[0]


def _wrap(value: Any, device: int | None = None) -> Any:
    if isinstance(value, np.ndarray):
        return ndarray._of(value, device)
    if isinstance(value, np.generic):
        return ndarray._of(np.asarray(value), device)
    if isinstance(value, tuple):
        return tuple(_wrap(v, device) for v in value)
    if isinstance(value, list):
        return [_wrap(v, device) for v in value]
    return value


def _is_view(result: Any, args) -> bool:
    """True when ``result`` shares memory with an argument (a view: no launch in CuPy either)."""
    if not isinstance(result, np.ndarray) or result.base is None:
        return False
    root = _root(result)
    return any(isinstance(a, ndarray) and _root(a._a) is root for a in args)


def _root(arr: np.ndarray) -> np.ndarray:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def _sync(name: str) -> None:
    _refuse_under_capture(name)
    COUNTER.add("d2h", name)
    COUNTER.add("sync", name)


def _host_conversion(name: str, convert):
    """A conversion to a Python scalar (``float(a)``, ``bool(a)``...): a device-to-host copy and a sync."""

    def method(self):
        _sync(name)
        return convert(self._a)

    return method


def _binary(name: str, reflected: bool = False):
    op = getattr(np, name)

    def method(self, other):
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise TypeError(f"Unsupported type {type(other)} (a host array in a device operation)")
        COUNTER.add("launch", name)
        a, b = (_unwrap(other), self._a) if reflected else (self._a, _unwrap(other))
        result = ndarray._of(np.asarray(op(a, b)), self.device.id)
        _record_result(lambda: op(a, b), result)
        return result

    return method


def _inplace(name: str):
    op = getattr(np, name)

    def method(self, other):
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise TypeError(f"Unsupported type {type(other)} (a host array in a device operation)")
        COUNTER.add("launch", name)
        a, b = self._a, _unwrap(other)
        op(a, b, out=a)
        _record(lambda: op(a, b, out=a))
        return self

    return method


class _Data:
    def __init__(self, arr: np.ndarray) -> None:
        self.ptr = arr.ctypes.data


class ndarray:  # noqa: N801 - CuPy's name
    """A device array: a NumPy array plus the device it lives on."""

    __array_priority__ = 100
    __array_ufunc__ = None  # NumPy defers to our reflected operators

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C") -> None:
        self._a = np.empty(shape, dtype=dtype, order=order)
        self.device = Device(_current[0])
        _track(self)

    @classmethod
    def _of(cls, arr: np.ndarray, device: int | None = None) -> ndarray:
        obj = cls.__new__(cls)
        obj._a = arr
        obj.device = Device(_current[0] if device is None else device)
        _track(obj)
        return obj

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    data = property(lambda self: _Data(self._a))
    base = property(lambda self: None if self._a.base is None else ndarray._of(self._a.base, self.device.id))

    @property
    def T(self):  # noqa: N802
        return ndarray._of(self._a.T, self.device.id)

    def __len__(self) -> int:
        return len(self._a)

    # -- host conversions (each a transfer and a synchronisation)
    def get(self, stream=None, order="C", out=None):
        _sync("ndarray.get")
        return self._a.copy()

    def item(self):
        _sync("ndarray.item")
        return self._a.item()

    def tolist(self):
        _sync("ndarray.tolist")
        return self._a.tolist()

    __float__ = _host_conversion("float(ndarray)", float)
    __int__ = _host_conversion("int(ndarray)", int)
    __index__ = _host_conversion("index(ndarray)", int)
    __bool__ = _host_conversion("bool(ndarray)", bool)

    def __repr__(self):
        _sync("repr(ndarray)")
        return repr(self._a).replace("array", "cupy.array", 1)

    __str__ = __repr__

    def __format__(self, spec):
        _sync("format(ndarray)")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()`.")

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    # -- indexing
    def __getitem__(self, key):
        key = _unwrap(key)
        result = self._a[key]
        if isinstance(key, np.ndarray) and key.dtype == bool:
            _sync("boolean mask indexing")
        if not _is_view(result, (self,)):
            COUNTER.add("launch", "getitem (gather)")
        return ndarray._of(np.asarray(result) if np.ndim(result) == 0 else result, self.device.id)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            COUNTER.add("h2d", "setitem from host")
        COUNTER.add("launch", "setitem")
        a, k, v = self._a, _unwrap(key), _unwrap(value)
        a[k] = v

        def again():
            a[k] = v

        _record(again)

    # -- shape and copies
    def reshape(self, *shape, order="C"):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        out = self._a.reshape(shape, order=order)
        if _root(out) is not _root(self._a) and self._a.size:
            COUNTER.add("copy", "reshape (copy)")
        return ndarray._of(out, self.device.id)

    def view(self, dtype=None):
        return ndarray._of(self._a.view(dtype) if dtype is not None else self._a.view(), self.device.id)

    def transpose(self, *axes):
        return ndarray._of(self._a.transpose(*axes), self.device.id)

    def swapaxes(self, a, b):
        return ndarray._of(self._a.swapaxes(a, b), self.device.id)

    def squeeze(self, axis=None):
        return ndarray._of(self._a.squeeze(axis), self.device.id)

    def ravel(self, order="C"):
        return self.reshape(-1, order=order)

    def flatten(self):
        COUNTER.add("copy", "flatten")
        return ndarray._of(self._a.flatten(), self.device.id)

    def copy(self, order="C"):
        if self._a.size:
            COUNTER.add("copy", "ndarray.copy")
        a = self._a
        result = ndarray._of(a.copy(order=order), self.device.id)
        _record_result(lambda: a, result)
        return result

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self._a.dtype:
            return self
        if self._a.size:
            COUNTER.add("copy", "astype")
        a = self._a
        result = ndarray._of(a.astype(dtype, order=order), self.device.id)
        _record_result(lambda: a, result)
        return result

    def fill(self, value):
        COUNTER.add("launch", "fill")
        a, v = self._a, _unwrap(value)
        a.fill(v)
        _record(lambda: a.fill(v))

    def set(self, arr, stream=None):
        COUNTER.add("h2d", "ndarray.set")
        self._a[...] = arr

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def dot(self, other):
        return dot(self, other)


def _method(name: str, kind: str = "launch"):
    def method(self, *args, **kwargs):
        COUNTER.add(kind, f"ndarray.{name}")
        out = kwargs.get("out")
        a, args, kwargs = self._a, _unwrap(args), _unwrap(kwargs)
        result = getattr(a, name)(*args, **kwargs)
        wrapped = out if isinstance(out, ndarray) else _wrap(result, self.device.id)
        _record_result(lambda: getattr(a, name)(*args, **kwargs), wrapped)
        return wrapped

    method.__name__ = name
    return method


for _name in ("sum", "mean", "max", "min", "prod", "any", "all", "argmax", "argmin", "var", "std", "cumsum", "clip"):
    setattr(ndarray, _name, _method(_name))
_OPERATORS = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "truediv": "true_divide",
    "floordiv": "floor_divide",
    "pow": "power",
    "mod": "remainder",
    "and": "bitwise_and",
    "or": "bitwise_or",
    "xor": "bitwise_xor",
}
for _dunder, _ufunc in _OPERATORS.items():
    setattr(ndarray, f"__{_dunder}__", _binary(_ufunc))
    setattr(ndarray, f"__r{_dunder}__", _binary(_ufunc, reflected=True))
    setattr(ndarray, f"__i{_dunder}__", _inplace(_ufunc))
for _dunder, _ufunc in {"lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal"}.items():
    setattr(ndarray, f"__{_dunder}__", _binary(_ufunc))
ndarray.__eq__ = _binary("equal")
ndarray.__ne__ = _binary("not_equal")
ndarray.__hash__ = None


def _unary(name: str):
    op = getattr(np, name)

    def method(self):
        COUNTER.add("launch", name)
        a = self._a
        result = ndarray._of(np.asarray(op(a)), self.device.id)
        _record_result(lambda: op(a), result)
        return result

    return method


for _dunder, _ufunc in {"neg": "negative", "abs": "absolute", "invert": "invert", "pos": "positive"}.items():
    setattr(ndarray, f"__{_dunder}__", _unary(_ufunc))


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


def matmul(a, b, out=None, **kwargs):
    a_arr, b_arr = _unwrap(a), _unwrap(b)
    for name, arr in (("a", a_arr), ("b", b_arr)):
        if isinstance(arr, np.ndarray) and arr.ndim >= 3 and not arr.flags.c_contiguous:
            COUNTER.add("copy", f"matmul makes {name} contiguous")
    _refuse_under_capture("cuBLAS", NotImplementedError)
    COUNTER.add("cublas", "matmul")
    result = np.matmul(a_arr, b_arr)
    if out is not None:
        out._a[...] = result
        return out
    return ndarray._of(np.asarray(result), _device_of((a, b)))


def dot(a, b, out=None):
    _refuse_under_capture("cuBLAS", NotImplementedError)
    COUNTER.add("cublas", "dot")
    result = np.dot(_unwrap(a), _unwrap(b))
    if out is not None:
        out._a[...] = result
        return out
    return ndarray._of(np.asarray(result), _device_of((a, b)))


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
