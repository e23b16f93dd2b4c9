"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

Every layer is written once against the array API and asks :func:`get_array_module`
which of the two libraries holds its input. This module also owns the random
sources of the library, so that :func:`manual_seed` makes initialisation, dropout
and shuffling reproducible on either device.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import numpy as np

__all__ = [
    "cuda_is_available",
    "cuda_unavailable_reason",
    "default_device",
    "device_scope",
    "get_array_module",
    "to_device",
    "to_numpy",
    "is_cuda_array",
    "manual_seed",
    "cpu_rng",
    "rng_for",
    "get_rng_state",
    "set_rng_state",
    "philox_next",
    "philox_capture",
    "philox_replay",
    "parse_device",
]

_cupy: Any = None
_cupy_import_error: str | None = None
_cuda_checked = False
_cuda_ok = False
_cuda_reason = ""


def _import_cupy():
    """Import CuPy once; remember why it failed instead of raising."""
    global _cupy, _cupy_import_error
    if _cupy is None and _cupy_import_error is None:
        try:
            import cupy  # noqa: PLC0415

            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken install raising anything
            _cupy_import_error = f"{type(exc).__name__}: {exc}"
    return _cupy


def _probe_cuda() -> None:
    global _cuda_checked, _cuda_ok, _cuda_reason
    if _cuda_checked:
        return
    _cuda_checked = True
    cp = _import_cupy()
    if cp is None:
        _cuda_reason = f"CuPy is not installed or failed to import ({_cupy_import_error})"
        return
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, no device, driver too old
        _cuda_reason = f"CuPy found no usable CUDA device ({type(exc).__name__}: {exc})"
        return
    if count < 1:
        _cuda_reason = "CuPy found no CUDA device (device count is 0)"
        return
    try:
        cp.zeros(1).sum().item()
    except Exception as exc:
        _cuda_reason = f"the CUDA device is present but not usable ({type(exc).__name__}: {exc})"
        return
    _cuda_ok = True
    _cuda_reason = f"CUDA device available ({count} device(s))"


def cuda_is_available() -> bool:
    """True when CuPy imports and a CUDA device can run work. Never raises."""
    try:
        _probe_cuda()
    except Exception:  # belt and braces: the contract is "never raises"
        return False
    return _cuda_ok


def cuda_unavailable_reason() -> str:
    """Why CUDA is (not) available, in words, e.g. for ``python -m gpulayers.info``."""
    cuda_is_available()
    return _cuda_reason


