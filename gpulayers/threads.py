"""The CPU path's thread pool: elementwise, pooling and normalisation passes split over the batch.

NumPy's ufuncs and reductions release the GIL, so a few Python threads that each run the same
NumPy calls on their own slice of the batch use several cores. The work is cut into blocks of
whole samples whose size depends only on the shapes (never on the thread count), and every
block is computed by the same calls whichever thread runs it, so one thread and N threads give
bitwise the same results.

**Block size.** A block should be small enough for the several passes an op makes over it to
stay in the core's cache, and large enough for each NumPy call to run long: a thread leaving a
ufunc must take the GIL back, and when the other thread holds it (between two of its calls) it
sleeps until it is handed over, and waking it costs more than a short call. Measured on a
2-core Xeon VM, blocks of 16 ``np.exp`` calls on 25,000 floats ran 1.4x faster on two threads
than on one, blocks of 2 calls on 250,000 floats 1.9x, and calls on 2,500 floats ran slower.
Blocks of up to 1 MiB per array (``BLOCK_BYTES``), and at least ``MIN_BLOCKS`` of them so that
both threads share even a small batch, made the reference training step about 1 ms faster than
half-MiB blocks.

The number of threads defaults to the size of NumPy's BLAS pool (``threadpoolctl`` when it is
installed, else ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, else the
CPUs this process may run on); the environment variable ``GPULAYERS_NUM_THREADS`` or
:func:`set_num_threads` overrides it.

**Python time counts twice.** While one thread runs Python, the other cannot take the GIL back
when its NumPy call ends, and on a virtual machine waking it again costs tens of microseconds
(a round trip through the pool measured 74 us here). Two threads each running a 32-sample
share of a convolution's backward took 5.5 ms against 4.4 ms for one alone, while two
processes lost nothing. So the ops keep their per-call Python small: scratch arrays with their
ready-made views are kept per thread between calls (:func:`cached`); with them, two threads lose
5% on that backward (see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import queue
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["get_num_threads", "set_num_threads", "batch_blocks", "run_blocks", "workspace", "cached", "clear_workspace"]

# Bytes of one array per block at most, and blocks per pass at least (when the batch has that
# many samples): see "Block size" in the module docstring.
BLOCK_BYTES = 1 << 20
MIN_BLOCKS = 4

_lock = threading.Lock()
_threads: int | None = None
_pool: _Workers | None = None


def _blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 - optional

        counts = [int(info["num_threads"]) for info in threadpool_info() if info.get("user_api") == "blas"]
        if counts:
            return max(counts)
    except Exception:  # noqa: BLE001 - threadpoolctl is optional and may fail to inspect a library
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _default_threads() -> int:
    value = os.environ.get("GPULAYERS_NUM_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"GPULAYERS_NUM_THREADS: expected a positive integer, got {value!r}")
        return int(value)
    return _blas_threads()


def get_num_threads() -> int:
    """Threads the CPU path splits its elementwise, pooling and normalisation passes over."""
    global _threads
    if _threads is None:
        with _lock:
            if _threads is None:
                _threads = _default_threads()
    return _threads


def set_num_threads(num_threads: int) -> None:
    """Set the CPU path's thread count (PyTorch's ``torch.set_num_threads``); 1 runs every pass inline.

    Results do not depend on it: they are bitwise the same for any thread count.

    Args:
        num_threads: a positive int.
    """
    global _threads, _pool
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {num_threads!r}")
    with _lock:
        old, _pool = _pool, None
        _threads = num_threads
    if old is not None:
        old.shutdown()


def _reset_after_fork() -> None:  # a forked child has the pool object but not its threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# -- BLAS threads inside the blocks -------------------------------------------------------------------

# The blocks of a pass run GEMMs on one thread each: the pool is the parallelism, so BLAS's own
# threads neither compete with it nor busy-wait on a core after every call. OpenBLAS (the BLAS of
# NumPy's wheels) has a per-thread setting for that; other BLAS libraries are left as they are.
_blas_local: tuple[Callable[[int], int], Callable[[], int]] | None | bool = False


def _find_blas_local() -> tuple[Callable[[int], int], Callable[[], int]] | None:
    """``(set_local, get)`` of the OpenBLAS loaded in this process, or None."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:  # not Linux
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already loaded: another handle to the same library
        except OSError:
            continue
        set_local = getattr(lib, "openblas_set_num_threads_local", None)
        getters = [getattr(lib, name, None) for name in _BLAS_GETTERS]
        get = next((fn for fn in getters if fn is not None), None)
        if set_local is not None and get is not None:
            set_local.argtypes, set_local.restype, get.restype = [ctypes.c_int], ctypes.c_int, ctypes.c_int
            return set_local, get
    return None


