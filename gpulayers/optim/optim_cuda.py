"""The optimisers' fused GPU steps: the launchers of ``cuda_kernels/optim.cu``.

On the GPU, :class:`~gpulayers.optim.SGD`, :class:`~gpulayers.optim.Adam` and
:class:`~gpulayers.optim.AdamW` update each parameter with one kernel launch instead of the
6 to 12 element-wise CuPy launches of their NumPy code (launch overhead dominates a small
model's step). The kernels repeat that code operation for operation: the scalars it derives
in double on the host (``1 - dampening``, ``lr / (1 - beta1**t)``, ...) are derived here the
same way and passed rounded to the parameter's dtype, as NumPy rounds a Python float to an
array's dtype. The state stays in the same arrays under the same keys, so state dicts and
checkpoints do not depend on the path taken.

:func:`can_fuse` decides per parameter: a C-contiguous float32/float64 CuPy parameter whose
gradient and state buffers are arrays of its type, dtype, shape and device, all C-contiguous
(kernels ignore strides). Anything else (NumPy arrays, float16, strided views, a float64
gradient for a float32 parameter, state left on another device) takes the NumPy code, with
its results and errors unchanged.

Written against the arrays' module, so the same launchers run on NumPy arrays when
:func:`gpulayers.kernels.get_function` is replaced by the CPU emulation of the kernels
(``tests/kernel_harness``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend, kernels

__all__ = ["MULTI_TENSORS", "adam_update", "can_fuse", "fusable", "sgd_multi_update", "sgd_update"]

_FILE = "optim.cu"

#: Parameters one multi-tensor launch updates (MULTI_TENSORS in the kernel file).
MULTI_TENSORS = 16


def fusable(param: Any, *arrays: Any) -> bool:
    """True when the kernels can update ``param`` in place with ``arrays`` (gradient and state).

    ``param`` must be C-contiguous with a kernel dtype (float32/float64); each of ``arrays``
    that is not None must be C-contiguous of the same type, dtype, shape and device.
    """
    if np.dtype(param.dtype).name not in kernels.KERNEL_DTYPES or not param.flags.c_contiguous:
        return False
    return all(
        a is None
        or (
            type(a) is type(param)
            and a.dtype == param.dtype
            and a.shape == param.shape
            and a.flags.c_contiguous
            and a.device == param.device
        )
        for a in arrays
    )


def can_fuse(param: Any, *arrays: Any) -> bool:
    """True for a CuPy ``param`` that :func:`fusable` accepts with ``arrays``: take the fused step."""
    return backend.is_cuda_array(param) and fusable(param, *arrays)


def _scalar(dtype: Any, value: float):
    """``value`` rounded to the kernel's ``T`` (np.float32 or np.float64), as NumPy rounds a Python float."""
    return np.dtype(dtype).type(value)


def sgd_update(
    param: Any,
    grad: Any,
    momentum_buffer: Any | None,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    first_step: bool,
) -> None:
    """One SGD step of ``param`` in place (``sgd_update_kernel``).

    Args:
        param: the parameter's data (updated in place).
        grad: its gradient, read only.
        momentum_buffer: the momentum buffer (written in place; on the first step its old
            contents are ignored), or None when ``momentum`` is 0.
        lr, weight_decay, momentum, dampening, nesterov: the group's options.
        first_step: the buffer is new: set it to the gradient instead of decaying it.
    """
    dtype, n = param.dtype, int(param.size)
    if momentum != 0 and momentum_buffer is None:
        raise ValueError("SGD: a momentum buffer is needed when momentum is not 0")
    args = (
        param,
        grad,
        param if momentum_buffer is None else momentum_buffer,  # never touched without momentum
        np.int64(n),
        _scalar(dtype, lr),
        _scalar(dtype, weight_decay),
        _scalar(dtype, momentum),
        _scalar(dtype, 1 - dampening),
        np.int32(weight_decay != 0),
        np.int32(momentum != 0),
        np.int32(bool(nesterov)),
        np.int32(bool(first_step)),
    )
    with backend.device_scope(param):
        kernels.launch(_FILE, "sgd_update_kernel", dtype, n, args)


