"""Module, Parameter and Sequential: the explicit forward/backward module system.

There is no autograd tape. ``forward`` keeps what ``backward`` needs; ``backward`` takes the
gradient of the loss w.r.t. the output, returns the gradient w.r.t. the input, and *adds*
parameter gradients into ``param.grad`` (PyTorch's accumulation semantics).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import backend, debug
from .._checks import check_bool, check_grad, no_forward

__all__ = ["Parameter", "Module", "Sequential"]


class Parameter:
    """A trainable array with its gradient.

    Attributes:
        data: the array (NumPy or CuPy).
        grad: an array of the same shape, or None before the first backward.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: Any):
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            raise TypeError(f"Parameter: expected a NumPy or CuPy array, got {type(data).__name__}")
        if np.dtype(data.dtype).kind != "f":  # as PyTorch: only floating arrays take gradients
            raise TypeError(f"Parameter: expected a floating-point array, got dtype {data.dtype}")
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def size(self) -> int:
        return int(self.data.size)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` returns (PyTorch's ``missing_keys, unexpected_keys``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _kept(cache: Any) -> Any:
    """What a forward's ``_cache`` keeps for backward: ``(saved, output)`` pairs keep ``saved``."""
    if isinstance(cache, tuple) and len(cache) == 2 and hasattr(cache[1], "shape"):
        return cache[0]
    return cache


def _is_float(arr: Any) -> bool:
    return np.dtype(arr.dtype).kind == "f"


class Module:
    """Base class of every layer. Subclasses implement ``forward`` and ``backward``."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration -------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if isinstance(value, (Parameter, Module)):
            for store in (self._parameters, self._buffers, self._modules):
                store.pop(name, None)
            self.__dict__.pop(name, None)
            (self._parameters if isinstance(value, Parameter) else self._modules)[name] = value
        elif name in self._parameters or name in self._modules:
            if value is not None:
                raise TypeError(
                    f"{type(self).__name__}: cannot assign {type(value).__name__} to {name!r} "
                    "(expected a Parameter, a Module or None)"
                )
            (self._parameters if name in self._parameters else self._modules)[name] = None
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)
            if name == "_cache":  # what forward keeps for backward: fingerprinted in debug mode
                object.__setattr__(self, "_debug_prints", debug.snapshot(_kept(value)))

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: look in the registries.
        for store_name in ("_parameters", "_buffers", "_modules"):
            store = self.__dict__.get(store_name)
            if store is not None and name in store:
                return store[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def register_buffer(self, name: str, value: Any) -> None:
        """A state array that is saved in ``state_dict`` but not trained (e.g. running_mean)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = value

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def add_module(self, name: str, module: Module | None) -> None:
        self._modules[name] = module

    # -- the computation ----------------------------------------------------------------------
    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_output):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal ----------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, mod in self._modules.items():
            if mod is not None:
                yield name, mod

    def children(self) -> Iterator[Module]:
        for _, mod in self.named_children():
            yield mod

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, mod in self.named_children():
            yield from mod.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, mod in self.named_modules():
            yield mod

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                if b is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), b

    # -- gradients and modes ------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: to None (the default, as in PyTorch) or to zeros."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0
            else:
                xp = backend.get_array_module(p.data)
                p.grad = xp.zeros_like(p.data)

    def train(self, mode: bool = True) -> Module:
        mode = check_bool(f"{type(self).__name__}.train", "mode", mode)
        for mod in self.modules():
            object.__setattr__(mod, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    # -- device and dtype ---------------------------------------------------------------------
    def to(self, device: str | None = None, dtype: Any = None) -> Module:
        """Move and/or cast parameters and floating buffers in place; returns self.

        ``to("cuda")``, ``to(dtype=numpy.float64)`` and ``to("cpu", numpy.float32)`` all work;
        a dtype may also be given as the only positional argument.
        """
        if device is not None and not isinstance(device, str):
            device, dtype = None, device
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
                raise TypeError(
                    f"{type(self).__name__}.to: expected a floating dtype (float32 or float64), got {dtype}"
                )

        def convert(arr, floating_only_cast: bool):
            if arr is None:
                return None
            if device is not None:
                arr = backend.to_device(arr, device)
            if dtype is not None and (_is_float(arr) or not floating_only_cast) and arr.dtype != dtype:
                arr = arr.astype(dtype)
            return arr

        for mod in self.modules():
            for p in mod._parameters.values():
                if p is None:
                    continue
                p.data = convert(p.data, True)
                if p.grad is not None:
                    p.grad = convert(p.grad, True)
            for name, b in list(mod._buffers.items()):
                mod._buffers[name] = convert(b, True)
            mod._on_to()
        return self

    def _on_to(self) -> None:
        """Hook for modules that hold derived state (drops forward caches)."""
        if "_cache" in self.__dict__:
            self.__dict__["_cache"] = None

    def float(self) -> Module:
        return self.to(dtype=np.float32)

    def double(self) -> Module:
        return self.to(dtype=np.float64)

    def cuda(self) -> Module:
        return self.to("cuda")

    def cpu(self) -> Module:
        return self.to("cpu")

    # -- state --------------------------------------------------------------------------------
    def _state_items(self) -> Iterator[tuple[str, Any, bool]]:
        """(key, array, is_parameter) for every entry of the state dict, PyTorch's order."""
        for mod_name, mod in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    yield pre + name, p, True
            for name, b in mod._buffers.items():
                if b is not None:
                    yield pre + name, (mod, name), False

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer as a NumPy copy, under PyTorch's key names."""
        out: dict[str, np.ndarray] = OrderedDict()
        for key, item, is_param in self._state_items():
            arr = item.data if is_param else item[0]._buffers[item[1]]
            out[key] = np.array(backend.to_numpy(arr), copy=True)
        return out

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values into the existing parameters and buffers (keeping dtype and device).

        Returns ``(missing_keys, unexpected_keys)`` as PyTorch does (both empty when ``strict``).
        """
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name}: expected a dict of arrays (from state_dict()), got {type(state_dict).__name__}")
        strict = check_bool(name, "strict", strict)
        own = {key: (item, is_param) for key, item, is_param in self._state_items()}
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise RuntimeError(f"{type(self).__name__}.load_state_dict: " + "; ".join(parts))
        for key, (item, is_param) in own.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
                value = value.detach().cpu().numpy()
            value = backend.to_numpy(value)
            current = item.data if is_param else item[0]._buffers[item[1]]
            if tuple(value.shape) != tuple(current.shape):
                raise RuntimeError(
                    f"{type(self).__name__}.load_state_dict: shape mismatch for key {key!r}: "
                    f"expected {tuple(current.shape)}, got {tuple(value.shape)}"
                )
            new = backend.to_device(np.array(value, dtype=current.dtype, copy=True), backend.device_of(current))
            if is_param:
                item.data = new
            else:
                item[0]._buffers[item[1]] = new
        return IncompatibleKeys(missing, unexpected)

    # -- printing -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, mod in self._modules.items():
            child = repr(mod).replace("\n", "\n  ")
            lines.append(f"({name}): {child}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

    # -- helpers for subclasses ---------------------------------------------------------------
    @staticmethod
    def _accumulate(param: Parameter | None, grad: Any) -> None:
        """``param.grad += grad``; on first use ``grad`` itself becomes ``param.grad`` (no copy).

        The caller hands over ``grad``: a freshly computed array that it does not keep or reuse.
        """
        if param is None or grad is None:
            return
        if param.grad is None:
            param.grad = grad.astype(param.data.dtype, copy=False)
        else:
            param.grad += grad

    def _op_cache(self) -> Any:
        """The op cache that ``forward`` kept in ``self._cache`` (the op checks the gradient against it).

        Raises ``no_forward`` naming the layer class when forward has not run (and, in debug mode,
        when an array that forward kept was edited since).
        """
        if self._cache is None:
            raise no_forward(type(self).__name__)
        self._check_saved()
        return self._cache

    def _saved_for_backward(self, grad_output: Any) -> Any:
        """Check that ``backward`` may run and return what ``forward`` saved for it.

        For layers whose forward stores ``self._cache = (saved, output)``: raises ``no_forward``
        when forward has not run, checks ``grad_output`` against the output (float dtype, shape,
        device) with messages naming the layer class, and returns ``saved``.
        """
        name = type(self).__name__
        if self._cache is None:
            raise no_forward(name)
        saved, y = self._cache
        check_grad(name, grad_output, y.shape, y)
        self._check_saved()
        return saved

    def _check_saved(self) -> None:
        """In debug mode (``gl.set_debug``), raise when an array that forward kept changed since."""
        debug.check_unchanged(type(self).__name__, self.__dict__.get("_debug_prints"))


class Sequential(Module):
    """A chain of modules; ``backward`` runs the children in reverse order.

    Args:
        *modules: the layers, registered under the names "0", "1", ...
    """

    def __init__(self, *modules: Module):
        super().__init__()
        for i, mod in enumerate(modules):
            if not isinstance(mod, Module):
                raise TypeError(f"Sequential: expected Module arguments, got {type(mod).__name__} at position {i}")
            self.add_module(str(i), mod)

    def forward(self, x):
        for mod in self._modules.values():
            x = mod(x)
        return x

    def backward(self, grad_output):
        g = grad_output
        for mod in reversed(list(self._modules.values())):
            g = mod.backward(g)
        return g

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(*mods[idx])
        return mods[idx]

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self._modules)), module)
        return self
