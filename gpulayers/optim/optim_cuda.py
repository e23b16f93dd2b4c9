"""The optimisers' fused GPU steps: the launchers of ``cuda_kernels/optim.cu``.

On the GPU, :class:`~gpulayers.optim.SGD`, :class:`~gpulayers.optim.Adam`,
:class:`~gpulayers.optim.AdamW` and :class:`~gpulayers.optim.RMSprop` update all their
parameters with one multi-tensor kernel launch per step (per parameter group, dtype and device;
Adam's parameters also by step count) instead of 6 to 12 element-wise CuPy launches per
parameter. The kernels repeat the NumPy code operation for operation: the scalars it derives in
double on the host (``1 - dampening``, ``lr / (1 - beta1**t)``, ...) are derived here the same
way and passed rounded to the parameter's dtype, as NumPy rounds a Python float to an array's
dtype. The state stays in the same arrays under the same keys, so state dicts and checkpoints do
not depend on the path taken.

Each launch reads a table (layout in the kernel file): the addresses of its tensors' arrays, their
start offsets, and the per-step scalars (learning rate, Adam's bias corrections). The tables of
one step live in one persistent device array per device and dtype, refreshed by one asynchronous
host-to-device copy per step (:func:`multi_update`, :func:`upload`): a captured CUDA graph
therefore replays with the current learning rate and step count once :func:`upload` has run.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend, kernels

__all__ = ["ROLES", "Batch", "can_fuse", "fusable", "multi_update", "scalar", "sgd_multi_update", "upload"]

_FILE = "optim.cu"

#: Arrays per tensor in each kernel's table: param, grad, then the state arrays.
ROLES = {"sgd_multi_update_kernel": 3, "adam_multi_update_kernel": 5, "rmsprop_multi_update_kernel": 5}


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


def scalar(dtype: Any, value: float):
    """``value`` rounded to the kernel's ``T`` (np.float32 or np.float64), as NumPy rounds a Python float."""
    return np.dtype(dtype).type(value)


@dataclass
class Batch:
    """One launch: ``kernel`` over ``tensors`` (tuples of ``ROLES[kernel]`` arrays of one dtype and
    device; an unused state array may be any of them), with the per-step ``values`` (Python floats,
    read by the kernel from device memory) and the constant kernel ``args`` after the table's."""

    kernel: str
    tensors: list[tuple[Any, ...]]
    values: tuple[float, ...] = ()
    args: tuple = ()

    @property
    def total(self) -> int:
        return sum(int(t[0].size) for t in self.tensors)


def _address(a: Any) -> int:
    """The array's data address (device pointer; host on the harness)."""
    return int(a.data.ptr if backend.is_cuda_array(a) else a.ctypes.data)


def _words(batch: Batch, dtype: np.dtype) -> int:
    count = len(batch.tensors)
    return (ROLES[batch.kernel] + 1) * count + 1 + -(-len(batch.values) * dtype.itemsize // 8)


def _fill(host: np.ndarray, batch: Batch, dtype: np.dtype) -> None:
    """Write ``batch``'s table (addresses, starts, per-step scalars) into the int64 words ``host``."""
    count, roles = len(batch.tensors), ROLES[batch.kernel]
    for r in range(roles):
        host[r * count : (r + 1) * count] = [_address(t[r]) for t in batch.tensors]
    starts = np.cumsum([0] + [int(t[0].size) for t in batch.tensors])
    host[roles * count : (roles + 1) * count + 1] = starts
    if batch.values:
        scalars = host[(roles + 1) * count + 1 :].view(dtype)
        scalars[: len(batch.values)] = batch.values  # rounded to T as NumPy rounds a Python float


def _by_device(batches: list[Batch]) -> dict[tuple, list[Batch]]:
    groups: dict[tuple, list[Batch]] = {}
    for batch in batches:
        p = batch.tensors[0][0]
        groups.setdefault((str(p.device) if backend.is_cuda_array(p) else "cpu", p.dtype.name), []).append(batch)
    return groups


def _tables(batches: list[Batch], buffers: dict, key: tuple, copy: bool) -> list[Any]:
    """The batches' tables as views of one persistent int64 array (``buffers[key]``, made or resized
    as needed), filled by one host-to-device copy when ``copy``."""
    param = batches[0].tensors[0][0]
    dtype = np.dtype(param.dtype)
    sizes = [_words(b, dtype) for b in batches]
    host = np.zeros(sum(sizes), np.int64)
    starts = np.cumsum([0] + sizes)
    for batch, start, end in zip(batches, starts[:-1], starts[1:], strict=True):
        _fill(host[start:end], batch, dtype)
    table = buffers.get(key)
    if table is None or table.shape != host.shape:
        table = backend.get_array_module(param).empty(host.shape, np.int64)
        buffers[key] = table
    if copy:
        if backend.is_cuda_array(table):  # asynchronous: the stream orders it before the launches
            table.set(host, stream=backend.get_array_module(table).cuda.get_current_stream())
        else:
            table[...] = host
    return [table[start:end] for start, end in zip(starts[:-1], starts[1:], strict=True)]


def upload(batches: list[Batch], buffers: dict) -> None:
    """Refresh the tables of ``batches`` (their addresses and per-step values) on the device: one
    asynchronous copy per device and dtype, no launch (what a CUDA graph replay needs)."""
    for key, group in _by_device(batches).items():
        with backend.device_scope(group[0].tensors[0][0]):
            _tables(group, buffers, key, copy=True)


def multi_update(batches: list[Batch], buffers: dict, *, copy: bool = True) -> None:
    """Launch every batch (one launch each) after writing their tables into ``buffers``' persistent
    device arrays; ``copy=False`` (under CUDA graph capture) leaves the copy to :func:`upload`."""
    for key, group in _by_device(batches).items():
        with backend.device_scope(group[0].tensors[0][0]):
            tables = _tables(group, buffers, key, copy)
            for batch, table in zip(group, tables, strict=True):
                total = batch.total
                if total:
                    args = (table, np.int32(len(batch.tensors)), np.int64(total), *batch.args)
                    kernels.launch(_FILE, batch.kernel, batch.tensors[0][0].dtype, total, args)


def sgd_batch(
    tensors: list[tuple[Any, Any, Any]],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    first_step: bool,
) -> Batch:
    """The SGD launch of ``(param, grad, momentum_buffer)`` triples of one group, dtype and device
    (``momentum_buffer`` None when ``momentum`` is 0; on a first step its contents are ignored)."""
    if momentum != 0 and any(buf is None for _, _, buf in tensors):
        raise ValueError("SGD: a momentum buffer is needed when momentum is not 0")
    dtype = tensors[0][0].dtype
    args = (
        scalar(dtype, weight_decay),
        scalar(dtype, momentum),
        scalar(dtype, 1 - dampening),
        np.int32(weight_decay != 0),
        np.int32(momentum != 0),
        np.int32(bool(nesterov)),
        np.int32(bool(first_step)),
    )
    triples = [(p, g, p if b is None else b) for p, g, b in tensors]  # the buffer is unused without momentum
    return Batch("sgd_multi_update_kernel", triples, (lr,), args)


def sgd_multi_update(tensors: list[tuple[Any, Any, Any]], buffers: dict | None = None, **options) -> None:
    """One SGD step of every ``(param, grad, momentum_buffer)`` triple in one launch (options as
    :func:`sgd_batch`); ``buffers`` keeps the device table between calls."""
    if tensors:
        multi_update([sgd_batch(tensors, **options)], {} if buffers is None else buffers)
