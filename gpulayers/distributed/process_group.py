"""The process group and its collectives: MPI (mpi4py) for every array, NCCL (CuPy) for GPU arrays.

One process per rank, started by an MPI launcher (``mpiexec -n K python ...``, ``srun``). Under
plain ``python`` the world is one process: :func:`init_process_group` works without a launcher
(and without mpi4py), every collective leaves its array as it is, and code written for K ranks
runs unchanged.

Backends:
    - ``"mpi"``: mpi4py's ``Allreduce``/``Bcast`` on host buffers. CuPy arrays are copied to the
      host and back ("host staging"; said once on rank 0).
    - ``"nccl"``: CuPy's NCCL binding (``cupy.cuda.nccl``) for CuPy arrays, on the current stream;
      MPI hands out the NCCL unique id and still carries NumPy arrays and Python objects. Each
      rank uses GPU ``local_rank % device_count``.
    - ``"auto"``: ``"nccl"`` when a CUDA device is usable and CuPy has NCCL, else ``"mpi"``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from .. import backend

__all__ = [
    "ReduceOp",
    "init_process_group",
    "destroy_process_group",
    "is_initialized",
    "is_mpi_available",
    "is_nccl_available",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "get_backend",
    "barrier",
    "all_reduce",
    "broadcast",
    "all_gather_object",
    "abort",
]

#: Environment variables with the world size / local rank, as launchers set them.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_LOCAL_RANK_VARS = (
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MV2_COMM_WORLD_LOCAL_RANK",
    "SLURM_LOCALID",
    "LOCAL_RANK",
)


class ReduceOp:
    """Reduction names accepted by :func:`all_reduce` (PyTorch's ``ReduceOp`` spelled as strings)."""

    SUM = "sum"
    AVG = "mean"
    MAX = "max"


_OPS = ("sum", "mean", "max")


class _SelfComm:
    """The one-process world without mpi4py: every collective is the identity."""

    rank, size = 0, 1

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def Barrier(self) -> None:  # noqa: N802
        return None

    def allgather(self, obj: Any) -> list:
        return [obj]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def Abort(self, code: int = 1) -> None:  # noqa: N802
        sys.stderr.flush()
        os._exit(code)


class _Group:
    """The state of the default process group."""

    def __init__(self, backend_name: str, comm: Any, mpi: Any, local_rank: int, nccl_comm: Any = None):
        self.backend = backend_name
        self.comm = comm
        self.mpi = mpi  # the mpi4py.MPI module, or None
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self.local_rank = local_rank
        self.nccl = nccl_comm
        self.staging_said = False


_group: _Group | None = None


# ------------------------------------------------------------------------------------------------
# Availability
# ------------------------------------------------------------------------------------------------
def _import_mpi():
    try:
        from mpi4py import MPI  # noqa: PLC0415
    except ImportError:
        return None
    return MPI


def _launcher_size() -> int | None:
    """The world size a launcher announced in the environment, or None under plain python."""
    for var in _SIZE_VARS:
        text = os.environ.get(var, "").strip()
        if text.isdigit():
            return int(text)
    return None


def is_mpi_available() -> bool:
    """True when mpi4py imports (``pip install mpi4py mpich`` gives it and ``mpiexec``)."""
    return _import_mpi() is not None


def _nccl_module():
    if not backend.cuda_is_available():
        return None
    try:
        from cupy.cuda import nccl  # noqa: PLC0415
    except Exception:
        return None
    return nccl if getattr(nccl, "available", False) else None


def is_nccl_available() -> bool:
    """True when a CUDA device is usable and CuPy was built with (or found) NCCL."""
    return _nccl_module() is not None


# ------------------------------------------------------------------------------------------------
# The group
# ------------------------------------------------------------------------------------------------
def init_process_group(backend: str = "auto", *, abort_on_exception: bool = True) -> None:
    """Join the processes of this job into the default process group.

    Args:
        backend: ``"auto"``, ``"mpi"`` or ``"nccl"`` (see the module docstring). ``"auto"`` falls
            back to MPI with host staging when NCCL is missing on a CUDA machine (said once).
        abort_on_exception: with more than one rank, an uncaught exception on any rank prints its
            traceback and aborts the whole job (``MPI_Abort``) instead of leaving the other ranks
            waiting in a collective forever.

    Raises:
        RuntimeError: called twice, a launcher started several processes but mpi4py is missing,
            or ``"nccl"`` was asked for without a usable GPU and NCCL.
        ValueError: an unknown backend.
    """
    global _group
    if _group is not None:
        raise RuntimeError("init_process_group: the default process group is already initialized")
    if not isinstance(backend, str) or backend.lower() not in ("auto", "mpi", "nccl"):
        raise ValueError(f"init_process_group: expected backend 'auto', 'mpi' or 'nccl', got {backend!r}")
    wanted = backend.lower()
    mpi = _import_mpi()
    if mpi is None:
        size = _launcher_size()
        if size is not None and size > 1:
            raise RuntimeError(
                f"init_process_group: the launcher started {size} processes but mpi4py is not installed "
                '(pip install mpi4py mpich, or pip install "gpulayers[test]")'
            )
        comm: Any = _SelfComm()
    else:
        comm = mpi.COMM_WORLD
    local_rank = _local_rank(comm, mpi)
    nccl = _nccl_module() if wanted in ("auto", "nccl") else None
    if wanted == "nccl" and nccl is None:
        reason = _nccl_reason()
        raise RuntimeError(f"init_process_group: backend 'nccl' needs a CUDA device and CuPy's NCCL ({reason})")
    if nccl is not None:
        group = _Group("nccl", comm, mpi, local_rank, _nccl_communicator(nccl, comm, local_rank))
    else:
        group = _Group("mpi", comm, mpi, local_rank)
    _group = group
    if abort_on_exception and group.size > 1:
        _install_abort_hook()


def _nccl_reason() -> str:
    """Why NCCL is not usable here, in words."""
    if not backend.cuda_is_available():
        return f"CUDA not usable: {backend.cuda_unavailable_reason()}"
    try:
        from cupy.cuda import nccl  # noqa: PLC0415
    except Exception as exc:
        return f"cupy.cuda.nccl failed to import ({type(exc).__name__}: {exc})"
    if not getattr(nccl, "available", False):
        return "CuPy found no NCCL library (pip install nvidia-nccl-cu13, or -cu12 for CUDA 12)"
    return "NCCL available"


def _local_rank(comm: Any, mpi: Any) -> int:
    """The rank among the processes of this node: MPI's shared-memory split, else the launcher's variables."""
    if mpi is not None:
        try:
            node = comm.Split_type(mpi.COMM_TYPE_SHARED)
            try:
                return int(node.Get_rank())
            finally:
                node.Free()
        except Exception:  # an MPI without MPI-3 shared-memory splitting
            pass
    for var in _LOCAL_RANK_VARS:
        text = os.environ.get(var, "").strip()
        if text.isdigit():
            return int(text)
    return 0


def _nccl_communicator(nccl: Any, comm: Any, local_rank: int):
    """Pick GPU ``local_rank % device_count``, then build the NCCL communicator (rank 0's id via MPI)."""
    import cupy  # noqa: PLC0415

    count = cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(local_rank % count).use()
    uid = nccl.get_unique_id() if comm.Get_rank() == 0 else None
    uid = comm.bcast(uid, root=0)
    return nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())


