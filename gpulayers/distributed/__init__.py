"""Data-parallel training over several processes: MPI on the CPU, NCCL on NVIDIA GPUs.

    mpiexec -n 2 python -m gpulayers.train --distributed

    import gpulayers.distributed as dist
    dist.init_process_group()              # world size 1 under plain python
    model = dist.DistributedDataParallel(model)
    sampler = gl.data.DistributedSampler(train_set, seed=0)
    loader = gl.data.DataLoader(train_set, 32, sampler=sampler)

PyTorch's names: :func:`init_process_group`, :func:`get_rank`, :func:`get_world_size`,
:func:`all_reduce`, :func:`broadcast`, :class:`DistributedDataParallel`.
"""

from .ddp import DistributedDataParallel
from .process_group import (
    ReduceOp,
    abort,
    all_gather_object,
    all_reduce,
    barrier,
    broadcast,
    destroy_process_group,
    get_backend,
    get_local_rank,
    get_rank,
    get_world_size,
    init_process_group,
    is_initialized,
    is_mpi_available,
    is_nccl_available,
)
from .sampler import DistributedSampler

__all__ = [
    "DistributedDataParallel",
    "DistributedSampler",
    "ReduceOp",
    "abort",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast",
    "destroy_process_group",
    "get_backend",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_initialized",
    "is_mpi_available",
    "is_nccl_available",
]
