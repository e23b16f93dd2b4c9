"""The optimiser base class: parameter groups, per-parameter state, ``zero_grad`` and the state dict.

Updates are applied in place to ``param.data`` with the array module of the parameter (NumPy or
CuPy). Parameters whose ``grad`` is None are skipped.

State dict layout (:meth:`Optimizer.state_dict`): one flat ``dict`` whose values are NumPy arrays
or plain Python numbers, so that ``numpy.savez(path, **sd)`` stores it without pickle and
``dict(numpy.load(path))`` loads it back (0-d arrays are accepted where numbers are expected)::

    "param_groups.<g>.params"   int64 array: indices of the group's parameters, counted over all
                                groups in order (as PyTorch numbers them)
    "param_groups.<g>.<option>" the group's options: lr, momentum, ... (numbers or bools);
                                ``betas`` as a float64 array of 2; ``initial_lr`` once a
                                scheduler has been attached
    "state.<i>.<name>"          per-parameter state of parameter <i>: ``momentum_buffer`` (SGD),
                                ``step`` (a number), ``exp_avg``, ``exp_avg_sq`` and
                                ``max_exp_avg_sq`` (Adam/AdamW) as arrays of the parameter's shape
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import backend
from .._signature import signed_init
from ..nn.module import Parameter
from . import optim_cuda

__all__ = ["Optimizer"]

# Group entries that are not the optimiser's own options: the parameters, and what schedulers add.
_NOT_OPTIONS = frozenset({"params", "initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"})


def _number(name: str, arg: str, value: Any, low: float = 0.0, high: float | None = None, open_high=False) -> float:
    """``value`` as a float in [low, high] (or [low, high)), else a ValueError naming the optimiser."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{name}: invalid {arg} {value!r} (expected a number)")
    if math.isinf(value):
        raise ValueError(f"{name}: invalid {arg} {value!r} (expected a finite number)")
    ok = value >= low and (high is None or (value < high if open_high else value <= high))
    if not ok:
        span = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"{name}: invalid {arg} {value!r} (expected {span})")
    return float(value)


