"""RMSprop (``torch.optim.RMSprop``), step for step.

On the GPU all parameters of a group step in one multi-tensor kernel launch (:mod:`.optim_cuda`)
with the same arithmetic; elsewhere the element-wise code below.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .._checks import check_bool
from . import optim_cuda
from .optimizer import Optimizer, _number

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e), as ``torch.optim.RMSprop``.

    Per step: ``g = grad + weight_decay * p``; ``v = alpha * v + (1 - alpha) * g * g``; with
    ``centered``, ``m = lerp(m, g, 1 - alpha)`` and ``avg = sqrt(v - m * m) + eps``, else
    ``avg = sqrt(v) + eps``; with momentum ``buf = momentum * buf + g / avg`` and ``p -= lr * buf``,
    else ``p -= lr * g / avg``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. Defaults to 0.01.
        alpha: smoothing constant of the squared-gradient average. Defaults to 0.99.
        eps: added to the denominator. Defaults to 1e-8.
        weight_decay: L2 penalty. Defaults to 0.
        momentum: momentum factor. Defaults to 0.
        centered: normalise by the estimated variance of the gradient instead of its second
            moment. Defaults to False.
    """

    _state_keys = frozenset({"step", "square_avg", "momentum_buffer", "grad_avg"})

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
    ) -> None:
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered)
        super().__init__(params, defaults)

    def _check_group(self, group):
        super()._check_group(group)
        group["alpha"] = _number(self._name, "alpha value", group["alpha"])
        group["eps"] = _number(self._name, "epsilon value eps", group["eps"])
        group["weight_decay"] = _number(self._name, "weight_decay value", group["weight_decay"])
        group["momentum"] = _number(self._name, "momentum value", group["momentum"])
        group["centered"] = check_bool(self._name, "centered", group["centered"])

    def _update(self, p, grad, state, group):
        xp = backend.get_array_module(p.data)
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        wd, momentum = group["weight_decay"], group["momentum"]
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(p.data)
        state["step"] += 1
        if momentum > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = xp.zeros_like(p.data)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = xp.zeros_like(p.data)
        square_avg, grad_avg, buf = state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer")
        if momentum <= 0:
            buf = None
        if not group["centered"]:
            grad_avg = None
        if optim_cuda.can_fuse(p.data, grad, square_avg, grad_avg, buf):
            unused = square_avg  # stands in for the state arrays the options leave untouched
            grad_avg = unused if grad_avg is None else grad_avg
            arrays = (p.data, grad, square_avg, grad_avg, unused if buf is None else buf)
            self._fuse(group, None, arrays, state)
            return
        if wd != 0:
            grad = grad + wd * p.data
        square_avg *= alpha
        square_avg += ((1 - alpha) * grad) * grad
        if group["centered"]:
            grad_avg = state["grad_avg"]
            weight = 1 - alpha  # torch's lerp, with its two forms for small and large weights
            if abs(weight) < 0.5:
                grad_avg += weight * (grad - grad_avg)
            else:
                grad_avg[...] = grad - (grad - grad_avg) * (1 - weight)
            avg = xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = xp.sqrt(square_avg)
        avg += eps
        if momentum > 0:
            buf = state["momentum_buffer"]
            buf *= momentum
            buf += grad / avg
            p.data += -lr * buf
        else:
            p.data += (-lr * grad) / avg

    def _advance(self, state):
        state["step"] += 1

    def _batch(self, group, key, tensors, state):
        alpha, dtype = group["alpha"], tensors[0][0].dtype
        weight = 1 - alpha  # the lerp weight of the centred average, in torch's two forms
        args = (
            optim_cuda.scalar(dtype, group["weight_decay"]),
            optim_cuda.scalar(dtype, alpha),
            optim_cuda.scalar(dtype, weight),
            optim_cuda.scalar(dtype, 1 - weight),
            optim_cuda.scalar(dtype, group["eps"]),
            optim_cuda.scalar(dtype, group["momentum"]),
            np.int32(group["weight_decay"] != 0),
            np.int32(group["centered"]),
            np.int32(abs(weight) < 0.5),
            np.int32(group["momentum"] > 0),
        )
        return optim_cuda.Batch("rmsprop_multi_update_kernel", tensors, (-group["lr"],), args)
