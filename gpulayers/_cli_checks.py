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
from typing import Any

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


def _parse(text: str, parse, what: str):
    """``parse(text)``, or the argparse error naming ``what`` was expected."""
    try:
        value = parse(str(text).strip())
    except ValueError:
        value = None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _converter(name: str, parse, what: str, ok, doc: str):
    """An argparse ``type=`` converter: ``parse`` the text, then require ``ok(value)``."""

    def convert(text: str):
        value = _parse(text, parse, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    convert.__name__ = convert.__qualname__ = name
    convert.__doc__ = doc
    return convert


def _decimal(text: str) -> int:
    return int(text, 10)


def _int_range(name: str, low: int, high: int | None = None, doc: str = "") -> Any:
    """A converter to an integer >= ``low`` (and <= ``high`` when given)."""
    what = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
    ok = (lambda v: v >= low) if high is None else (lambda v: low <= v <= high)
    return _converter(name, _decimal, what, ok, doc or f"{what[0].upper()}{what[1:]}.")


positive_int = _int_range("positive_int", 1)
non_negative_int = _int_range("non_negative_int", 0)
seed_int = _int_range("seed_int", 0, MAX_SEED, "A seed: an integer in 0..2**32 - 1.")
width_int = _int_range("width_int", 1, MAX_WIDTH, "The first convolution's channels: an integer in 1..1024.")
positive_float = _converter("positive_float", float, "a finite number > 0", lambda v: v > 0, "A finite number > 0.")
non_negative_float = _converter(
    "non_negative_float", float, "a finite number >= 0", lambda v: v >= 0, "A finite number >= 0."
)
drop_probability = _converter(
    "drop_probability", float, "a probability in [0, 1)", lambda v: 0 <= v < 1, "A dropout probability in [0, 1)."
)


def epochs_int(text: str) -> int:
    """An epoch count: an integer in 1..1,000,000 (what a checkpoint may record)."""
    from .checkpoint import MAX_EPOCH  # noqa: PLC0415

    return _int_range("epochs_int", 1, MAX_EPOCH)(text)


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
