"""Learning-rate schedulers (``torch.optim.lr_scheduler``): StepLR, CosineAnnealingLR, LinearLR, OneCycleLR.

PyTorch's recursive ("chainable") forms, so that the values agree with PyTorch's bit for bit,
epoch by epoch. A scheduler's ``state_dict()`` is flat like the optimiser's: numbers, and float64
arrays for per-group lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._checks import check_int
from .optimizer import Optimizer, _number

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "LinearLR", "OneCycleLR"]


def _positive_int(name: str, option: str, value: Any) -> int:
    return check_int(name, option, value, 1)


def _fraction(name: str, option: str, value: Any) -> float:
    return _number(name, option, value, 0.0, 1.0)


def _start_factor(name: str, option: str, value: Any) -> float:
    start = _number(name, option, value)
    if not 0 < start <= 1:
        raise ValueError(f"{name}: expected {option} in (0, 1], got {value!r}")
    return start


class LRScheduler:
    """Base class: sets each group's ``lr`` from ``get_lr()`` on every :meth:`step`.

    On construction each group's ``initial_lr`` is recorded (``base_lrs``) and one step is taken
    (``last_epoch`` becomes 0), as in PyTorch. Call ``step()`` once per epoch, after the
    optimiser's steps.

    Args:
        optimizer: the wrapped :class:`Optimizer`.
        last_epoch: index of the last epoch when resuming; -1 (default) starts afresh.
    """

    # The options kept in the state dict, each with the check that a subclass's ``__init__`` value
    # goes through (``check(name, option, value)``), or None where the subclass sets it itself.
    _hyper: dict[str, Callable[[str, str, Any], Any] | None] = {}

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1, **options: Any) -> None:
        name = type(self).__name__
        for option, value in options.items():
            setattr(self, option, self._hyper[option](name, option, value))
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        last_epoch = check_int(name, "last_epoch", last_epoch, -1)
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

    _hyper = {"step_size": _positive_int, "gamma": _number}

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        super().__init__(optimizer, last_epoch, step_size=step_size, gamma=gamma)

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

    _hyper = {"T_max": _positive_int, "eta_min": _number}

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        super().__init__(optimizer, last_epoch, T_max=T_max, eta_min=eta_min)

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


class LinearLR(LRScheduler):
    """Scale the learning rate linearly from ``start_factor`` to ``end_factor`` over ``total_iters`` steps.

    ``lr(epoch) = base_lr * (start_factor + (end_factor - start_factor) * min(epoch, total_iters) / total_iters)``,
    computed with PyTorch's recursive form (``torch.optim.lr_scheduler.LinearLR``); a usual warm-up.

    Args:
        optimizer: the wrapped optimiser.
        start_factor: factor of the first epoch, in (0, 1]. Defaults to 1/3.
        end_factor: factor from ``total_iters`` on, in [0, 1]. Defaults to 1.
        total_iters: epochs of the ramp (>= 1). Defaults to 5.
        last_epoch: the last epoch when resuming. Defaults to -1.
    """

    _hyper = {"start_factor": _start_factor, "end_factor": _fraction, "total_iters": _positive_int}

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        options = dict(start_factor=start_factor, end_factor=end_factor, total_iters=total_iters)
        super().__init__(optimizer, last_epoch, **options)

    def get_lr(self) -> list[float]:
        t = self.last_epoch
        if t == 0:
            return [lr * self.start_factor for lr in self._group_lrs()]
        if self._initial or t > self.total_iters:
            return self._group_lrs()
        slope = self.end_factor - self.start_factor
        factor = 1.0 + slope / (self.total_iters * self.start_factor + (t - 1) * slope)
        return [lr * factor for lr in self._group_lrs()]


def _per_group(name: str, arg: str, optimizer: Optimizer, value: Any) -> list[float]:
    """One number per parameter group: a list of that length, or one number for all."""
    groups = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != groups:
            raise ValueError(f"{name}: expected {groups} values for {arg} (one per parameter group), got {len(value)}")
        return [_number(name, arg, v) for v in value]
    return [_number(name, arg, value)] * groups


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin): warm up to ``max_lr``, then anneal far below the start.

    Stepped once per **batch**. The learning rate goes from ``max_lr / div_factor`` to ``max_lr``
    over the first ``pct_start`` of ``total_steps``, then down to ``initial_lr / final_div_factor``
    (with ``three_phase``, back to the initial rate first); the momentum (SGD's ``momentum`` or
    Adam's ``betas[0]``) moves the opposite way between ``max_momentum`` and ``base_momentum``.
    The same values as ``torch.optim.lr_scheduler.OneCycleLR``, step for step; the groups gain the
    options ``initial_lr``, ``max_lr``, ``min_lr``, ``max_momentum`` and ``base_momentum``.

    Args:
        optimizer: the wrapped optimiser.
        max_lr: the peak learning rate, or one per parameter group.
        total_steps: the number of steps of the cycle; or give ``epochs`` and ``steps_per_epoch``.
        epochs, steps_per_epoch: ``total_steps = epochs * steps_per_epoch`` when ``total_steps`` is None.
        pct_start: fraction of the cycle spent raising the learning rate. Defaults to 0.3.
        anneal_strategy: ``"cos"`` (default) or ``"linear"``.
        cycle_momentum: cycle the momentum inversely to the learning rate. Defaults to True.
        base_momentum, max_momentum: the momentum's bounds (or one per group). Defaults to 0.85, 0.95.
        div_factor: ``initial_lr = max_lr / div_factor``. Defaults to 25.
        final_div_factor: ``min_lr = initial_lr / final_div_factor``. Defaults to 1e4.
        three_phase: a third phase that anneals from the initial rate to ``min_lr``. Defaults to False.
        last_epoch: the last step when resuming. Defaults to -1.
    """

    _hyper = dict.fromkeys(
        ("total_steps", "pct_start", "anneal_strategy", "cycle_momentum", "use_beta1", "three_phase")
    )

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: Any,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: Any = 0.85,
        max_momentum: Any = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        name = "OneCycleLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: expected an Optimizer, got {type(optimizer).__name__}")
        if total_steps is not None:
            self.total_steps = check_int(name, "total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            epochs = check_int(name, "epochs", epochs, 1)
            self.total_steps = epochs * check_int(name, "steps_per_epoch", steps_per_epoch, 1)
        else:
            raise ValueError(f"{name}: give either total_steps, or epochs and steps_per_epoch")
        self.pct_start = _number(name, "pct_start", pct_start, 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{name}: expected anneal_strategy 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.three_phase = bool(three_phase)
        self.cycle_momentum = bool(cycle_momentum)
        self.use_beta1 = "betas" in optimizer.defaults
        div_factor = _number(name, "div_factor", div_factor)
        final_div_factor = _number(name, "final_div_factor", final_div_factor)
        max_lrs = _per_group(name, "max_lr", optimizer, max_lr)
        if self.cycle_momentum and "momentum" not in optimizer.defaults and not self.use_beta1:
            raise ValueError(
                f"{name}: cycle_momentum needs an optimizer with momentum or betas, "
                f"got {type(optimizer).__name__} (pass cycle_momentum=False)"
            )
        if self.cycle_momentum:
            max_moms = _per_group(name, "max_momentum", optimizer, max_momentum)
            base_moms = _per_group(name, "base_momentum", optimizer, base_momentum)
        last_epoch = check_int(name, "last_epoch", last_epoch, -1)
        if last_epoch == -1:
            for i, group in enumerate(optimizer.param_groups):
                group["initial_lr"] = max_lrs[i] / div_factor
                group["max_lr"] = max_lrs[i]
                group["min_lr"] = group["initial_lr"] / final_div_factor
                if self.cycle_momentum:
                    self._set_momentum(group, max_moms[i])
                    group["max_momentum"] = max_moms[i]
                    group["base_momentum"] = base_moms[i]
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group: dict[str, Any], value: float) -> None:
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _phases(self) -> list[tuple[float, str, str, str, str]]:
        """(end_step, start_lr, end_lr, start_momentum, end_momentum) per phase, the keys naming group options."""
        n, pct = self.total_steps, self.pct_start
        if self.three_phase:
            return [
                (float(pct * n) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(2 * pct * n) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                (n - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        return [
            (float(pct * n) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
            (n - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
        ]

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"OneCycleLR: tried to step {step} times, but the cycle has total_steps={self.total_steps}"
            )
        phases = self._phases()
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
                if step <= end_step or i == len(phases) - 1:
                    pct = (step - start_step) / (end_step - start_step)
                    lr = self._anneal(group[lr0], group[lr1], pct)
                    momentum = self._anneal(group[m0], group[m1], pct) if self.cycle_momentum else None
                    break
                start_step = end_step
            lrs.append(lr)
            if momentum is not None:
                self._set_momentum(group, momentum)
        return lrs
