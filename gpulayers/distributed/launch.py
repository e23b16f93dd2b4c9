"""``python -m gpulayers.train --distributed``: the command line's training on every rank of an MPI job.

    mpiexec -n 2 python -m gpulayers.train --distributed --epochs 5

Every rank trains its share of each epoch (``--batch-size`` per rank, as in PyTorch) and evaluates
the whole test set with the same model; rank 0 alone prints, shows progress and writes the
checkpoint, the metrics and the plot; every rank resumes from the checkpoint. A GPU rank uses
``cuda:(local rank % device count)``. A rank that fails ends the whole job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable

from .. import backend
from . import process_group as pg

__all__ = ["run", "start"]


def start(requested: str) -> str:
    """Join the process group and return this rank's device (``"cpu"`` or ``"cuda:N"``).

    ``auto`` takes a GPU when one is usable (NCCL when CuPy has it, else MPI through the host),
    ``cpu`` uses MPI; ``cuda`` picks ``cuda:(local rank % device count)``, ``cuda:N`` is kept.
    """
    text = requested.strip().lower()
    kind, index = (
        ("cuda" if backend.cuda_is_available() else "cpu", -1) if text == "auto" else backend.parse_device(text)
    )
    if kind == "cuda" and not backend.cuda_is_available():
        raise RuntimeError(f"--device {requested}: CUDA is not usable: {backend.cuda_unavailable_reason()}")
    pg.init_process_group("auto" if kind == "cuda" else "mpi")
    if kind == "cpu":
        return "cpu"
    if index >= 0:
        return f"cuda:{index}"
    import cupy  # noqa: PLC0415

    return f"cuda:{pg.get_local_rank() % cupy.cuda.runtime.getDeviceCount()}"


def run(train: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``train(args)`` (the command line's training) on this rank; returns its exit code.

    On ranks other than 0, standard output is silenced and progress, metrics and plot are off.
    A non-zero exit code on any rank ends every rank of the job (``MPI_Abort``).
    """
    try:
        args.device = start(args.device)
    except (RuntimeError, ValueError) as exc:
        print(f"error: --distributed: {exc}", file=sys.stderr)
        return 2
    rank, world = pg.get_rank(), pg.get_world_size()
    if rank == 0:
        print(
            f"distributed: {world} rank(s), {pg.get_backend()} backend; batch {args.batch_size} per rank, "
            f"{args.batch_size * world} per step in all",
            flush=True,
        )
        quiet: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        args.no_progress, args.metrics_json, args.plot = True, None, None
        quiet = contextlib.redirect_stdout(open(os.devnull, "w"))  # noqa: SIM115 - closed at exit
    with quiet:
        code = train(args)
    if code != 0 and world > 1:
        pg.abort(f"gpulayers.train: rank {rank} of {world} stopped with exit code {code}; ending every rank", code)
    return code
