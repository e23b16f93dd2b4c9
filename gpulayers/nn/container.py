"""Containers: Sequential, ModuleList, Residual and Concat.

A container's ``backward`` calls its children's backwards in the reverse order of their
forwards. Children keep their own saved forwards, so a child may appear in several places (or
several containers) and each use gets its own backward.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .. import backend
from .activation import ReLU
from .module import Module
from .normalization import _BatchNorm
from .pooling import MaxPool2d, _Pool

__all__ = ["Sequential", "ModuleList", "Residual", "Concat"]


def _check_module(name: str, mod: Any, where: str) -> Module:
    if not isinstance(mod, Module):
        raise TypeError(f"{name}: expected a Module {where}, got {type(mod).__name__}")
    return mod


def _index(name: str, idx: Any, length: int) -> int:
    if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
        raise TypeError(f"{name}: indices must be integers or slices, got {type(idx).__name__}")
    if not -length <= idx < length:
        raise IndexError(f"{name}: index {idx} is out of range for {length} modules")
    return int(idx) % length


def _plain(mod: Module, forward) -> bool:
    """True when calling ``mod`` runs ``forward`` unchanged (not overridden or wrapped)."""
    return "forward" not in mod.__dict__ and type(mod).forward is forward and type(mod).__call__ is Module.__call__


def _fuses_relu(mod: Module, after: Module) -> bool:
    """Whether ``mod`` followed by ``after`` is a BatchNorm and a ReLU to run as one.

    Only exact ``ReLU`` modules after a ``BatchNorm1d``/``BatchNorm2d`` whose forwards are not
    overridden or wrapped (``summary`` wraps them) qualify. The ReLU then runs inside the
    BatchNorm's passes (its GPU kernels, or its CPU blocks while they are in cache), with the
    results of the two layers run one after the other: the ReLU's output is always a new array.
    """
    return (
        isinstance(mod, _BatchNorm)
        and type(after) is ReLU
        and _plain(mod, _BatchNorm.forward)
        and _plain(after, ReLU.forward)
    )


def _fuses_pool(mod: Module | None) -> bool:
    """Whether ``mod`` (after a fused BatchNorm and ReLU) is a ``MaxPool2d`` to run inside them too:
    an exact ``MaxPool2d`` whose forward and backward are not overridden or wrapped. The BatchNorm's
    op decides per call whether it can (NumPy input, windows that tile it)."""
    return (
        type(mod) is MaxPool2d
        and _plain(mod, _Pool.forward)
        and "backward" not in mod.__dict__
        and "_record_fused" not in mod.__dict__
    )


class Sequential(Module):
    """A chain of modules; ``backward`` runs the children in reverse order.

    A module may appear more than once (``Sequential(lin1, act, lin2, act)``): each use gets its
    own backward.

    Args:
        *modules: the layers, registered under the names "0", "1", ...; or one ``OrderedDict``
            (a ``dict``) of name -> layer, registered under those names, as in PyTorch.

    Shape:
        - Input: what the first module takes
        - Output: what the last module gives
    """

    def __init__(self, *modules: Module | dict):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, mod in modules[0].items():
                if not isinstance(name, str) or not name or "." in name:
                    raise ValueError(f"Sequential: expected non-empty names without '.', got {name!r}")
                self.add_module(name, _check_module("Sequential", mod, f"for {name!r}"))
            return
        for i, mod in enumerate(modules):
            self.add_module(str(i), _check_module("Sequential", mod, f"at position {i}"))

    def forward(self, x):
        mods = list(self._modules.values())
        i = 0
        while i < len(mods):
            mod = mods[i]
            if i + 1 < len(mods) and _fuses_relu(mod, mods[i + 1]):
                # BatchNorm then ReLU: the ReLU runs inside the BatchNorm's passes, and so does a
                # MaxPool2d after them when the op can take it on.
                pool = mods[i + 2] if i + 2 < len(mods) and _fuses_pool(mods[i + 2]) else None
                x, pooled = (mod._forward(x, relu=True), False) if pool is None else mod._forward_relu_pool(x, pool)
                mods[i + 1]._record_fused(x)
                if pooled:
                    pool._record_fused(x)
                i += 3 if pooled else 2
                continue
            x = mod(x)
            i += 1
        return x

    def backward(self, grad_output):
        return self._backward(grad_output, self.needs_input_grad)

    def _backward_without_input(self, grad_output):
        return self._backward(grad_output, False)

    def _backward(self, grad_output, input_grad: bool):
        """The children's backwards in reverse; the first child's without its input gradient
        unless ``input_grad``."""
        g = grad_output
        mods = list(self._modules.values())
        for k in range(len(mods) - 1, -1, -1):
            g = mods[k].backward(g) if k or input_grad else mods[k]._backward_without_input(g)
        return g

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        mods = list(self._modules.values())
        return mods[_index("Sequential", idx, len(mods))]

    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end; returns self."""
        self.add_module(str(len(self._modules)), _check_module("Sequential.append", module, "to append"))
        return self

    def extend(self, modules: Iterable[Module]) -> Sequential:
        """Append every module of ``modules``; returns self."""
        for mod in modules:
            self.append(mod)
        return self


