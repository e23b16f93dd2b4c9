"""Checkpoints: one ``.npz`` that a run resumes from bit for bit, written atomically.

A checkpoint (loaded with ``allow_pickle=False``) holds the model's state dict under
``model/<key>``, the optimiser's and scheduler's state, the epoch, the history, the library's RNG
state and the loader's shuffling state, so that a resumed run on the CPU continues exactly as if
it had never stopped. The non-array parts travel as one JSON document (the ``meta`` entry) in which
arrays are referenced by key. The file is written to a temporary file in the same folder and
renamed over the old one; temporary files left by a save that was killed are removed by the next
save to the same path.

Key layout of the ``.npz`` (``np.load(path)`` lists them):

- ``model/<name>``: the model's ``state_dict()`` under PyTorch's names (``model/0.weight``, ...);
- ``optimizer/<n>``, ``scheduler/<n>``: the arrays of their state, referenced from ``meta``;
- ``meta``: UTF-8 JSON as uint8 bytes: ``format``, ``epoch``, ``history``, ``rng``, ``loader``,
  ``optimizer``, ``scheduler``, ``extra``.

A file given to :func:`load_checkpoint` is checked before anything large is allocated: each
array's declared size must match the bytes the file holds, and every part of ``meta`` must have
the expected type and range; a problem raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from . import backend
from .nn.module import Module

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "write_text_atomic",
    "CheckpointError",
    "CHECKPOINT_FORMAT",
    "MAX_EPOCH",
]

CHECKPOINT_FORMAT = "gpulayers-checkpoint/1"
#: The largest epoch count a checkpoint may declare.
MAX_EPOCH = 10**6


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; ``path`` is the file and ``problem`` what is wrong with it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"load_checkpoint: {path}: {problem}")
        self.path, self.problem = str(path), problem


def _encode(obj: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """A JSON skeleton of ``obj``; arrays go into ``arrays`` and are referenced by key."""
    if isinstance(obj, np.ndarray) or backend.is_cuda_array(obj):
        key = f"{prefix}/{len(arrays)}"
        arrays[key] = backend.to_numpy(obj)
        return {"__array__": key}
    if isinstance(obj, np.generic):
        key = f"{prefix}/{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"__scalar__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, arrays, prefix), _encode(v, arrays, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, prefix) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"save_checkpoint: cannot store a {type(obj).__name__} in {prefix} state (numbers and arrays only)")


def _decode(obj: Any, arrays) -> Any:
    """Rebuild what :func:`_encode` stored (KeyError, TypeError or ValueError on a malformed skeleton)."""
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if len(obj) != 1:
            raise ValueError(f"unexpected keys {sorted(obj)[:4]}")
        ((tag, value),) = obj.items()
        if tag == "__array__":
            return np.array(arrays[value])
        if tag == "__scalar__":
            arr = arrays[value]
            if arr.ndim != 0:
                raise ValueError(f"scalar {value!r} has shape {arr.shape}")
            return arr[()]
        if tag == "__tuple__":
            return tuple(_decode(v, arrays) for v in value)
        if tag == "__dict__":
            out = {}
            for pair in value:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ValueError("a dict entry is not a [key, value] pair")
                key = _decode(pair[0], arrays)
                if not isinstance(key, (str, int, float, bool, type(None), tuple)):
                    raise TypeError(f"a dict key is a {type(key).__name__}")
                out[key] = _decode(pair[1], arrays)
            return out
        raise ValueError(f"unknown entry {tag!r}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"unexpected {type(obj).__name__}")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_temps(path: Path) -> None:
    """Remove the temporary files of earlier saves to ``path`` that were killed before their rename."""
    prefix = _temp_prefix(path)
    for stale in path.parent.glob(f"{_glob_escape(prefix)}*.tmp"):
        if stale.name.startswith(prefix) and stale.is_file():
            with suppress(OSError):
                stale.unlink()


def _glob_escape(text: str) -> str:
    """``text`` with the glob pattern characters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and a rename
    (the folder is created when missing): a reader sees the old file or the new one, never a part."""
    _atomic_write(Path(path).expanduser(), lambda f: f.write(text.encode("utf-8")))


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that a crash leaves either the old file or the new one."""
    _atomic_write(path, lambda f: np.savez(f, allow_pickle=False, **arrays))


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is over.

    A ``KeyboardInterrupt`` raised halfway through a writer's ``with`` statements (``np.savez``'s
    zip member) leaves a zip file whose closing raises ``ValueError`` in its place, and whose
    garbage collection prints a traceback. Only the main thread receives signals; elsewhere, or
    where the handler cannot be set, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):  # not settable here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``; a
    Ctrl-C in between takes effect once the file is complete (see :func:`_ctrl_c_deferred`)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    with _ctrl_c_deferred():
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
    with suppress(OSError):  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(
    path: str | Path,
    model: Module,
    optimizer: Any = None,
    scheduler: Any = None,
    *,
    epoch: int = 0,
    history: list[dict] | None = None,
    loader: Any = None,
    extra: dict | None = None,
) -> None:
    """Save everything a resumed run needs into one ``.npz`` (written atomically).

    Args:
        path: the checkpoint file (its folder is created when missing).
        model: its ``state_dict()`` is stored under ``model/<key>``.
        optimizer, scheduler: their ``state_dict()`` (numbers and arrays, nested or flat).
        epoch: epochs completed.
        history: the per-epoch records so far.
        loader: the training loader (its ``state_dict()``: shuffling seed and epoch).
        extra: any JSON-able data (e.g. the command-line arguments).
    """
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "history": history or [],
        "rng": backend.get_rng_state(),
        "loader": loader.state_dict() if loader is not None and hasattr(loader, "state_dict") else None,
        "optimizer": _encode(optimizer.state_dict(), arrays, "optimizer") if optimizer is not None else None,
        "scheduler": _encode(scheduler.state_dict(), arrays, "scheduler") if scheduler is not None else None,
        "extra": extra,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    _atomic_savez(Path(path), arrays)


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_DEFLATE_RATIO = 1100  # deflate cannot expand data by more than about 1032 times


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path``, each header checked against the bytes present before
    its array is allocated."""
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_NPY_MAGIC):
        raise CheckpointError(path, "is a single NumPy array (.npy), not a checkpoint (.npz)")
    if not head.startswith(_ZIP_MAGICS):
        raise CheckpointError(path, f"is not a checkpoint: a .npz (zip) file starts with 'PK', this one with {head!r}")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = _member_key(path, info)
                arrays[key] = _read_member(path, zf, info, size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        if isinstance(exc, (CheckpointError, FileNotFoundError)):
            raise
        raise CheckpointError(path, f"truncated or damaged ({type(exc).__name__}: {exc})") from exc
    return arrays


def _member_key(path: Path, info: zipfile.ZipInfo) -> str:
    if not info.filename.endswith(".npy") or info.is_dir():
        raise CheckpointError(path, f"holds {info.filename!r}, which is not a NumPy array")
    return info.filename[: -len(".npy")]


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> np.ndarray:
    name = info.filename
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO
    if info.file_size > max(info.compress_size, 1) * ratio or info.compress_size > file_size:
        raise CheckpointError(path, f"entry {name!r} declares {info.file_size} bytes, more than the file can hold")
    with zf.open(info) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, SyntaxError, TypeError) as exc:
            raise CheckpointError(path, f"entry {name!r} has a damaged array header ({exc})") from exc
        if dtype.hasobject or dtype.kind not in "biufc":
            raise CheckpointError(path, f"entry {name!r} holds {dtype} data, not numbers (refused: no pickles)")
        want = math.prod(shape) * dtype.itemsize
        have = info.file_size - fp.tell()
        if want != have:
            raise CheckpointError(
                path, f"entry {name!r} declares shape {shape} of {dtype} ({want} bytes) but holds {have} bytes"
            )
        raw = fp.read(want)
    arr = np.frombuffer(raw, dtype=dtype)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return arr.copy() if not arr.flags.writeable else arr


def _check_meta(path: Path, meta: Any, files: dict[str, np.ndarray]) -> dict[str, Any]:
    """``meta`` checked part by part; returns the decoded state."""
    if not isinstance(meta, dict):
        raise CheckpointError(path, f"'meta' must be a JSON object, got a JSON {type(meta).__name__}")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, f"has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    missing = [k for k in ("epoch", "history", "rng", "loader", "optimizer", "scheduler", "extra") if k not in meta]
    if missing:
        raise CheckpointError(path, f"'meta' lacks {', '.join(missing)}")
    epoch, history = meta["epoch"], meta["history"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise CheckpointError(path, f"epoch must be an integer in 0..{MAX_EPOCH}, got {epoch!r}")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise CheckpointError(path, "history must be a list of per-epoch records (JSON objects)")
    if len(history) > epoch:
        raise CheckpointError(path, f"epoch {epoch} but the history holds {len(history)} epochs")
    _check_rng(path, meta["rng"])
    loader = meta["loader"]
    if loader is not None and not (
        isinstance(loader, dict)
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in loader.values())
    ):
        raise CheckpointError(path, f"loader state must map names to integers >= 0, got {str(loader)[:80]}")
    state = {"epoch": epoch, "history": history, "extra": meta["extra"], "loader": loader, "rng": meta["rng"]}
    state["model"] = {k[len("model/") :]: v for k, v in files.items() if k.startswith("model/")}
    for key in ("optimizer", "scheduler"):
        try:
            state[key] = _decode(meta[key], files) if meta[key] is not None else None
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(path, f"the {key} state is malformed ({type(exc).__name__}: {exc})") from exc
        if state[key] is not None and not isinstance(state[key], dict):
            raise CheckpointError(path, f"the {key} state must be a dict, got {type(state[key]).__name__}")
    return state


def _check_rng(path: Path, rng: Any) -> None:
    problem = None
    if not isinstance(rng, dict) or not isinstance(rng.get("cpu"), dict):
        problem = "must be an object with a 'cpu' generator state"
    elif rng.get("seed") is not None and (isinstance(rng["seed"], bool) or not isinstance(rng["seed"], int)):
        problem = f"has a seed that is not an integer: {rng['seed']!r}"
    else:
        try:
            np.random.PCG64().state = rng["cpu"]
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            problem = f"is not a PCG64 state ({type(exc).__name__}: {exc})"
    if problem:
        raise CheckpointError(path, f"the random-generator state {problem}")


def load_checkpoint(
    path: str | Path,
    model: Module | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    loader: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and restore the objects given.

    The whole file is checked before anything is restored: a file that is not a checkpoint, or
    damaged, raises :class:`CheckpointError` (a ValueError) that names the file and the problem, and
    leaves every object untouched.

    Args:
        path: the ``.npz`` file.
        model, optimizer, scheduler, loader: restored from their stored state when given.
        restore_rng: restore the library's random generator too (default True).

    Returns:
        ``{"epoch", "history", "extra", "model", "optimizer", "scheduler", "loader", "rng"}``:
        the stored values (state dicts as dicts of NumPy arrays and numbers).
    """
    path = Path(path)
    files = _read_arrays(path)
    if "meta" not in files:
        raise CheckpointError(path, "not a gpulayers checkpoint (no 'meta' entry)")
    raw = files["meta"]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(path, f"'meta' must be 1-D uint8 bytes, got {raw.dtype} {raw.shape}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(path, f"'meta' is not valid JSON ({type(exc).__name__})") from exc
    try:
        state = _check_meta(path, meta, files)
    except RecursionError as exc:
        raise CheckpointError(path, "'meta' is nested too deeply") from exc
    if model is not None:
        model.load_state_dict(state["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
        if obj is not None:
            if state[key] is None:
                raise CheckpointError(path, f"holds no {key} state")
            obj.load_state_dict(state[key])
    if loader is not None and state["loader"] is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state["loader"])
    if restore_rng:
        backend.set_rng_state(state["rng"])
    return state
