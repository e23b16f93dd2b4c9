"""Checkpoints: one ``.npz`` that a run resumes from bit for bit, written atomically.

A checkpoint (loaded with ``allow_pickle=False``) holds the model's state dict under
``model/<key>``, the optimiser's and scheduler's state, the epoch, the history, the library's RNG
state and the loader's shuffling state, so that a resumed run on the CPU continues exactly as if
it had never stopped. The non-array parts travel as one JSON document (the ``meta`` entry) in which
arrays are referenced by key. The file is written to a temporary file in the same folder and
renamed over the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from . import backend
from .nn.module import Module

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "gpulayers-checkpoint/1"


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
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return np.array(arrays[obj["__array__"]])
        if "__scalar__" in obj:
            return np.asarray(arrays[obj["__scalar__"]])[()]
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__dict__"]}
    return obj


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that a crash leaves either the old file or the new one."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
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


def load_checkpoint(
    path: str | Path,
    model: Module | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    loader: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and restore the objects given.

    Returns:
        ``{"epoch", "history", "extra", "model", "optimizer", "scheduler", "loader", "rng"}``:
        the stored values (state dicts as dicts of NumPy arrays and numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}")
    with np.load(path, allow_pickle=False) as f:
        files = dict(f.items())
    if "meta" not in files:
        raise ValueError(f"load_checkpoint: {path} is not a gpulayers checkpoint (no 'meta' entry)")
    meta = json.loads(files["meta"].tobytes().decode("utf-8"))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"load_checkpoint: {path} has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    state = {
        "epoch": meta["epoch"],
        "history": meta["history"],
        "extra": meta["extra"],
        "loader": meta["loader"],
        "rng": meta["rng"],
        "model": {k[len("model/") :]: v for k, v in files.items() if k.startswith("model/")},
        "optimizer": _decode(meta["optimizer"], files) if meta["optimizer"] is not None else None,
        "scheduler": _decode(meta["scheduler"], files) if meta["scheduler"] is not None else None,
    }
    if model is not None:
        model.load_state_dict(state["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
        if obj is not None:
            if state[key] is None:
                raise ValueError(f"load_checkpoint: {path} holds no {key} state")
            obj.load_state_dict(state[key])
    if loader is not None and state["loader"] is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state["loader"])
    if restore_rng:
        backend.set_rng_state(state["rng"])
    return state
