"""Checks for the command line: argparse ``type=`` converters and output-path checks.

Every converter raises :class:`argparse.ArgumentTypeError`, which argparse turns into a
``error: argument --x: ...`` line and exit status 2 before anything runs.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from . import backend

__all__ = [
    "positive_int",
    "non_negative_int",
    "seed_int",
    "positive_float",
    "non_negative_float",
    "drop_probability",
    "width_int",
    "epochs_int",
    "device_name",
    "output_path_problem",
]

MAX_SEED = 2**32 - 1
MAX_WIDTH = 1024


def _int(text: str, what: str) -> int:
    try:
        return int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """A seed: an integer in 0..2**32 - 1."""
    what = f"an integer in 0..{MAX_SEED}"
    value = _int(text, what)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def width_int(text: str) -> int:
    """The first convolution's channels: an integer in 1..1024."""
    what = f"an integer in 1..{MAX_WIDTH}"
    value = _int(text, what)
    if not 1 <= value <= MAX_WIDTH:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def epochs_int(text: str) -> int:
    """An epoch count: an integer in 1..1,000,000 (what a checkpoint may record)."""
    from .checkpoint import MAX_EPOCH  # noqa: PLC0415

    what = f"an integer in 1..{MAX_EPOCH}"
    value = _int(text, what)
    if not 1 <= value <= MAX_EPOCH:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def drop_probability(text: str) -> float:
    """A dropout probability in [0, 1)."""
    value = _float(text, "a probability in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return value


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower-cased)."""
    value = str(text).strip().lower()
    if value == "auto":
        return value
    try:
        backend.parse_device(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    return value


def output_path_problem(option: str, value: str) -> str | None:
    """Why ``value`` cannot be written as the output file of ``option`` (None when it can).

    A missing folder is fine when it can be created (it is created when the file is written); the
    nearest existing folder is probed by creating and removing a temporary file in it.
    """
    if not str(value).strip():
        return f"{option}: expected a file name, got an empty string"
    path = Path(value).expanduser()
    if path.is_dir():
        return f"{option} {value}: is a folder; give a file name inside it"
    if path.exists() and not path.is_file():
        return f"{option} {value}: exists and is not a regular file"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{option} {value}: {folder} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"{option} {value}: cannot write in {folder} ({exc.strerror or exc})"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{option} {value}: the file exists and is not writable"
    return None