_BLAS_GETTERS = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_")


def _blas_controls() -> tuple[Callable[[int], int], Callable[[], int]] | None:
    global _blas_local
    if _blas_local is False:
        _blas_local = _find_blas_local()
    return _blas_local  # type: ignore[return-value]


def _single_blas_thread() -> None:
    """Pool threads: their BLAS calls run on themselves alone."""
    controls = _blas_controls()
    if controls is not None:
        controls[0](1)


class _Workers:
    """The pool: daemon threads that run the callables put on their queue, one at a time.

    Hand-overs go through ``queue.SimpleQueue`` (implemented in C) and list operations, which a
    Ctrl-C cannot interrupt halfway: a ``KeyboardInterrupt`` raised inside a Python-level lock's
    ``with`` (``concurrent.futures`` submits through a ``threading.Semaphore``) can leave the lock
    held, and a worker then blocks on it forever, and with it the interpreter's exit. Daemon threads
    are not joined at exit either, so a worker still finishing a block never holds the exit up.
    """

    def __init__(self, count: int) -> None:
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._serve, name=f"gpulayers-cpu_{k}", daemon=True) for k in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def _serve(self) -> None:
        _single_blas_thread()
        while True:
            task = self.tasks.get()
            if task is None:
                return
            task()

    def shutdown(self) -> None:
        for _ in self.threads:
            self.tasks.put(None)
        for thread in self.threads:
            thread.join()


def _executor(workers: int) -> _Workers:
    global _pool
    with _lock:
        if _pool is None:
            _pool = _Workers(workers)
        return _pool


