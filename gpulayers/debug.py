"""Debug mode: detect arrays edited in place between a layer's forward and its backward.

A layer's ``forward`` keeps references to arrays that its ``backward`` reads again. Editing one
of them in place (``x[...] = 0``, ``y += 1``, an optimiser step) before ``backward`` silently
corrupts the gradients, as it would in PyTorch without its version counters. The arrays of yours
that each layer keeps until its backward:

- ``Linear``: its input and its weight;
- ``Conv2d``: its weight, and on the GPU its input (the CPU path keeps its own unfolded copy);
- ``ReLU``, ``Sigmoid``, ``Tanh``, ``Softmax``, ``LogSoftmax``: their output;
- ``LeakyReLU``, ``GELU``, ``SiLU``: their input;
- ``BatchNorm1d/2d``, ``GroupNorm``, ``LayerNorm``: their weight (the normalised input is their own);
- ``BCEWithLogitsLoss``: its input and target (and its ``weight``/``pos_weight`` buffers);
- pooling, dropout, ``Flatten`` and the other losses keep only arrays of their own (indices,
  masks, probabilities), so nothing of yours.

With ``gl.set_debug(True)`` (or inside ``with gl.debug_mode():``) every forward records a
fingerprint of each array it keeps (a CRC-32 of the bytes on the CPU, a copy on the GPU), and
the matching backward verifies them, raising :class:`RuntimeError` that names the layer and the
array. Off by default (the check reads every kept array twice); the environment variable
``GPULAYERS_DEBUG=1`` turns it on from the start, without editing a script.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import backend

__all__ = ["set_debug", "is_debug", "debug_mode", "snapshot", "check_unchanged"]

_enabled = os.environ.get("GPULAYERS_DEBUG", "").strip() not in ("", "0")
_MAX_DEPTH = 4


def set_debug(enabled: bool) -> None:
    """Turn the in-place modification check on or off (process-wide).

    Args:
        enabled: True to fingerprint what each forward keeps and verify it in backward.
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_debug: expected a bool, got {type(enabled).__name__} {enabled!r}")
    global _enabled
    _enabled = bool(enabled)


def is_debug() -> bool:
    """True when the in-place modification check is on."""
    return _enabled


class debug_mode:  # noqa: N801 - a context manager named like gl.no_grad
    """``with gl.debug_mode():`` turns the check on inside the block (``debug_mode(False)`` off).

    Args:
        enabled: the mode inside the block. Defaults to True.
    """

    def __init__(self, enabled: bool = True) -> None:
        if not isinstance(enabled, (bool, np.bool_)):
            raise TypeError(f"debug_mode: expected a bool, got {type(enabled).__name__} {enabled!r}")
        self.enabled = bool(enabled)

    def __enter__(self) -> debug_mode:
        self._previous = is_debug()
        set_debug(self.enabled)
        return self

    def __exit__(self, *exc: Any) -> None:
        set_debug(self._previous)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or backend.is_cuda_array(value)


def _arrays(value: Any, path: str, seen: set[int], depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Every array reachable from what a forward saved, with a readable path to it."""
    if _is_array(value):
        if id(value) not in seen:
            seen.add(id(value))
            yield path, value
        return
    if depth >= _MAX_DEPTH or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _arrays(item, f"{path}[{key!r}]" if path else repr(key), seen, depth + 1)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _arrays(item, f"{path}[{i}]" if path else f"[{i}]", seen, depth + 1)
    elif not isinstance(value, (str, bytes, int, float, complex, type)) and value is not None:
        fields = getattr(value, "__dict__", None) or {
            name: getattr(value, name) for name in getattr(type(value), "__slots__", ()) if hasattr(value, name)
        }
        for name, item in fields.items():
            yield from _arrays(item, f"{path}.{name}" if path else name, seen, depth + 1)


def _fingerprint(arr: Any) -> Any:
    if backend.is_cuda_array(arr):
        with arr.device:
            return arr.copy()  # compared bit for bit on the device in check_unchanged
    data = np.ascontiguousarray(arr)
    return zlib.crc32(memoryview(data.reshape(-1).view(np.uint8)))


def _same(arr: Any, print_: Any) -> bool:
    if backend.is_cuda_array(arr):
        if arr.shape != print_.shape:
            return False
        kind = {1: "u1", 2: "u2", 4: "u4", 8: "u8"}.get(arr.dtype.itemsize)
        if kind is None:
            return bool((arr == print_).all())
        with arr.device:
            return bool((arr.view(kind) == print_.view(kind)).all())
    return _fingerprint(arr) == print_


def snapshot(saved: Any) -> list[tuple[str, Any, tuple[int, ...], Any]] | None:
    """Fingerprints of every array in ``saved`` when debug mode is on, else None."""
    if not _enabled:
        return None
    if isinstance(saved, tuple) and len(saved) == 1:  # one op cache: name its entries directly
        saved = saved[0]
    return [(path, arr, tuple(arr.shape), _fingerprint(arr)) for path, arr in _arrays(saved, "", set())]


def check_unchanged(name: str, token: list | None) -> None:
    """Raise when an array fingerprinted by :func:`snapshot` was modified since.

    Args:
        name: the layer, for the message.
        token: what :func:`snapshot` returned (None: nothing to check).

    Raises:
        RuntimeError: naming the layer and the saved array that changed.
    """
    if not token:
        return
    for path, arr, shape, print_ in token:
        if tuple(arr.shape) != shape or not _same(arr, print_):
            raise RuntimeError(
                f"{name}.backward: an array that forward saved for backward (item {path}, shape {shape}, "
                f"dtype {arr.dtype}) was modified in place after forward, so the gradients would be wrong; "
                "modify a copy instead (x = x.copy()) or run forward again (found by gl.set_debug(True))"
            )
