"""The CuPy stand-in's cost counter and runtime: devices, streams, stream capture, graphs, memory pool.

Part of ``cupy_standin`` (the entry point, which documents what is counted); the arrays are in
``cupy_standin_arrays``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter as _Tally
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cupy_standin_arrays import ndarray

LAUNCHES = ("launch", "kernel", "cublas", "copy", "graph")  # what costs a launch on the GPU's stream
TRANSFERS = ("h2d", "d2h", "sync")


@dataclass(frozen=True)
class Event:
    phase: str
    kind: str
    name: str


@dataclass
class _Counter:
    phase: str = "other"
    events: list[Event] = field(default_factory=list)

    def add(self, kind: str, name: str) -> None:
        self.events.append(Event(self.phase, kind, name))

    def reset(self) -> None:
        self.events.clear()
        self.phase = "other"

    @contextlib.contextmanager
    def in_phase(self, phase: str):
        old, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = old

    def count(self, kinds=LAUNCHES, phase: str | None = None) -> int:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        return sum(1 for e in self.events if e.kind in kinds and (phase is None or e.phase == phase))

    def launches(self, phase: str | None = None) -> int:
        return self.count(LAUNCHES, phase)

    def syncs(self, phase: str | None = None) -> int:
        return self.count(("sync",), phase)

    def names(self, kinds=LAUNCHES, phase: str | None = None) -> _Tally:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        return _Tally(e.name for e in self.events if e.kind in kinds and (phase is None or e.phase == phase))


COUNTER = _Counter()


# ----------------------------------------------------------------------------------------------
# Devices and streams
# ----------------------------------------------------------------------------------------------
_current = [0]


class Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = _current[0] if device is None else int(device)
        self._saved: list[int] = []

    def __enter__(self):
        self._saved.append(_current[0])
        _current[0] = self.id
        return self

    def __exit__(self, *exc):
        _current[0] = self._saved.pop()
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def synchronize(self) -> None:
        COUNTER.add("sync", "Device.synchronize")

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Stream:
    """A stream; ``begin_capture`` / ``end_capture`` emulate CUDA stream capture.

    While a stream captures, the counter's phase is ``"capture"`` and what CuPy refuses under
    capture raises as CuPy does: host synchronisations (a CUDA runtime error), cuBLAS
    (``NotImplementedError``) and cuRAND draws. As on a GPU, the capture leaves the arrays that
    existed before it as they were (their contents are put back at ``end_capture``), and the
    returned :class:`Graph` counts one ``graph`` launch per replay and recomputes the captured
    work in place, in order (kernels and array operations, into the same buffers).
    """

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        self._saved: list = []
        self._phase = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self) -> None:
        _refuse_under_capture("cudaStreamSynchronize")
        COUNTER.add("sync", "Stream.synchronize")

    def begin_capture(self, mode=None) -> None:
        if _CAPTURING[0]:
            raise RuntimeError("cudaErrorIllegalState: the stream is already capturing")
        _CAPTURING[0] = True
        _RECORDING[0] = []
        live = [ref() for ref in list(_LIVE.values())]
        roots = {id(r): r for r in (_root(a._a) for a in live if a is not None) if r.flags.writeable}
        self._snapshot = [(r, r.copy()) for r in roots.values()]
        self._phase = COUNTER.phase
        COUNTER.phase = "capture"

    def is_capturing(self) -> bool:
        return _CAPTURING[0]

    def end_capture(self) -> Graph:
        if not _CAPTURING[0]:
            raise RuntimeError("cudaErrorIllegalState: the stream is not capturing")
        _CAPTURING[0] = False
        work, _RECORDING[0] = _RECORDING[0], None
        for root, saved in self._snapshot:
            root[...] = saved  # nothing ran during the capture
        self._snapshot = []
        COUNTER.phase = self._phase
        return Graph(work)


class Graph:
    def __init__(self, work=()) -> None:
        self._work = list(work)

    def launch(self, stream=None) -> None:
        COUNTER.add("graph", "Graph.launch")
        for again in self._work:
            again()


_CAPTURING = [False]
_RECORDING: list = [None]  # under capture: how to redo each captured operation
_LIVE: dict[int, weakref.ref] = {}  # every device array, for the capture's snapshot


def _track(arr: ndarray) -> None:
    key = id(arr)
    _LIVE[key] = weakref.ref(arr, lambda _ref: _LIVE.pop(key, None))


def _record(again) -> None:
    """Under capture: remember ``again()``, which redoes an operation in place, for each replay."""
    if _RECORDING[0] is not None:
        _RECORDING[0].append(again)


def _refuse_under_capture(what: str, error=RuntimeError) -> None:
    if _CAPTURING[0]:
        if error is RuntimeError:
            raise RuntimeError(f"cudaErrorStreamCaptureUnsupported: {what} during stream capture")
        raise error(f"{what} is not supported during stream capture")


class MemoryPool:
    def __init__(self, allocator=None) -> None:
        self.allocated = 0

    def malloc(self, size: int):
        self.allocated += size
        return None

    def used_bytes(self) -> int:
        return self.allocated

    def free_all_blocks(self) -> None:
        pass


@contextlib.contextmanager
def using_allocator(allocator=None):
    yield


class _Runtime:
    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802 - CuPy's name
        return 2

    @staticmethod
    def runtimeGetVersion() -> int:  # noqa: N802
        return 13000

    @staticmethod
    def driverGetVersion() -> int:  # noqa: N802
        return 13000


def _root(arr: np.ndarray) -> np.ndarray:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr
