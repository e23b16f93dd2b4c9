"""Batching of a map-style dataset's items: :func:`default_collate` (PyTorch's rules, for NumPy)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import backend

__all__ = ["default_collate"]


def default_collate(samples: Sequence[Any]) -> Any:
    """Stack a list of samples into a batch, as PyTorch's ``default_collate`` does for NumPy.

    Arrays are stacked on a new axis 0 (they must share a shape); Python and NumPy numbers become
    a 1-D array (bool, int64 or float64); tuples, lists and dicts are collated element by element
    (a tuple of batches for tuples and lists); strings are kept as a list.
    """
    first = samples[0]
    if hasattr(first, "shape") and hasattr(first, "dtype"):
        arrays = [backend.to_numpy(s) for s in samples]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"DataLoader: cannot stack samples of different shapes {sorted(shapes)} into a batch")
        return np.stack(arrays)
    if isinstance(first, (bool, np.bool_)):
        return np.asarray(samples, dtype=bool)
    if isinstance(first, (numbers.Integral, np.integer)):
        return np.asarray(samples, dtype=np.int64)
    if isinstance(first, numbers.Real):
        return np.asarray(samples, dtype=np.float64)
    if isinstance(first, (str, bytes)):
        return list(samples)
    if isinstance(first, dict):
        return {key: default_collate([s[key] for s in samples]) for key in first}
    if isinstance(first, (tuple, list)):
        if any(not isinstance(s, (tuple, list)) or len(s) != len(first) for s in samples):
            raise ValueError(f"DataLoader: every sample must have {len(first)} elements, as the first one has")
        return tuple(default_collate(list(column)) for column in zip(*samples, strict=True))
    raise TypeError(
        f"DataLoader: cannot collate samples of type {type(first).__name__}; a dataset's items should be "
        "NumPy arrays, numbers, or tuples/lists/dicts of them"
    )