def destroy_process_group() -> None:
    """Leave the default process group (MPI itself is finalised when the process exits)."""
    global _group
    group, _group = _group, None
    if group is not None and group.nccl is not None:
        group.nccl.destroy()


def is_initialized() -> bool:
    """True between :func:`init_process_group` and :func:`destroy_process_group`."""
    return _group is not None


def _require(name: str) -> _Group:
    if _group is None:
        raise RuntimeError(f"{name}: call gpulayers.distributed.init_process_group() first")
    return _group


def get_rank() -> int:
    """This process's rank in ``[0, world_size)``; 0 before :func:`init_process_group`."""
    return 0 if _group is None else _group.rank


def get_world_size() -> int:
    """The number of ranks; 1 before :func:`init_process_group`."""
    return 1 if _group is None else _group.size


def get_local_rank() -> int:
    """This process's rank among the ranks of its node (picks the GPU); 0 before initialisation."""
    return 0 if _group is None else _group.local_rank


def get_backend() -> str:
    """``"mpi"`` or ``"nccl"``."""
    return _require("get_backend").backend


def barrier() -> None:
    """Wait until every rank gets here (pending GPU work of this rank finishes first)."""
    group = _require("barrier")
    if group.nccl is not None:
        import cupy  # noqa: PLC0415

        cupy.cuda.get_current_stream().synchronize()
    group.comm.Barrier()


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order (PyTorch returns it through an output list)."""
    return _require("all_gather_object").comm.allgather(obj)


def abort(message: str, code: int = 1) -> None:
    """Print ``message`` on stderr and end every rank of the job (``MPI_Abort``)."""
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    group = _group
    if group is not None and group.size > 1:
        time.sleep(1.0)  # let the launcher forward this rank's output before it tears the job down
        group.comm.Abort(code)
    os._exit(code)


def _install_abort_hook() -> None:
    previous = sys.excepthook
    if getattr(previous, "_gpulayers_abort", False):
        return

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        group = _group
        if group is None or group.size < 2 or issubclass(exc_type, KeyboardInterrupt):
            return
        abort(
            f"gpulayers.distributed: rank {group.rank} of {group.size} failed with {exc_type.__name__}: {exc}; "
            "aborting every rank",
            1,
        )

    hook._gpulayers_abort = True  # type: ignore[attr-defined]
    sys.excepthook = hook


# ------------------------------------------------------------------------------------------------
# Collectives
# ------------------------------------------------------------------------------------------------
def _check_array(name: str, array: Any) -> None:
    if not (isinstance(array, np.ndarray) or backend.is_cuda_array(array)):
        raise TypeError(f"{name}: expected a NumPy or CuPy array (updated in place), got {type(array).__name__}")
    if np.dtype(array.dtype).kind not in "iuf":
        raise TypeError(f"{name}: expected an integer or floating array, got dtype {array.dtype}")


def _say_staging(group: _Group) -> None:
    if not group.staging_said:
        group.staging_said = True
        if group.rank == 0:
            print(
                f"gpulayers.distributed: CuPy arrays travel through the host with MPI ({_nccl_reason()})",
                file=sys.stderr,
                flush=True,
            )


def all_reduce(array: Any, op: str = "sum") -> None:
    """Reduce ``array`` across ranks, in place: every rank ends with the result.

    Args:
        array: a NumPy or CuPy array of an integer or floating dtype, the same shape and dtype
            on every rank.
        op: ``"sum"``, ``"mean"`` (floating arrays only) or ``"max"``.
    """
    _check_array("all_reduce", array)
    if op not in _OPS:
        raise ValueError(f"all_reduce: expected op 'sum', 'mean' or 'max', got {op!r}")
    if op == "mean" and np.dtype(array.dtype).kind != "f":
        raise TypeError(f"all_reduce: op 'mean' needs a floating array, got dtype {array.dtype}")
    group = _require("all_reduce")
    _run_collective(
        group,
        array,
        lambda nccl, _nccl: _nccl.all_reduce(nccl, array, op, group.size),
        lambda host: _mpi_all_reduce(group, host, op),
    )


def _run_collective(group: _Group, array: Any, on_nccl, on_host) -> None:
    """NCCL for a CuPy array when the group has it (``on_nccl(communicator, _nccl module)``); else
    ``on_host`` on the NumPy array, or on a host copy of the CuPy array written back after (MPI)."""
    if backend.is_cuda_array(array) and group.nccl is not None:
        from . import _nccl  # noqa: PLC0415

        on_nccl(group.nccl, _nccl)
        return
    if group.size == 1:
        return
    if not backend.is_cuda_array(array):
        on_host(array)
        return
    _say_staging(group)
    host = array.get()
    on_host(host)
    _copy_back(array, host)


def _copy_back(array: Any, host: np.ndarray) -> None:
    """Write host values into a CuPy array (any layout), on the array's device."""
    with array.device:
        array[...] = backend.get_array_module(array).asarray(host)


