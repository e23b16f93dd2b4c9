"""CUDA-event timing shared by the GPU benchmarks (imported by the scripts beside it)."""

from __future__ import annotations

import statistics
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
