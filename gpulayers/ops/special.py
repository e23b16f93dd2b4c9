"""The error function ``erf`` for NumPy and CuPy arrays, without SciPy.

``erf`` is odd, and ``erf(x) = x * h(x)`` with ``h`` even and smooth, so only ``h`` on
``[0, ERF_CUTOFF)`` is approximated: by piecewise Chebyshev series, one per interval of width
:data:`_WIDTH`, evaluated with Clenshaw's recurrence in the input's dtype (multiplying by ``x``
keeps the relative accuracy down to the smallest inputs). Beyond the cutoff ``erf`` is 1 to
double precision. The coefficients are not transcribed from a table: they are computed once,
at import, by interpolating :func:`math.erf` at the Chebyshev points of each interval (a
discrete cosine transform). The float64 error is below 10 units in the last place
(``tests/test_activation_extra.py`` measures it against :func:`math.erf`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_floating

__all__ = ["erf", "ERF_CUTOFF"]

#: ``erf(x)`` rounds to exactly 1 in float64 from about 5.93 on.
ERF_CUTOFF = 6.0
_WIDTH = 0.5
_POINTS = 16  # interpolation points per interval; the series is then cut where it falls below eps


def _h(x: float) -> float:
    return math.erf(x) / x if x else 2.0 / math.sqrt(math.pi)


def _chebyshev_table() -> np.ndarray:
    """``(_POINTS, intervals)`` Chebyshev coefficients of ``h`` on each ``[k w, (k + 1) w]``.

    Interpolation at the Chebyshev extreme points (which include both ends of the interval, so
    that neighbouring pieces meet), with the transform summed in extended precision.
    """
    n, wide = _POINTS, np.longdouble
    intervals = int(round(ERF_CUTOFF / _WIDTH))
    theta = np.pi * np.arange(n, dtype=wide) / (n - 1)
    ends = np.ones(n, dtype=wide)
    ends[0] = ends[-1] = 0.5
    basis = 2 / wide(n - 1) * np.cos(np.outer(np.arange(n, dtype=wide), theta)) * ends
    table = np.empty((n, intervals))
    for k in range(intervals):
        points = wide((k + 0.5) * _WIDTH) + wide(0.5 * _WIDTH) * np.cos(theta)
        coefs = basis @ np.array([_h(float(p)) for p in points], dtype=wide)
        coefs[0] *= 0.5
        coefs[-1] *= 0.5
        table[:, k] = coefs.astype(np.float64)
    return table


_TABLE = _chebyshev_table()


def _terms(dtype: Any) -> int:
    """How many coefficients matter in ``dtype``: past the last one above a tenth of its eps."""
    big = np.nonzero(np.abs(_TABLE).max(axis=1) > 0.1 * np.finfo(dtype).eps)[0]
    return int(big[-1]) + 1


_DEVICE_TABLES: dict[tuple[str, str], Any] = {}


def _table_for(x: Any) -> Any:
    """The used rows of the table in ``x``'s dtype on ``x``'s device (copied once per device and dtype)."""
    key = (backend.device_of(x), np.dtype(x.dtype).name)
    table = _DEVICE_TABLES.get(key)
    if table is None:
        xp = backend.get_array_module(x)
        table = xp.asarray(np.ascontiguousarray(_TABLE[: _terms(x.dtype)], dtype=x.dtype))
        _DEVICE_TABLES[key] = table
    return table


def erf(x: Any) -> Any:
    """``erf(x)`` element-wise for a floating NumPy or CuPy array, in its dtype.

    Accurate to a few ulp in float64 (the tests compare with :func:`math.erf`); NaN stays NaN,
    ``erf(+-inf) = +-1`` and ``erf(-0.0) = -0.0``.
    """
    check_floating("erf", x)
    xp = backend.get_array_module(x)
    table = _table_for(x)
    zero = x.dtype.type(0)
    a = xp.abs(x)
    inside = a < ERF_CUTOFF
    clipped = xp.where(inside, a, zero)  # NaN and the tail evaluate harmlessly at 0
    index = xp.minimum(xp.floor(clipped * (1.0 / _WIDTH)), table.shape[1] - 1)
    t = (clipped - (index + 0.5) * _WIDTH) * (2.0 / _WIDTH)
    index = index.astype(xp.int32)
    # Clenshaw: b_j = c_j + 2 t b_{j+1} - b_{j+2}; h = c_0 + t b_1 - b_2.
    two_t = 2 * t
    b1 = xp.zeros_like(t)
    b2 = xp.zeros_like(t)
    for j in range(table.shape[0] - 1, 0, -1):
        b1, b2 = xp.take(table[j], index) + two_t * b1 - b2, b1
    h = xp.take(table[0], index) + t * b1 - b2
    value = xp.where(inside, x * h, xp.where(x < 0, -x.dtype.type(1), x.dtype.type(1)))
    return xp.where(xp.isnan(x), x, value).astype(x.dtype, copy=False)
