"""Optimisers (SGD, Adam, AdamW) and learning-rate schedulers (StepLR, CosineAnnealingLR).

The update formulas are PyTorch's (``torch.optim``), step for step, applied in place to
``param.data`` with the array module of the parameter (NumPy or CuPy). Parameters whose
``grad`` is None are skipped.

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

Schedulers' ``state_dict()`` is flat the same way: numbers, and float64 arrays for per-group lists.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import backend
from .nn.module import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR"]


def _number(name: str, arg: str, value: Any, low: float = 0.0, high: float | None = None, open_high=False) -> float:
    """``value`` as a float in [low, high] (or [low, high)), else a ValueError naming the optimiser."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{name}: invalid {arg} {value!r} (expected a number)")
    ok = value >= low and (high is None or (value < high if open_high else value <= high))
    if not ok:
        span = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"{name}: invalid {arg} {value!r} (expected {span})")
    return float(value)


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
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if tuple(p.grad.shape) != tuple(p.data.shape):
                    raise ValueError(
                        f"{self._name}.step: gradient of shape {tuple(p.grad.shape)} for a parameter of shape "
                        f"{tuple(p.data.shape)}"
                    )
                self._update(p, p.grad, self.state.setdefault(p, {}), group)
        return loss

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover

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
            own, saved = set(group) - {"params", "initial_lr"}, set(groups[g]) - {"params", "initial_lr"}
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
            got = np.asarray(groups[g].get("params", [])).reshape(-1)
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
                    new[key] = np.asarray(value).item()
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
                arr = np.asarray(value)
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
        value = np.array(value, dtype=reference.dtype, copy=True)
        if backend.is_cuda_array(reference):
            xp = backend.get_array_module(reference)
            with xp.cuda.Device(reference.device.id):
                return xp.asarray(value)
        return value

    def __repr__(self) -> str:
        lines = [f"{self._name} ("]
        for g, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {g}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov and weight decay.

    As ``torch.optim.SGD``: ``g = grad + weight_decay * p``; with momentum, ``buf = g`` on the
    first step and ``buf = momentum * buf + (1 - dampening) * g`` after, then ``g = g + momentum
    * buf`` (Nesterov) or ``g = buf``; finally ``p -= lr * g``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (>= 0).
        momentum: momentum factor. Defaults to 0.
        dampening: dampening for momentum. Defaults to 0.
        weight_decay: L2 penalty. Defaults to 0.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0). Defaults to False.
    """

    _state_keys = frozenset({"momentum_buffer"})

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=bool(nesterov)
        )
        super().__init__(params, defaults)

    def _check_group(self, group):
        super()._check_group(group)
        for arg in ("momentum", "weight_decay"):
            group[arg] = _number(self._name, arg, group[arg])
        group["dampening"] = _number(self._name, "dampening", group["dampening"], low=-math.inf)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"{self._name}: Nesterov momentum requires momentum > 0 and zero dampening, got "
                f"momentum={group['momentum']}, dampening={group['dampening']}"
            )

    def _update(self, p, grad, state, group):
        momentum, wd = group["momentum"], group["weight_decay"]
        if wd != 0:
            grad = grad + wd * p.data
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = grad.copy()
                state["momentum_buffer"] = buf
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam``, with L2 ``weight_decay`` added to the gradient.

    Per step ``t``: ``m = lerp(m, g, 1 - beta1)``, ``v = beta2 * v + (1 - beta2) * g * g``,
    ``p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. Defaults to 1e-3.
        betas: coefficients of the running averages of the gradient and its square, each in
            [0, 1). Defaults to (0.9, 0.999).
        eps: added to the denominator. Defaults to 1e-8.
        weight_decay: L2 penalty. Defaults to 0.
        amsgrad: use the running maximum of ``v`` (AMSGrad). Defaults to False.
    """

    _decoupled = False
    _state_keys = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad))
        super().__init__(params, defaults)

    def _check_group(self, group):
        super()._check_group(group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{self._name}: invalid betas {betas!r} (expected a pair of numbers in [0, 1))")
        group["betas"] = tuple(
            _number(self._name, f"beta at index {i}", b, 0.0, 1.0, True) for i, b in enumerate(betas)
        )
        group["eps"] = _number(self._name, "epsilon eps", group["eps"])
        group["weight_decay"] = _number(self._name, "weight_decay", group["weight_decay"])

    def _update(self, p, grad, state, group):
        xp = backend.get_array_module(p.data)
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        step = state["step"]
        if wd != 0:
            if self._decoupled:
                p.data *= 1 - lr * wd
            else:
                grad = grad + wd * p.data
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        weight = 1 - beta1  # torch's lerp, with its two forms for small and large weights
        if abs(weight) < 0.5:
            exp_avg += weight * (grad - exp_avg)
        else:
            exp_avg[...] = grad - (grad - exp_avg) * (1 - weight)
        exp_avg_sq *= beta2
        exp_avg_sq += ((1 - beta2) * grad) * grad
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        second = exp_avg_sq
        if group["amsgrad"]:
            if "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        denom = xp.sqrt(second) / bias_correction2_sqrt + eps
        p.data += (-step_size * exp_avg) / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    ``p *= 1 - lr * weight_decay`` before the Adam step; the gradient itself is not decayed.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. Defaults to 1e-3.
        betas: running-average coefficients, each in [0, 1). Defaults to (0.9, 0.999).
        eps: added to the denominator. Defaults to 1e-8.
        weight_decay: decoupled weight decay. Defaults to 1e-2.
        amsgrad: AMSGrad variant. Defaults to False.
    """

    _decoupled = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


# ----------------------------------------------------------------------------------------------
# Learning-rate schedulers: PyTorch's recursive ("chainable") forms, so that the values agree
# with torch.optim.lr_scheduler bit for bit, epoch by epoch.
# ----------------------------------------------------------------------------------------------
class LRScheduler:
    """Base class: sets each group's ``lr`` from ``get_lr()`` on every :meth:`step`.

    On construction each group's ``initial_lr`` is recorded (``base_lrs``) and one step is taken
    (``last_epoch`` becomes 0), as in PyTorch. Call ``step()`` once per epoch, after the
    optimiser's steps.

    Args:
        optimizer: the wrapped :class:`Optimizer`.
        last_epoch: index of the last epoch when resuming; -1 (default) starts afresh.
    """

    _hyper: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise ValueError(
                        f"{name}: resuming with last_epoch={last_epoch} needs 'initial_lr' in param_groups[{i}] "
                        "(load the optimizer's state dict first)"
                    )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._step_count = 0
        self._initial = True
        self.step()
        self._initial = False

    def get_lr(self) -> list[float]:
        """The learning rates for the current ``last_epoch`` (called by :meth:`step`)."""
        raise NotImplementedError  # pragma: no cover

    def step(self) -> None:
        """Advance one epoch and set the groups' learning rates."""
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last :meth:`step`."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """A flat dict of numbers and float64 arrays (``base_lrs``, ``last_lr``)."""
        out: dict[str, Any] = {
            "last_epoch": self.last_epoch,
            "step_count": self._step_count,
            "base_lrs": np.array(self.base_lrs, dtype=np.float64),
            "last_lr": np.array(self._last_lr, dtype=np.float64),
        }
        out.update({k: getattr(self, k) for k in self._hyper})
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (does not touch the optimiser's lr)."""
        name = f"{type(self).__name__}.load_state_dict"
        want = {"last_epoch", "step_count", "base_lrs", "last_lr", *self._hyper}
        if set(state_dict) != want:
            raise ValueError(f"{name}: expected keys {sorted(want)}, got {sorted(state_dict)}")
        self.last_epoch = int(np.asarray(state_dict["last_epoch"]).item())
        self._step_count = int(np.asarray(state_dict["step_count"]).item())
        self.base_lrs = [float(v) for v in np.asarray(state_dict["base_lrs"]).reshape(-1)]
        self._last_lr = [float(v) for v in np.asarray(state_dict["last_lr"]).reshape(-1)]
        for k in self._hyper:
            setattr(self, k, type(getattr(self, k))(np.asarray(state_dict[k]).item()))

    def _group_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (``torch.optim.lr_scheduler.StepLR``).

    ``lr(epoch) = base_lr * gamma ** (epoch // step_size)``, computed recursively as PyTorch does.

    Args:
        optimizer: the wrapped optimiser.
        step_size: period of the decay, in epochs (>= 1).
        gamma: multiplicative factor. Defaults to 0.1.
        last_epoch: the last epoch when resuming. Defaults to -1.
    """

    _hyper = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size < 1:
            raise ValueError(f"StepLR: expected step_size to be an int >= 1, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _number("StepLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._group_lrs()
        return [lr * self.gamma for lr in self._group_lrs()]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base lr to ``eta_min`` over ``T_max`` epochs (PyTorch's CosineAnnealingLR).

    ``lr(epoch) = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``, computed with
    PyTorch's recursive form (the same values, the same rounding); past ``T_max`` it rises again.

    Args:
        optimizer: the wrapped optimiser.
        T_max: half-period, in epochs (>= 1).
        eta_min: minimum learning rate. Defaults to 0.
        last_epoch: the last epoch when resuming. Defaults to -1.
    """

    _hyper = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if isinstance(T_max, bool) or not isinstance(T_max, (int, np.integer)) or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: expected T_max to be an int >= 1, got {T_max!r}")
        self.T_max = int(T_max)
        self.eta_min = _number("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return self._group_lrs()
        if self._step_count == 1 and t > 0:
            return [eta_min + (base - eta_min) * (1 + math.cos(t * math.pi / T)) / 2 for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [
                lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                for base, lr in zip(self.base_lrs, self._group_lrs(), strict=True)
            ]
        return [
            (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T)) * (lr - eta_min) + eta_min
            for lr in self._group_lrs()
        ]
