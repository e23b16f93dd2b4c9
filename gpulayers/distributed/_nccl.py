"""NCCL collectives on CuPy arrays, through CuPy's binding ``cupy.cuda.nccl``.

The calls are enqueued on CuPy's current stream, so they order with the kernels around them and
need no host synchronisation. Non-contiguous arrays go through a contiguous copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["all_reduce", "broadcast", "nccl_dtype"]


def nccl_dtype(nccl: Any, dtype: Any) -> int:
    """The NCCL data type of a NumPy/CuPy dtype (TypeError naming the dtype when NCCL has none)."""
    table = {
        "int8": "NCCL_INT8",
        "uint8": "NCCL_UINT8",
        "int32": "NCCL_INT32",
        "uint32": "NCCL_UINT32",
        "int64": "NCCL_INT64",
        "uint64": "NCCL_UINT64",
        "float16": "NCCL_FLOAT16",
        "float32": "NCCL_FLOAT32",
        "float64": "NCCL_FLOAT64",
    }
    name = table.get(np.dtype(dtype).name)
    if name is None:
        raise TypeError(f"gpulayers.distributed (nccl): no NCCL type for dtype {np.dtype(dtype)}")
    return getattr(nccl, name)


def _contiguous(array: Any) -> Any:
    import cupy  # noqa: PLC0415

    return array if array.flags.c_contiguous else cupy.ascontiguousarray(array)


def all_reduce(comm: Any, array: Any, op: str, world_size: int) -> None:
    """``array`` summed ("sum", "mean") or maximised ("max") across ranks, in place."""
    import cupy  # noqa: PLC0415
    from cupy.cuda import nccl  # noqa: PLC0415

    with array.device:
        buf = _contiguous(array)
        stream = cupy.cuda.get_current_stream().ptr
        code = nccl.NCCL_MAX if op == "max" else nccl.NCCL_SUM
        comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, nccl_dtype(nccl, buf.dtype), code, stream)
        if op == "mean":
            buf /= world_size
        if buf is not array:
            array[...] = buf


def broadcast(comm: Any, array: Any, src: int) -> None:
    """``array`` overwritten with rank ``src``'s, in place."""
    import cupy  # noqa: PLC0415
    from cupy.cuda import nccl  # noqa: PLC0415

    with array.device:
        buf = _contiguous(array)
        stream = cupy.cuda.get_current_stream().ptr
        flat = buf.reshape(-1).view(cupy.uint8)  # bytes: every dtype travels
        comm.broadcast(flat.data.ptr, flat.data.ptr, flat.size, nccl.NCCL_UINT8, src, stream)
        if buf is not array:
            array[...] = buf
