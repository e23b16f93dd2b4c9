"""The CuPy stand-in's ``ndarray``: a NumPy array on a device, each operation counted (and recorded under capture).

Part of ``cupy_standin`` (the entry point); also ``matmul`` and ``dot``, which ``@`` and
``ndarray.dot`` call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cupy_standin_runtime import _RECORDING, COUNTER, Device, _current, _record, _refuse_under_capture, _root, _track


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


def _record_result(compute, result) -> None:
    """Under capture: each replay recomputes ``compute()`` into ``result``'s buffer."""
    target = result._a if isinstance(result, ndarray) else result
    if _RECORDING[0] is not None and isinstance(target, np.ndarray):
        _record(lambda: np.copyto(target, compute(), casting="unsafe"))


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