def parse_device(device: str) -> tuple[str, int]:
    """Split ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into (kind, index)."""
    if not isinstance(device, str):
        raise TypeError(f"device: expected a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    text = device.strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda":
        return "cuda", -1
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _require_cuda(device: str) -> None:
    if not cuda_is_available():
        raise RuntimeError(f"device {device!r} was asked for, but CUDA is not usable: {_cuda_reason}")


def default_device() -> str:
    """``"cuda"`` when a GPU is usable, else ``"cpu"``; ``GPULAYERS_DEVICE`` overrides."""
    forced = os.environ.get("GPULAYERS_DEVICE", "").strip()
    if forced:
        kind, _ = parse_device(forced)
        if kind == "cuda":
            _require_cuda(forced)
        return forced.lower()
    return "cuda" if cuda_is_available() else "cpu"


def is_cuda_array(x: Any) -> bool:
    """True for a ``cupy.ndarray`` (without importing CuPy when it is not loaded).

    Works before the backend has imported CuPy itself: an array the caller made with CuPy
    (its type comes from the ``cupy`` package) makes the backend adopt the caller's import.
    """
    cp = _cupy
    if cp is None:
        if not type(x).__module__.startswith("cupy"):
            return False
        cp = _import_cupy()
    return cp is not None and isinstance(x, cp.ndarray)


def device_scope(x: Any):
    """A context making ``x``'s GPU the current device (CuPy allocates there); a no-op for NumPy."""
    if is_cuda_array(x):
        return x.device
    return contextlib.nullcontext()


def get_array_module(x: Any):
    """``numpy`` or ``cupy``, from the array itself."""
    if is_cuda_array(x):
        return _cupy
    if type(x).__module__.startswith("cupy"):
        return _import_cupy()
    return np


def to_numpy(x: Any) -> np.ndarray:
    """Always a NumPy array (copies a CuPy array to the host)."""
    if is_cuda_array(x):
        return x.get()
    return np.asarray(x)


def to_device(x: Any, device: str):
    """Copy an array to ``"cpu"`` or ``"cuda"``/``"cuda:N"``; no copy when already there."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return to_numpy(x)
    _require_cuda(device)
    cp = _cupy
    if index < 0:
        index = cp.cuda.Device().id
    if is_cuda_array(x) and x.device.id == index:
        return x
    with cp.cuda.Device(index):
        return cp.asarray(x)


def device_of(x: Any) -> str:
    """``"cpu"`` or ``"cuda:N"`` for an array."""
    if is_cuda_array(x):
        return f"cuda:{x.device.id}"
    return "cpu"


# ----------------------------------------------------------------------------------------------
# Random sources. One NumPy Generator serves everything on the CPU (initialisation always
# happens on the CPU, as new modules start there); per GPU, a NumPy generator serves the small
# draws about its arrays and a counter-based generator (Philox, in the kernels) draws the masks.
# ----------------------------------------------------------------------------------------------
_seed: int | None = None
_cpu_rng = np.random.Generator(np.random.PCG64())
_gpu_rngs: dict[int, np.random.Generator] = {}  # per device: host generator of its draws
_philox_offsets: dict[int, int] = {}  # per device: launches of the counter-based generator so far
_philox_states: dict[int, tuple[Any, int]] = {}  # per device: device array [seed, base] and its base
_philox_captures: dict[int, PhiloxGraphState] = {}  # per device: the capture under way
_unseeded_gpu_seed: int | None = None  # drawn once per process when manual_seed was never called


def manual_seed(seed: int) -> None:
    """Seed every random source the library uses (init, dropout, shuffling), CPU and GPU."""
    global _seed, _cpu_rng
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed: expected a non-negative integer, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"manual_seed: expected a non-negative integer, got {seed}")
    _seed = seed
    _cpu_rng = np.random.Generator(np.random.PCG64(seed))
    _gpu_rngs.clear()  # re-created lazily from the new seed, per device
    _philox_offsets.clear()
    _philox_states.clear()


def cpu_rng() -> np.random.Generator:
    """The library's CPU generator."""
    return _cpu_rng


def rng_for(xp, device_id: int | None = None) -> np.random.Generator:
    """The generator for random draws about arrays of ``xp`` (augmentation offsets, flips, masks
    outside the fused dropout kernel).

    NumPy: the CPU generator. CuPy: a NumPy generator of the device (``device_id``, default the
    current one), seeded from ``manual_seed``'s seed and the device index. Its few draws per batch
    go to the device with one transfer, which costs far less than a cuRAND generator's set-up (a
    quarter of a million states), and its state is plain data, saved by :func:`get_rng_state`.
    Made lazily, on the device's first draw after a seeding.
    """
    if xp is np:
        return _cpu_rng
    dev = xp.cuda.Device().id if device_id is None else int(device_id)
    gen = _gpu_rngs.get(dev)
    if gen is None:
        # a seed sequence of its own: not the CPU generator's stream, nor another device's
        gen = _gpu_rngs[dev] = np.random.Generator(np.random.PCG64([_gpu_seed(), 1, dev]))
    return gen


def _gpu_seed() -> int:
    """The seed of the GPU generators: ``manual_seed``'s, else one fixed random draw per process.

    Fixed, so that :func:`set_rng_state` (which re-creates the GPU generators) replays the same
    GPU stream every time even without ``manual_seed`` (``gradcheck`` relies on it for dropout).
    """
    global _unseeded_gpu_seed
    if _seed is not None:
        return _seed
    if _unseeded_gpu_seed is None:
        _unseeded_gpu_seed = int(np.random.SeedSequence().entropy % (2**63))
    return _unseeded_gpu_seed


def _philox_seed(device_id: int) -> int:
    return (_gpu_seed() + 7919 * device_id) % 2**63


def _philox_array(device_id: int, offset: int):
    """A new device array ``[seed, offset]`` (int64) on ``device_id``: one host-to-device copy."""
    cp = _cupy
    with cp.cuda.Device(device_id):
        return cp.asarray(np.array([_philox_seed(device_id), offset], dtype=np.int64))


class PhiloxGraphState:
    """The generator state one captured CUDA graph reads: a device array ``[seed, base]``.

    Made by :func:`philox_capture`; :func:`philox_replay` writes the next base into it before
    each replay and advances the device's offset by :attr:`consumed`.
    """

    def __init__(self, device_id: int, state: Any, start: int) -> None:
        self.device_id, self.state, self.start = device_id, state, start
        self.consumed = 0  # offsets the captured work takes per replay


def philox_next(device_id: int) -> tuple[Any, int]:
    """``(state, increment)`` for the next launch of the counter-based generator on ``device_id``.

    ``state`` is an int64 device array ``[seed, base]``; the launch's offset is ``base +
    increment`` (the kernel adds them), and the device's offset advances by one. Eagerly ``state``
    is the device's own array, written once (after ``manual_seed``/``set_rng_state``), so a launch
    costs no transfer and no synchronisation; under :func:`philox_capture` it is the graph's array
    and the increment counts from the capture's first offset. The offsets are plain numbers, part
    of :func:`get_rng_state`, so checkpoints resume the same masks.
    """
    offset = _philox_offsets.get(device_id, 0)
    _philox_offsets[device_id] = offset + 1
    capture = _philox_captures.get(device_id)
    if capture is not None:
        return capture.state, offset - capture.start
    entry = _philox_states.get(device_id)
    if entry is None:
        entry = _philox_states[device_id] = (_philox_array(device_id, offset), offset)
    state, base = entry
    return state, offset - base


@contextlib.contextmanager
def philox_capture(device_id: int):
    """Around a CUDA graph capture on ``device_id``: launches read a new graph state (made here,
    before the capture) with increments from the device's current offset.

    Nothing runs during a capture, so the offset is put back on exit; the returned
    :class:`PhiloxGraphState` knows how many offsets a replay takes (:func:`philox_replay`).
    """
    start = _philox_offsets.get(device_id, 0)
    graph_state = PhiloxGraphState(device_id, _philox_array(device_id, start), start)
    _philox_captures[device_id] = graph_state
    try:
        yield graph_state
    finally:
        del _philox_captures[device_id]
        graph_state.consumed = _philox_offsets.get(device_id, 0) - start
        _philox_offsets[device_id] = start


def philox_replay(graph_state: PhiloxGraphState, stream: Any = None) -> None:
    """Before a replay: write ``[seed, offset]`` into the graph's state with one asynchronous
    host-to-device copy on ``stream`` (no synchronisation), and advance the device's offset by
    what the graph consumes. Nothing to do for a graph that draws no random numbers."""
    if graph_state.consumed == 0:
        return
    dev = graph_state.device_id
    offset = _philox_offsets.get(dev, 0)
    graph_state.state.set(np.array([_philox_seed(dev), offset], dtype=np.int64), stream=stream)
    _philox_offsets[dev] = offset + graph_state.consumed


def get_rng_state() -> dict:
    """A JSON-serialisable snapshot of the random state (checkpoints store it): the seed, the CPU
    generator, and per device the counter-based GPU generator's offset and the state of the
    device's generator of small draws (:func:`rng_for`) once it was used."""
    offsets = {str(k): v for k, v in _philox_offsets.items()}
    gpu = {str(k): g.bit_generator.state for k, g in _gpu_rngs.items()}
    return {"seed": _seed, "cpu": _cpu_rng.bit_generator.state, "gpu_offsets": offsets, "gpu": gpu}


def _pcg64(state: dict, name: str) -> np.random.Generator:
    gen = np.random.Generator(np.random.PCG64())
    try:
        gen.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"set_rng_state: {name} is not a PCG64 generator state ({exc})") from None
    return gen


def set_rng_state(state: dict) -> None:
    """Restore a snapshot taken by :func:`get_rng_state` (one saved before the per-device
    generators were stored restores the rest, and those start afresh from the seed)."""
    global _seed, _cpu_rng
    if isinstance(state, (str, bytes)):
        state = json.loads(state)
    if not isinstance(state, dict) or "cpu" not in state:
        raise ValueError(f"set_rng_state: expected a dict from get_rng_state(), got {type(state).__name__}")
    _seed = state.get("seed")
    _cpu_rng = _pcg64(state["cpu"], "'cpu'")
    _gpu_rngs.clear()
    _gpu_rngs.update({int(k): _pcg64(v, f"'gpu' of device {k}") for k, v in (state.get("gpu") or {}).items()})
    _philox_states.clear()
    _philox_offsets.clear()
    _philox_offsets.update({int(k): int(v) for k, v in (state.get("gpu_offsets") or {}).items()})
