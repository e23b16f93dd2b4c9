"""Stochastic gradient descent (``torch.optim.SGD``), step for step.

On the GPU all parameters of a group step in one multi-tensor kernel launch (:mod:`.optim_cuda`)
with the same arithmetic; elsewhere the element-wise code below.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend, threads
from .._checks import check_bool
from . import optim_cuda
from .optimizer import Optimizer, _number

__all__ = ["SGD"]

# NumPy parameters of at least this many values update block by block over the thread pool.
BLOCKWISE_MIN_SIZE = 1 << 16


def _blockwise(*arrays) -> bool:
    """C-contiguous NumPy arrays (None skipped) of one shape and dtype, large enough to share out."""
    given = [a for a in arrays if a is not None]
    first = given[0]
    return (
        first.size >= BLOCKWISE_MIN_SIZE
        and all(type(a) is np.ndarray and a.flags.c_contiguous for a in given)
        and all(a.dtype == first.dtype and a.shape == first.shape for a in given)
    )


def _step(p, grad, buf, group, first_step: bool = False):
    """One update of ``p`` in place (``torch.optim.SGD``'s arithmetic); returns the momentum buffer.

    ``buf`` is None on the first step with momentum (a new buffer is made), or, with
    ``first_step``, a given array that the buffer's first value is written into.
    """
    momentum, wd = group["momentum"], group["weight_decay"]
    if wd != 0:
        grad = grad + wd * p
    if momentum != 0:
        if buf is None:
            buf = grad.copy()
        elif first_step:
            buf[...] = grad
        else:
            buf *= momentum
            dampening = group["dampening"]
            buf += grad if dampening == 0 else (1 - dampening) * grad  # (1 - 0) * grad is grad
        grad = grad + momentum * buf if group["nesterov"] else buf
    p -= group["lr"] * grad
    return buf


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
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def _check_group(self, group):
        super()._check_group(group)
        for arg in ("momentum", "weight_decay"):
            group[arg] = _number(self._name, arg, group[arg])
        group["dampening"] = _number(self._name, "dampening", group["dampening"], low=-math.inf)
        group["nesterov"] = check_bool(self._name, "nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"{self._name}: Nesterov momentum requires momentum > 0 and zero dampening, got "
                f"momentum={group['momentum']}, dampening={group['dampening']}"
            )

    def _update(self, p, grad, state, group):
        momentum = group["momentum"]
        buf = state.get("momentum_buffer")
        first_step = momentum != 0 and buf is None
        if optim_cuda.can_fuse(p.data, grad, buf):
            if first_step:  # set to the (decayed) gradient by the kernel
                buf = backend.get_array_module(p.data).empty_like(p.data)
                state["momentum_buffer"] = buf
            self._fuse(group, first_step, (p.data, grad, buf if momentum != 0 else None), state)
            return
        if not _blockwise(p.data, grad, buf):
            buf = _step(p.data, grad, buf, group)
            if momentum != 0:
                state["momentum_buffer"] = buf
            return
        # Large NumPy arrays: the same operations on blocks of the flattened arrays, in parallel
        # (:mod:`gpulayers.threads`), each block's values staying in cache between them.
        if first_step:
            buf = state["momentum_buffer"] = np.empty_like(p.data)
        flat = [None if a is None else a.reshape(-1) for a in (p.data, grad, buf)]

        def block(start: int, stop: int) -> None:
            _step(*(None if a is None else a[start:stop] for a in flat), group, first_step)

        threads.run_blocks(block, flat[0].size, flat[0].itemsize)

    def _batch(self, group, key, tensors, state):
        return optim_cuda.sgd_batch(
            tensors,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            first_step=key,
        )
