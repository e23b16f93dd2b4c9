"""Module and Parameter: the explicit forward/backward module system.

There is no autograd tape. ``forward`` keeps what ``backward`` needs; ``backward`` takes the
gradient of the loss w.r.t. the output, returns the gradient w.r.t. the input, and *adds*
parameter gradients into ``param.grad`` (PyTorch's accumulation semantics).

Each module keeps a stack of saved forwards. A module may be called several times before
``backward``; each ``backward`` consumes the most recent forward not yet consumed (last in, first
out), so a shared layer gets one backward per use and PyTorch's gradients. Layers push with
:meth:`Module.save_for_backward` and pop with :meth:`Module.saved_for_backward`. What is kept:

- under ``gl.no_grad()``: nothing;
- in eval mode: only the latest forward (a forward replaces what the module kept), so one
  backward through an eval-mode model works and an evaluation loop never grows;
- in training mode: every forward, until its backward consumes it. The first forward after a
  backward of the same module drops the forwards still unconsumed (their backward is over).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import backend, debug
from .._checks import check_bool, check_floating
from ..grad_mode import is_grad_enabled
from .parameter import Parameter

__all__ = ["Parameter", "Module"]

# A module that keeps this many training-mode forwards without a backward warns once (a loop that
# only runs forwards in training mode: use model.eval() or gl.no_grad()).
PENDING_FORWARDS_WARNING = 256


class _Saved(NamedTuple):
    """One forward's saved items, with its output's shape and device for checking the gradient."""

    items: tuple
    out_shape: tuple[int, ...] | None
    out_device: str | None
    prints: list | None  # fingerprints of the kept arrays in debug mode (``gl.set_debug``)


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
    """Base class of every layer. Subclasses implement ``forward`` and ``backward``.

    Attributes:
        needs_input_grad: whether ``backward`` must return the gradient w.r.t. the input (True by
            default). Set it to False on a model whose input is data that needs no gradient (as a
            PyTorch input without ``requires_grad``): ``backward`` then returns None and the layer
            that sees the input (``Conv2d``, ``Linear``; a ``Sequential`` passes it to its first
            child) skips that computation. Parameter gradients are unchanged.
    """

    needs_input_grad: bool = True

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_saved", [])  # the saved-forward stack, most recent last
        object.__setattr__(self, "_backward_ran", False)

    # -- registration -------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if isinstance(value, (Parameter, Module)):
            target = self._parameters if isinstance(value, Parameter) else self._modules
            for store in (self._parameters, self._buffers, self._modules):
                if store is not target:
                    store.pop(name, None)
            self.__dict__.pop(name, None)
            target[name] = value  # a replaced entry keeps its place, as in PyTorch
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

    def _backward_without_input(self, grad_output):
        """``backward`` for a caller that needs no input gradient (the result may be None): a
        layer that can skip that work overrides this; the default runs ``backward``."""
        return self.backward(grad_output)

    # -- what forward keeps for backward ------------------------------------------------------
    def save_for_backward(self, *items: Any, output: Any = None) -> None:
        """Keep ``items`` for the ``backward`` of this forward (call it from ``forward``).

        Nothing is kept under ``gl.no_grad()``; in eval mode only the latest forward is kept; in
        training mode every forward is kept until a backward consumes it, and the first forward
        after a backward of this module drops those still unconsumed.

        Args:
            *items: anything backward needs (arrays, op caches, shapes).
            output: the forward's output; when given, :meth:`saved_for_backward` checks the
                gradient against its shape and device.
        """
        if not is_grad_enabled():
            return
        saved = self.__dict__["_saved"]
        if not self.training or self.__dict__["_backward_ran"]:
            saved.clear()
            object.__setattr__(self, "_backward_ran", False)
        if output is None:
            saved.append(_Saved(items, None, None, debug.snapshot(items)))
        else:
            saved.append(_Saved(items, tuple(output.shape), backend.device_of(output), debug.snapshot(items)))
        if len(saved) == PENDING_FORWARDS_WARNING:
            warnings.warn(
                f"{type(self).__name__}: {len(saved)} forwards in training mode wait for a backward; "
                "a loop that only evaluates should use model.eval() or `with gl.no_grad():`",
                ResourceWarning,
                stacklevel=3,
            )

    def saved_for_backward(self, grad_output: Any = None) -> tuple:
        """Consume the most recent forward not yet consumed and return what it saved.

        Args:
            grad_output: when given and the forward recorded its output, checked to be a floating
                array of the output's shape on its device (the forward stays saved on an error).

        Returns:
            The tuple of items given to :meth:`save_for_backward`.

        Raises:
            RuntimeError: naming the module, when no forward is left to consume (backward before
                forward, a second backward after one forward, or a forward under ``no_grad``).
        """
        saved = self.__dict__["_saved"]
        name = type(self).__name__
        if not saved:
            mode = "" if self.training else "; in eval mode a module keeps only its latest forward"
            raise RuntimeError(
                f"{name}.backward: called before forward (no forward left to consume: each backward needs "
                f"its own forward, and forwards under gl.no_grad() keep nothing{mode})"
            )
        entry = saved[-1]
        if grad_output is not None and entry.out_shape is not None:
            check_floating(name + ".backward", grad_output)
            if tuple(grad_output.shape) != entry.out_shape:
                raise ValueError(
                    f"{name}.backward: expected grad_output of shape {entry.out_shape}, got {tuple(grad_output.shape)}"
                )
            device = backend.device_of(grad_output)
            if device != entry.out_device:
                raise RuntimeError(
                    f"{name}.backward: grad_output is on {device} but the forward ran on {entry.out_device}"
                )
        debug.check_unchanged(name, entry.prints)
        saved.pop()
        object.__setattr__(self, "_backward_ran", True)
        return entry.items

    # -- traversal ----------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, mod in self._modules.items():
            if mod is not None:
                yield name, mod

    def children(self) -> Iterator[Module]:
        for _, mod in self.named_children():
            yield mod

    def named_modules(
        self, memo: set[int] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """Every module of the tree, this one first; a shared module once (as in PyTorch)."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, mod in self.named_children():
            yield from mod.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, mod in self.named_modules():
            yield mod

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        for mod_name, mod in self.named_modules(prefix=prefix):
            for name, p in mod._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for mod_name, mod in self.named_modules(prefix=prefix):
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

    def discard_saved(self) -> None:
        """Drop this module's saved forwards (not its children's): their backwards will not come,
        e.g. after a step abandoned part way such as a CUDA-graph capture that failed."""
        self.__dict__["_saved"].clear()
        if "_cache" in self.__dict__:
            self.__dict__["_cache"] = None

    def _on_to(self) -> None:
        """Hook for modules that hold derived state (drops saved forwards and forward caches)."""
        self.discard_saved()

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
        """(key, array, is_parameter) for every entry of the state dict, PyTorch's order.

        A shared module or a tied parameter appears under every name, as in PyTorch.
        """
        for mod_name, mod in self.named_modules(remove_duplicate=False):
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
        if param is not None:
            param.accumulate_grad(grad, copy=False)

    def _op_cache(self, grad_output: Any = None) -> Any:
        """Consume the most recent saved forward of a layer that saved one op cache; return it."""
        (cache,) = self.saved_for_backward(grad_output)
        return cache

    def _check_saved(self) -> None:
        """In debug mode (``gl.set_debug``), raise when an array a ``self._cache`` kept changed since."""
        debug.check_unchanged(type(self).__name__, self.__dict__.get("_debug_prints"))