def _address(a: Any) -> np.int64:
    """The array's data address as the kernel's 64-bit integer (device pointer; host on the harness)."""
    return np.int64(a.data.ptr if backend.is_cuda_array(a) else a.ctypes.data)


def sgd_multi_update(
    tensors: list[tuple[Any, Any, Any]],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    first_step: bool,
) -> None:
    """:func:`sgd_update` of many ``(param, grad, momentum_buffer)`` triples of one group, dtype and
    device, :data:`MULTI_TENSORS` per launch (``sgd_multi_update_kernel``), with the same arithmetic.

    Every triple must pass :func:`fusable`; ``momentum_buffer`` is None when ``momentum`` is 0.
    """
    if not tensors:
        return
    dtype = tensors[0][0].dtype
    if momentum != 0 and any(buf is None for _, _, buf in tensors):
        raise ValueError("SGD: a momentum buffer is needed when momentum is not 0")
    scalars = (
        _scalar(dtype, lr),
        _scalar(dtype, weight_decay),
        _scalar(dtype, momentum),
        _scalar(dtype, 1 - dampening),
        np.int32(weight_decay != 0),
        np.int32(momentum != 0),
        np.int32(bool(nesterov)),
        np.int32(bool(first_step)),
    )
    with backend.device_scope(tensors[0][0]):
        for start in range(0, len(tensors), MULTI_TENSORS):
            chunk = tensors[start : start + MULTI_TENSORS]
            pad = [np.int64(0)] * (MULTI_TENSORS - len(chunk))
            params = [_address(p) for p, _, _ in chunk] + pad
            grads = [_address(g) for _, g, _ in chunk] + pad
            bufs = [_address(p if b is None else b) for p, _, b in chunk] + pad  # unused without momentum
            sizes = [np.int64(p.size) for p, _, _ in chunk] + pad
            total = int(sum(int(n) for n in sizes))
            args = (*params, *grads, *bufs, *sizes, np.int32(len(chunk)), np.int64(total), *scalars)
            kernels.launch(_FILE, "sgd_multi_update_kernel", dtype, total, args)


def adam_update(
    param: Any,
    grad: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    max_exp_avg_sq: Any | None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    """One Adam (``decoupled=False``) or AdamW step of ``param`` in place (``adam_update_kernel``).

    Args:
        param: the parameter's data (updated in place).
        grad: its gradient, read only.
        exp_avg, exp_avg_sq: the running averages (updated in place).
        max_exp_avg_sq: the running maximum of ``exp_avg_sq`` for AMSGrad (updated in place),
            or None without AMSGrad.
        step: the step number ``t`` of this update (1 on the first).
        lr, beta1, beta2, eps, weight_decay: the group's options.
        decoupled: AdamW's decay ``param *= 1 - lr * weight_decay`` instead of Adam's L2 term.
    """
    dtype, n = param.dtype, int(param.size)
    weight = 1 - beta1  # the lerp weight, in torch's two forms for small and large weights
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    mode = 0 if weight_decay == 0 else (2 if decoupled else 1)
    args = (
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        exp_avg_sq if max_exp_avg_sq is None else max_exp_avg_sq,  # never touched without AMSGrad
        np.int64(n),
        _scalar(dtype, weight_decay),
        _scalar(dtype, 1 - lr * weight_decay),
        _scalar(dtype, weight),
        _scalar(dtype, 1 - weight),
        _scalar(dtype, beta2),
        _scalar(dtype, 1 - beta2),
        _scalar(dtype, -step_size),
        _scalar(dtype, bias_correction2**0.5),
        _scalar(dtype, eps),
        np.int32(mode),
        np.int32(abs(weight) < 0.5),
        np.int32(max_exp_avg_sq is not None),
    )
    with backend.device_scope(param):
        kernels.launch(_FILE, "adam_update_kernel", dtype, n, args)