class ModuleList(Module):
    """A list of modules whose parameters and state the parent registers (PyTorch's ``nn.ModuleList``).

    It has no ``forward`` of its own: the owning module calls the entries (in its ``forward``) and
    their backwards (in reverse, in its ``backward``). Entries are named "0", "1", ... and renumbered
    when one is deleted or inserted.

    Args:
        modules: an iterable of modules to start with. Defaults to None (empty).
    """

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _renumber(self, mods: list[Module]) -> None:
        self._modules.clear()
        for i, mod in enumerate(mods):
            self._modules[str(i)] = mod

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[_index("ModuleList", idx, len(mods))]

    def __setitem__(self, idx: int, module: Module) -> None:
        i = _index("ModuleList", idx, len(self))
        self._modules[str(i)] = _check_module("ModuleList", module, "to assign")

    def __delitem__(self, idx) -> None:
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            del mods[idx]
        else:
            del mods[_index("ModuleList", idx, len(mods))]
        self._renumber(mods)

    def __iadd__(self, modules: Iterable[Module]) -> ModuleList:
        return self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        """Add ``module`` at the end; returns self."""
        self._modules[str(len(self._modules))] = _check_module("ModuleList.append", module, "to append")
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Append every module of ``modules``; returns self."""
        if isinstance(modules, Module) and not isinstance(modules, (ModuleList, Sequential)):
            raise TypeError(f"ModuleList.extend: expected an iterable of modules, got {type(modules).__name__}")
        for mod in modules:
            self.append(mod)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index`` (a list's rules for out-of-range indices)."""
        mods = list(self._modules.values())
        mods.insert(int(index), _check_module("ModuleList.insert", module, "to insert"))
        self._renumber(mods)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "ModuleList has no forward: call its entries from the forward of the module that owns it"
        )

    def backward(self, grad_output):
        raise NotImplementedError(
            "ModuleList has no backward: call its entries' backwards, in reverse, from the owning module's backward"
        )


class Residual(Module):
    """``y = body(x) + shortcut(x)``, or ``body(x) + x`` without a shortcut.

    The children are named ``body`` and ``shortcut``, so a PyTorch module with those attribute
    names has the same state_dict keys. Put an activation after the addition with
    ``Sequential(Residual(body, shortcut), ReLU())``.

    Args:
        body: the residual branch.
        shortcut: the other branch (e.g. a 1x1 convolution and batch norm where the shape
            changes), or None for the identity. Defaults to None.

    Shape:
        - Input: what ``body`` takes
        - Output: the shape of ``body(x)``, which must equal that of ``shortcut(x)`` (or of ``x``)
    """

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        self.body = _check_module("Residual", body, "as body")
        if shortcut is None:
            self.add_module("shortcut", None)
        else:
            self.shortcut = _check_module("Residual", shortcut, "as shortcut (or None)")

    def forward(self, x: Any) -> Any:
        y = self.body(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if tuple(y.shape) != tuple(s.shape):
            what = "the input" if self.shortcut is None else "the shortcut's output"
            raise ValueError(
                f"Residual: the body's output has shape {tuple(y.shape)} but {what} has shape "
                f"{tuple(s.shape)}; give a shortcut that maps the input to the body's output shape"
            )
        return y + s

    def backward(self, grad_output: Any) -> Any:
        # Reverse order of the forward: the shortcut ran last.
        ds = grad_output if self.shortcut is None else self.shortcut.backward(grad_output)
        dx = self.body.backward(grad_output)
        return dx + ds

    def extra_repr(self) -> str:
        return "shortcut=identity" if self.shortcut is None else ""


class Concat(Module):
    """Run every branch on the same input and concatenate the outputs along ``dim``.

    Args:
        *branches: the modules, registered under the names "0", "1", ...
        dim: the axis to concatenate along (every other axis must agree). Defaults to 1
            (channels of an NCHW batch, features of an (N, F) batch).

    Shape:
        - Input: what every branch takes
        - Output: the branches' outputs joined along ``dim``
    """

    def __init__(self, *branches: Module, dim: int = 1) -> None:
        super().__init__()
        if not branches:
            raise ValueError("Concat: expected at least one branch")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"Concat: expected dim to be an int, got {type(dim).__name__}")
        self.dim = int(dim)
        for i, mod in enumerate(branches):
            self.add_module(str(i), _check_module("Concat", mod, f"as branch {i}"))

    def forward(self, x: Any) -> Any:
        outs = [mod(x) for mod in self._modules.values()]
        ndim = outs[0].ndim
        if not -ndim <= self.dim < ndim:
            raise ValueError(f"Concat: dim={self.dim} is out of range for the branches' {ndim}-D outputs")
        axis = self.dim % ndim
        first = tuple(outs[0].shape)
        for i, out in enumerate(outs[1:], start=1):
            shape = tuple(out.shape)
            if len(shape) != ndim or shape[:axis] + shape[axis + 1 :] != first[:axis] + first[axis + 1 :]:
                raise ValueError(
                    f"Concat: branch {i} gives shape {shape} but branch 0 gives {first}; "
                    f"they may differ only along dim {self.dim}"
                )
        xp = backend.get_array_module(outs[0])
        y = xp.concatenate(outs, axis=axis)
        self.save_for_backward(axis, [int(out.shape[axis]) for out in outs], output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        axis, sizes = self.saved_for_backward(grad_output)
        xp = backend.get_array_module(grad_output)
        bounds = np.cumsum(sizes)[:-1].tolist()
        pieces = xp.split(grad_output, bounds, axis=axis)
        dx = None
        for mod, piece in reversed(list(zip(self._modules.values(), pieces, strict=True))):
            d = mod.backward(xp.ascontiguousarray(piece))
            dx = d if dx is None else dx + d
        return dx

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