def batch_blocks(n: int, bytes_per_sample: int, block_bytes: int | None = None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)``: blocks of whole samples of at most ``block_bytes``
    (``BLOCK_BYTES`` by default, and then at least ``MIN_BLOCKS`` blocks when ``n`` allows), as
    few as that allows and as even as possible."""
    per_block = max(1, (BLOCK_BYTES if block_bytes is None else int(block_bytes)) // max(int(bytes_per_sample), 1))
    if block_bytes is None:
        per_block = max(1, min(per_block, n // MIN_BLOCKS))
    count = -(-n // per_block) if n > 0 else 0
    return [(k * n // count, (k + 1) * n // count) for k in range(count)]


def _run(fn: Callable[[int, int], None], blocks: list[tuple[int, int]]) -> None:
    for start, stop in blocks:
        fn(start, stop)


def run_blocks(fn: Callable[[int, int], None], n: int, bytes_per_sample: int, block_bytes: int | None = None) -> None:
    """Call ``fn(start, stop)`` for every block of :func:`batch_blocks`, the blocks shared over the threads.

    ``fn`` must write only its own samples (reductions go to per-block or per-sample partial
    results that the caller combines afterwards in a fixed order). The calling thread takes blocks
    too (see :func:`_share`). With more than one block, BLAS calls inside ``fn`` run single-threaded (OpenBLAS),
    whatever the thread count, so a block's GEMMs give the same bits on any thread.
    """
    blocks = batch_blocks(n, bytes_per_sample, block_bytes)
    if len(blocks) <= 1 or threading.current_thread().name.startswith("gpulayers-cpu"):
        _run(fn, blocks)
        return
    workers = get_num_threads()  # first, while BLAS still reports its own thread count
    controls = _blas_controls()
    previous = controls[0](1) if controls is not None else 0
    try:
        _share(fn, blocks, workers)
    finally:
        if controls is not None:
            controls[0](0)  # back to the process-wide count ...
            if controls[1]() != previous:
                controls[0](previous)  # ... unless this thread had its own


def _share(fn: Callable[[int, int], None], blocks: list[tuple[int, int]], workers: int) -> None:
    """Every thread takes the next block not yet taken until none is left.

    A worker that wakes late takes fewer blocks (or none, and is then not waited for) instead of
    holding the caller up; which thread runs a block never changes what the block computes. After
    an error, or a ``KeyboardInterrupt`` in the calling thread, no thread takes a new block; a
    worker's error is raised in the calling thread once every worker that started has stopped.
    """
    threads = min(workers, len(blocks))
    if threads <= 1:
        _run(fn, blocks)
        return
    counter = itertools.count()  # next() on it is atomic under the GIL
    stop: list[BaseException | None] = []  # an error, or None for the caller's interruption
    # The pass's work, emptied when the pass is over: a task not yet started stays in the queue
    # until a worker wakes up, and must not keep the arrays that ``fn`` refers to alive.
    job: list[Any] = [fn, blocks]
    tickets = list(range(threads - 1))  # a worker joins in only if it takes one before the caller is done
    done: queue.SimpleQueue = queue.SimpleQueue()

    def take() -> None:
        work, parts = job if job else (None, ())
        k = next(counter)
        while k < len(parts) and not stop:
            work(*parts[k])
            k = next(counter)

    def task() -> None:
        try:
            tickets.pop()  # atomic under the GIL, as the caller's pops below
        except IndexError:  # the caller has finished without this worker
            return
        try:
            take()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            stop.append(exc)
        finally:
            done.put(None)

    pool = _executor(workers - 1)
    for _ in range(threads - 1):
        pool.tasks.put(task)
    try:
        take()
    except BaseException:
        stop.append(None)
        raise
    finally:
        try:
            started = threads - 1
            while True:
                try:
                    tickets.pop()
                except IndexError:
                    break
                started -= 1
            for _ in range(started):
                done.get()
        except BaseException:  # interrupted while waiting: let the workers stop after their block
            stop.append(None)
            raise
        finally:
            job.clear()
    errors = [exc for exc in stop if exc is not None]
    if errors:
        raise errors[0]


# -- reusable scratch arrays ---------------------------------------------------------------------------

# Per thread, one scratch buffer per (tag, dtype), grown to the largest size asked for: the large
# temporaries of the CPU ops (a convolution's columns and padded image) are reused from layer to
# layer and step to step instead of being allocated afresh, which costs a page fault per 4 KiB
# page on many systems.
_local = threading.local()


def workspace(tag: str, shape: tuple, dtype) -> np.ndarray:
    """A scratch array (contents undefined) for this thread; valid until the next call with the same tag.

    Only for temporaries that never leave the op that asked for them.
    """
    cache = getattr(_local, "arrays", None)
    if cache is None:
        cache = _local.arrays = {}
    shape = tuple(int(v) for v in shape)
    size = math.prod(shape)
    key = (tag, np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


# Bytes of scratch that :func:`cached` keeps per thread at most (least recently used first out).
CACHE_BYTES = 64 << 20


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """This thread's scratch for ``key``: ``build()`` the first time, the same object afterwards.

    For an op's scratch arrays together with the views into them that cost Python time to set up
    (the object has an ``nbytes`` attribute: the memory it holds). Unlike :func:`workspace`, the
    arrays belong to the entry alone, so what was written into them once (zero padding) stays.
    A thread keeps entries of ``CACHE_BYTES`` in all at most, dropping the least recently used
    first; an entry larger than that on its own is built afresh for every call and not kept.
    """
    cache = getattr(_local, "cached", None)
    if cache is None:
        cache = _local.cached = OrderedDict()
    entry = cache.get(key)
    if entry is not None:
        cache.move_to_end(key)
        return entry
    entry = build()
    if entry.nbytes > CACHE_BYTES:
        return entry
    cache[key] = entry
    total = sum(e.nbytes for e in cache.values())
    while total > CACHE_BYTES:
        total -= cache.popitem(last=False)[1].nbytes
    return entry


def tune_allocator() -> bool:
    """Keep freed memory of up to 32 MiB blocks in the process heap (glibc only); True when applied.

    glibc returns large freed blocks to the system at once (``mmap`` threshold, heap trimming), so
    the next activation of the same size is faulted in page by page again: on virtual machines that
    costs more than the arithmetic of a ReLU. Called once at import; the environment variable
    ``GPULAYERS_MALLOC_TUNING=0`` turns it off, and so does any glibc ``MALLOC_*`` variable or
    ``glibc.malloc`` tunable in the environment (the user's settings apply unchanged).
    """
    if os.environ.get("GPULAYERS_MALLOC_TUNING", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    if any(name.startswith("MALLOC_") for name in os.environ) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user tunes glibc's allocator themselves
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD) and mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD))


MALLOC_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value
MALLOC_TRIM_THRESHOLD = 256 << 20


def clear_workspace() -> None:
    """Drop this thread's scratch arrays (those of :func:`workspace` and :func:`cached`)."""
    _local.arrays = {}
    _local.cached = OrderedDict()
