"""CUDA-event timing shared by the GPU benchmarks (imported by the scripts beside it)."""

from __future__ import annotations

import json
import statistics
import sys
import time


def events(library: str):
    """``(make_event, elapsed_ms)`` for ``"cupy"`` or ``"torch"`` CUDA events."""
    if library == "cupy":
        import cupy

        return cupy.cuda.Event, cupy.cuda.get_elapsed_time
    import torch

    return (lambda: torch.cuda.Event(enable_timing=True)), (lambda a, b: a.elapsed_time(b))


def median_ms(fn, repeat: int, warmup: int, library: str) -> tuple[float, float]:
    """``(GPU ms, host ms)``: medians over ``repeat`` calls of ``fn`` after ``warmup`` untimed ones.

    The GPU time runs from an event recorded before the call to one recorded after it; the host
    time is how long the call itself took (it returns before the GPU finishes).
    """
    make, elapsed = events(library)
    for _ in range(warmup):
        fn()
    gpu, host = [], []
    for _ in range(repeat):
        start, end = make(), make()
        start.record()
        t0 = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t0) * 1e3)
        end.record()
        end.synchronize()
        gpu.append(elapsed(start, end))
    return statistics.median(gpu), statistics.median(host)


def require_gpu(script: str, tf32: bool = False):
    """``(gl, cupy, torch)`` with a usable CUDA device in both libraries and TF32 set to ``tf32``
    in PyTorch; exits with a clear message otherwise."""
    import gpulayers as gl

    if not gl.cuda_is_available():
        sys.exit(f"{script}: no usable CUDA device, nothing to measure ({gl.backend.cuda_unavailable_reason()})")
    try:
        import torch
    except ImportError:
        sys.exit(f"{script}: PyTorch is not installed (it is the reference every number is compared with)")
    if not torch.cuda.is_available():
        sys.exit(f"{script}: PyTorch cannot use CUDA here (a CPU-only build?); the comparison needs it")
    import cupy

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    return gl, cupy, torch


def finish(results, json_path: str | None) -> int:
    """Write ``results`` to ``json_path`` (when given) and return the script's exit status (0)."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
    return 0