def _mpi_all_reduce(group: _Group, array: np.ndarray, op: str) -> None:
    buf = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    work = buf.astype(np.float32) if buf.dtype == np.float16 else buf  # MPI has no half type
    mpi = group.mpi
    group.comm.Allreduce(mpi.IN_PLACE, work, op=mpi.MAX if op == "max" else mpi.SUM)
    if op == "mean":
        work /= group.size
    if work is not array:
        array[...] = work


def broadcast(array: Any, src: int = 0) -> None:
    """Overwrite ``array`` on every rank with rank ``src``'s, in place.

    Args:
        array: a NumPy or CuPy array, the same shape and dtype on every rank.
        src: the rank whose values are kept.
    """
    _check_array("broadcast", array)
    group = _require("broadcast")
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < group.size:
        raise ValueError(f"broadcast: expected src in [0, {group.size}), got {src!r}")
    _run_collective(
        group, array, lambda nccl, _nccl: _nccl.broadcast(nccl, array, int(src)), lambda host: _bcast(group, host, src)
    )


def _bcast(group: _Group, array: np.ndarray, src: int) -> None:
    buf = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    group.comm.Bcast(buf.reshape(-1).view(np.uint8), root=int(src))  # bytes: any dtype
    if buf is not array:
        array[...] = buf