def with_defaults(init: Callable[..., None], **defaults: Any) -> Callable[..., None]:
    """``init`` with some argument defaults changed, for an optimiser that differs from its base
    only there (AdamW is Adam with another ``weight_decay`` default); ``inspect.signature`` and
    ``help`` show the new defaults."""
    signature = inspect.signature(init)
    unknown = set(defaults) - set(signature.parameters)
    if unknown:
        raise TypeError(f"with_defaults: {init.__qualname__} has no argument {sorted(unknown)}")
    params = [p.replace(default=defaults.get(p.name, p.default)) for p in signature.parameters.values()]
    return functools.wraps(init)(signed_init(signature.replace(parameters=params), init))


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and the state dict.

    Args:
        params: an iterable of :class:`Parameter`, or of dicts ``{"params": [...], option: value}``
            (parameter groups with their own options).
        defaults: each option's default value.

    Subclasses implement ``_check_group(group)`` and ``_update(param, grad, state, group)``.
    """

    _scalar_state = frozenset({"step"})
    _state_keys: frozenset[str] = frozenset()  # the per-parameter state a subclass keeps

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[Parameter, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        self._tables: dict = {}  # the persistent device arrays of the kernels' tables (per device and dtype)
        if isinstance(params, Parameter):
            raise TypeError(f"{self._name}: expected an iterable of Parameters, got a single Parameter")
        groups = list(params)
        if not groups:
            raise ValueError(f"{self._name}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    @property
    def _name(self) -> str:
        return type(self).__name__

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters with its own options (missing options take the defaults)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{self._name}: expected a parameter group dict with a 'params' entry, got {group!r}")
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{self._name}: expected Parameters, got {type(p).__name__} at position {i}")
            if id(p) in seen:
                raise ValueError(f"{self._name}: a parameter appears more than once (position {i})")
            seen.add(id(p))
        new = {**self.defaults, **group, "params": params}
        self._check_group(new)
        self.param_groups.append(new)

    def _check_group(self, group: dict[str, Any]) -> None:
        group["lr"] = _number(self._name, "learning rate lr", group["lr"])

    @property
    def params(self) -> list[Parameter]:
        """Every parameter, over all groups, in order."""
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def lr(self) -> float:
        """The first group's learning rate; setting it sets every group's."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        value = _number(self._name, "learning rate lr", value)
        for g in self.param_groups:
            g["lr"] = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient to None (default) or to zeros in place."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()`` if given.

        GPU parameters the kernels can take are updated together after the loop: one launch per
        group, dtype and device (and per step count for Adam), see :mod:`.optim_cuda`.
        """
        loss = closure() if closure is not None else None
        self._pending, stepped = {}, 0
        try:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if tuple(p.grad.shape) != tuple(p.data.shape):
                        raise ValueError(
                            f"{self._name}.step: gradient of shape {tuple(p.grad.shape)} for a parameter of shape "
                            f"{tuple(p.data.shape)}"
                        )
                    stepped += 1
                    self._update(p, p.grad, self.state.setdefault(p, {}), group)
            batches = list(self._pending.values())
        finally:
            self._pending = None
        self._fused_batches = batches
        self._all_fused = bool(batches) and sum(len(b[2]) for b in batches) == stepped
        if batches:
            capture = self._capture_tables
            optim_cuda.multi_update(
                [self._batch(group, key, tensors, states[0]) for group, key, tensors, states in batches],
                self._tables if capture is None else capture,
                copy=capture is None,
            )
        return loss

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover

    # -- the fused GPU step ---------------------------------------------------------------------
    _pending: dict | None = None
    _fused_batches: list = []
    _all_fused = False
    # Set while a CUDA graph captures a step: the graph's own tables, uploaded before each replay.
    _capture_tables: dict | None = None

    def _fuse(self, group: dict[str, Any], key: Any, arrays: tuple, state: dict[str, Any]) -> None:
        """Queue ``arrays`` (param, grad, state...) for the launch of ``group`` and ``key`` at the end of step()."""
        p = arrays[0]
        batch = self._pending.setdefault((id(group), key, p.dtype.name, str(p.device)), (group, key, [], []))
        batch[2].append(arrays)
        batch[3].append(state)

    def _batch(self, group: dict[str, Any], key: Any, tensors: list, state: dict[str, Any]) -> optim_cuda.Batch:
        """The launch of ``tensors`` (of ``group``, queued under ``key``; ``state`` is the first one's)."""
        raise NotImplementedError  # pragma: no cover

    def _advance(self, state: dict[str, Any]) -> None:
        """The host side of a fused update that a CUDA graph replay repeats (Adam: the step count)."""

    @property
    def _device_resident(self) -> frozenset[str]:
        """The group options and state scalars the last step's kernels read from device memory."""
        return frozenset({"lr", "step"}) if self._all_fused else frozenset()

    def _before_replay(self, batches: list, tables: dict, advance: bool) -> None:
        """Before a CUDA graph replays a captured step (its fused ``batches`` and launch ``tables``):
        repeat its host side when ``advance`` (the capture itself did it for the first replay), then
        upload the current learning rates and step counts with one asynchronous copy."""
        if advance:
            for _, _, _, states in batches:
                for state in states:
                    self._advance(state)
        optim_cuda.upload([self._batch(group, key, tensors, ss[0]) for group, key, tensors, ss in batches], tables)

    # -- state dict ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The options and state as a flat dict of NumPy arrays and numbers (layout: module docstring)."""
        index = {id(p): i for i, p in enumerate(self.params)}
        out: dict[str, Any] = {}
        for g, group in enumerate(self.param_groups):
            for key, value in group.items():
                if key == "params":
                    value = np.array([index[id(p)] for p in value], dtype=np.int64)
                elif isinstance(value, tuple):
                    value = np.array(value, dtype=np.float64)
                out[f"param_groups.{g}.{key}"] = value
        for p in self.params:
            for key, value in self.state.get(p, {}).items():
                if key not in self._scalar_state:
                    value = np.array(backend.to_numpy(value), copy=True)
                out[f"state.{index[id(p)]}.{key}"] = value
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore options and state from :meth:`state_dict` output (onto the parameters' devices).

        The parameters are matched by position, so the optimiser must have been built over the
        same parameters in the same groups and order.
        """
        name = f"{self._name}.load_state_dict"
        params = self.params
        groups: dict[int, dict[str, Any]] = {}
        state: dict[int, dict[str, Any]] = {}
        for key, value in state_dict.items():
            kind, _, rest = key.partition(".")
            index, _, entry = rest.partition(".")
            if kind not in ("param_groups", "state") or not index.isdigit() or not entry:
                raise ValueError(f"{name}: unexpected key {key!r}")
            (groups if kind == "param_groups" else state).setdefault(int(index), {})[entry] = value
        if sorted(groups) != list(range(len(self.param_groups))):
            raise ValueError(
                f"{name}: the state has {len(groups)} parameter groups, the optimizer {len(self.param_groups)}"
            )
        for g, group in enumerate(self.param_groups):
            own, saved = set(group) - _NOT_OPTIONS, set(groups[g]) - _NOT_OPTIONS
            if own != saved:
                raise ValueError(
                    f"{name}: parameter group {g} of the state has the options {sorted(saved)}, "
                    f"this optimizer {sorted(own)} (a state dict of another optimizer type?)"
                )
        unknown = {k for entries in state.values() for k in entries} - self._state_keys
        if unknown:
            raise ValueError(
                f"{name}: unknown per-parameter state {sorted(unknown)} (a state dict of another optimizer?)"
            )
        start = 0
        for g, group in enumerate(self.param_groups):
            n = len(group["params"])
            got = backend.to_numpy(groups[g].get("params", [])).reshape(-1)
            if not np.array_equal(got, np.arange(start, start + n)):
                raise ValueError(f"{name}: parameter group {g} holds {n} parameters, the state has {got.size}")
            start += n
        if state and max(state) >= len(params):
            raise ValueError(f"{name}: state for parameter {max(state)}, but the optimizer has {len(params)}")
        new_states = {}
        for i, entries in state.items():
            p = params[i]
            new = {}
            for key, value in entries.items():
                if key in self._scalar_state:
                    new[key] = backend.to_numpy(value).item()
                    continue
                value = np.asarray(backend.to_numpy(value))
                if value.shape != p.shape:
                    raise ValueError(
                        f"{name}: state {key!r} of parameter {i} has shape {value.shape}, the parameter {p.shape}"
                    )
                new[key] = self._like(value, p.data)
            new_states[p] = new
        new_groups = []
        for g, group in enumerate(self.param_groups):
            new_group = dict(group)
            for key, value in groups[g].items():
                arr = backend.to_numpy(value)
                if key == "params":
                    continue
                if isinstance(group.get(key), tuple) or arr.ndim == 1:
                    new_group[key] = tuple(float(v) for v in arr)
                else:
                    new_group[key] = bool(arr) if arr.dtype == bool else arr.item()
            self._check_group(new_group)  # loaded options obey the constructor's rules
            new_groups.append(new_group)
        for group, new_group in zip(self.param_groups, new_groups, strict=True):
            group.update(new_group)
        self.state = new_states

    @staticmethod
    def _like(value: np.ndarray, reference: Any) -> Any:
        """A copy of ``value`` with ``reference``'s dtype, on ``reference``'s device."""
        return backend.to_device(np.array(value, dtype=reference.dtype, copy=True), backend.device_of(reference))

    def __repr__(self) -> str:
        lines = [f"{self._name} ("]
        for g, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {g}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + "\n)"
