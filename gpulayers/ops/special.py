"""Special functions for NumPy and CuPy arrays, without SciPy: ``erf`` and the normal CDF.

Both come from piecewise Chebyshev series of smooth functions of ``a = |x|``, one series per
interval of width :data:`_WIDTH`, evaluated with Clenshaw's recurrence in the input's dtype:

* ``erf(x) = x * h(a)`` with ``h = erf(a) / a`` (so the relative accuracy holds down to the
  smallest inputs), and ``erf = +-1`` from :data:`ERF_CUTOFF` on (exact in float64);
* the normal CDF through the scaled complementary error function ``erfcx(t) = exp(t^2) erfc(t)``
  at ``t = |x| / sqrt(2)``: its tail ``0.5 * exp(-t^2) * erfcx(t)`` is accurate relative to
  itself, so ``Phi(x)`` of a very negative ``x`` keeps its digits (no ``1 + erf`` cancellation).

The coefficients are not transcribed from a table: they are computed once, at import, by
interpolating :func:`math.erf` / :func:`math.erfc` at the Chebyshev extreme points of each
interval (a discrete cosine transform, summed in extended precision). The float64 error of
``erf`` is below 10 units in the last place (``tests/test_activation_extra.py`` measures it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_floating

__all__ = ["erf", "normal_cdf", "ERF_CUTOFF"]

#: ``erf(x)`` rounds to exactly 1 in float64 from about 5.93 on.
ERF_CUTOFF = 6.0
#: ``t`` beyond which the normal tail ``0.5 * erfc(t)`` (below 1e-45) is taken as 0.
_ERFCX_CUTOFF = 10.0
_WIDTH = 0.5
_POINTS = 16  # interpolation points per interval; each series is then cut where it falls below eps


def _erf_over_x(a: float) -> float:
    return math.erf(a) / a if a else 2.0 / math.sqrt(math.pi)


def _erfcx(t: float) -> float:
    # exp(t^2) in extended precision: a rounded t^2 would cost t^2 units in the last place.
    return float(np.longdouble(math.erfc(t)) * np.exp(np.longdouble(t) * np.longdouble(t)))


def _chebyshev_table(fn, cutoff: float) -> np.ndarray:
    """``(_POINTS, intervals)`` Chebyshev coefficients of ``fn`` on each ``[k w, (k + 1) w]`` below ``cutoff``.

    Interpolation at the Chebyshev extreme points (which include both ends of the interval, so
    that neighbouring pieces meet), with the transform summed in extended precision.
    """
    n, wide = _POINTS, np.longdouble
    intervals = int(round(cutoff / _WIDTH))
    theta = np.pi * np.arange(n, dtype=wide) / (n - 1)
    ends = np.ones(n, dtype=wide)
    ends[0] = ends[-1] = 0.5
    basis = 2 / wide(n - 1) * np.cos(np.outer(np.arange(n, dtype=wide), theta)) * ends
    table = np.empty((n, intervals))
    for k in range(intervals):
        points = wide((k + 0.5) * _WIDTH) + wide(0.5 * _WIDTH) * np.cos(theta)
        coefs = basis @ np.array([fn(float(p)) for p in points], dtype=wide)
        coefs[0] *= 0.5
        coefs[-1] *= 0.5
        table[:, k] = coefs.astype(np.float64)
    return table


_TABLES = {"erf": _chebyshev_table(_erf_over_x, ERF_CUTOFF), "erfcx": _chebyshev_table(_erfcx, _ERFCX_CUTOFF)}
_DEVICE_TABLES: dict[tuple[str, str, str], Any] = {}


def _terms(table: np.ndarray, dtype: Any) -> int:
    """How many coefficients matter in ``dtype``: past the last one above a tenth of its eps."""
    big = np.nonzero(np.abs(table).max(axis=1) > 0.1 * np.finfo(dtype).eps)[0]
    return int(big[-1]) + 1


def _table_for(name: str, x: Any) -> Any:
    """The used rows of a table in ``x``'s dtype on ``x``'s device (copied once per device and dtype)."""
    key = (name, backend.device_of(x), np.dtype(x.dtype).name)
    table = _DEVICE_TABLES.get(key)
    if table is None:
        xp = backend.get_array_module(x)
        host = _TABLES[name]
        table = xp.asarray(np.ascontiguousarray(host[: _terms(host, x.dtype)], dtype=x.dtype))
        _DEVICE_TABLES[key] = table
    return table


def _piecewise(name: str, a: Any) -> Any:
    """The series ``name`` at ``a`` (non-negative, inside the table's range), by Clenshaw's recurrence."""
    xp = backend.get_array_module(a)
    table = _table_for(name, a)
    index = xp.minimum(xp.floor(a * (1.0 / _WIDTH)), table.shape[1] - 1)
    t = (a - (index + 0.5) * _WIDTH) * (2.0 / _WIDTH)
    index = index.astype(xp.int32)
    # b_j = c_j + 2 t b_{j+1} - b_{j+2}; the sum is c_0 + t b_1 - b_2.
    two_t = 2 * t
    b1 = xp.zeros_like(t)
    b2 = xp.zeros_like(t)
    for j in range(table.shape[0] - 1, 0, -1):
        b1, b2 = xp.take(table[j], index) + two_t * b1 - b2, b1
    return xp.take(table[0], index) + t * b1 - b2


def erf(x: Any) -> Any:
    """``erf(x)`` element-wise for a floating NumPy or CuPy array, in its dtype.

    Accurate to a few ulp in float64 (the tests compare with :func:`math.erf`); NaN stays NaN,
    ``erf(+-inf) = +-1`` and ``erf(-0.0) = -0.0``.
    """
    check_floating("erf", x)
    xp = backend.get_array_module(x)
    a = xp.abs(x)
    inside = a < ERF_CUTOFF
    h = _piecewise("erf", xp.where(inside, a, x.dtype.type(0)))  # NaN and the tail evaluate at 0
    value = xp.where(inside, x * h, xp.where(x < 0, -x.dtype.type(1), x.dtype.type(1)))
    return xp.where(xp.isnan(x), x, value).astype(x.dtype, copy=False)


def normal_cdf(x: Any) -> tuple[Any, Any]:
    """``(Phi(x), exp(-x^2 / 2))``: the standard normal CDF and the Gaussian factor of its density.

    ``Phi`` is accurate relative to itself in the lower tail too (float32: a few ulp down to the
    smallest normal numbers), since it is computed as ``0.5 * exp(-t^2) * erfcx(t)`` there.
    NaN stays NaN; ``Phi(-inf) = 0``, ``Phi(inf) = 1``.
    """
    check_floating("normal_cdf", x)
    xp = backend.get_array_module(x)
    t = xp.abs(x) * x.dtype.type(math.sqrt(0.5))
    inside = t < _ERFCX_CUTOFF
    zero = x.dtype.type(0)
    # exp(-x^2 / 2) with x^2 = hi^2 + (x - hi)(x + hi): hi (x to 1/256) has a square exact in
    # float32 for |x| < 16, so the large part of the exponent carries no rounding error (a
    # relative error e in x^2 would cost x^2 / 2 * e in the result).
    near = xp.where(inside, x, zero)
    hi = xp.round(near * 256.0) * (1.0 / 256.0)
    gauss = xp.exp(-0.5 * (hi * hi)) * xp.exp(-0.5 * ((near - hi) * (near + hi)))
    gauss = xp.where(inside, gauss, xp.exp(-0.5 * (x * x)))  # below 1e-43 out there (0 at +-inf)
    tail = (0.5 * gauss) * _piecewise("erfcx", xp.where(inside, t, zero))
    tail = xp.where(inside, tail, zero)
    cdf = xp.where(x < 0, tail, 1 - tail)
    return xp.where(xp.isnan(x), x, cdf).astype(x.dtype, copy=False), gauss
