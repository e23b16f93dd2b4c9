"""Adam and AdamW (``torch.optim.Adam``, ``torch.optim.AdamW``), step for step.

On the GPU all parameters of a group step in one multi-tensor kernel launch (:mod:`.optim_cuda`)
with the same arithmetic; elsewhere the element-wise code below.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .._checks import check_bool
from . import optim_cuda
from .optimizer import Optimizer, _number, with_defaults

__all__ = ["Adam", "AdamW"]


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
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)

    def _check_group(self, group):
        super()._check_group(group)
        group["amsgrad"] = check_bool(self._name, "amsgrad", group["amsgrad"])
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
        if group["amsgrad"] and "max_exp_avg_sq" not in state:  # amsgrad switched on after a step
            state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        max_exp_avg_sq = state["max_exp_avg_sq"] if group["amsgrad"] else None
        if optim_cuda.can_fuse(p.data, grad, state["exp_avg"], state["exp_avg_sq"], max_exp_avg_sq):
            second = state["exp_avg_sq"] if max_exp_avg_sq is None else max_exp_avg_sq  # unused without AMSGrad
            self._fuse(group, step, (p.data, grad, state["exp_avg"], state["exp_avg_sq"], second), state)
            return
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
        if max_exp_avg_sq is not None:
            xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second = max_exp_avg_sq
        denom = xp.sqrt(second) / bias_correction2_sqrt + eps
        p.data += (-step_size * exp_avg) / denom

    def _advance(self, state):
        state["step"] += 1

    def _batch(self, group, key, tensors, state):
        """One launch for the parameters of ``group`` at the same step count."""
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        step, dtype = state["step"], tensors[0][0].dtype
        weight = 1 - beta1  # the lerp weight, in torch's two forms for small and large weights
        values = (1 - lr * wd, -(lr / (1 - beta1**step)), (1 - beta2**step) ** 0.5)
        args = (
            optim_cuda.scalar(dtype, wd),
            optim_cuda.scalar(dtype, weight),
            optim_cuda.scalar(dtype, 1 - weight),
            optim_cuda.scalar(dtype, beta2),
            optim_cuda.scalar(dtype, 1 - beta2),
            optim_cuda.scalar(dtype, eps),
            np.int32(0 if wd == 0 else (2 if self._decoupled else 1)),
            np.int32(abs(weight) < 0.5),
            np.int32(group["amsgrad"]),
        )
        return optim_cuda.Batch("adam_multi_update_kernel", tensors, values, args)


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
    __init__ = with_defaults(Adam.__init__, weight_decay=1e-2)
