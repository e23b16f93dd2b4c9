"""Learning-rate schedulers (``torch.optim.lr_scheduler``): StepLR and CosineAnnealingLR.

PyTorch's recursive ("chainable") forms, so that the values agree with PyTorch's bit for bit,
epoch by epoch. A scheduler's ``state_dict()`` is flat like the optimiser's: numbers, and float64
arrays for per-group lists.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .optimizer import Optimizer, _number

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR"]


def _positive_int(name: str, arg: str, value: Any) -> int:
    """``value`` as an int >= 1, else a ValueError naming the scheduler."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected {arg} to be an int >= 1, got {value!r}")
    return int(value)


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
        self.step_size = _positive_int("StepLR", "step_size", step_size)
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
        self.T_max = _positive_int("CosineAnnealingLR", "T_max", T_max)
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
