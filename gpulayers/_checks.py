"""Argument and input checks shared by the ops and the layers.

Every message names the layer (or op), what was expected and what came, so that a user
can fix the call without reading the source.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import backend

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_int(name: str, arg: str, value: Any, minimum: int | None = None) -> int:
    """An int (not a bool, not a float) at least ``minimum``, as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected {arg} to be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected {arg} >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, arg: str, value: Any) -> bool:
    """A bool (Python or NumPy), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected {arg} to be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_real(
    name: str,
    arg: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
) -> float:
    """A finite real number (not a bool) within the bounds, as a Python float.

    ``minimum``/``maximum`` are inclusive bounds, ``above`` an exclusive lower bound.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {arg} to be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite {arg}, got {value!r}")
    if (
        (minimum is not None and v < minimum)
        or (maximum is not None and v > maximum)
        or (above is not None and v <= above)
    ):
        lo = f"> {above}" if above is not None else (f">= {minimum}" if minimum is not None else "")
        hi = f"<= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name}: expected {arg} {' and '.join(b for b in (lo, hi) if b)}, got {value!r}")
    return v


def pair(name: str, arg: str, value: Any, *, minimum: int = 0) -> tuple[int, int]:
    """An int or a pair of ints as ``(h, w)``, each at least ``minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name}: expected {arg} to be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name}: expected {arg} >= {minimum}, got {value!r}")
    return out


def check_floating(name: str, x: Any) -> None:
    """The input must be a NumPy or CuPy array of a floating dtype."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point input (float32 or float64), got dtype {x.dtype}")


def check_input(name: str, x: Any, ndim: int | tuple[int, ...], layout: str) -> None:
    """Floating array of the given rank (``layout`` names the axes for the message)."""
    check_floating(name, x)
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected a {want} input {layout}, got shape {tuple(x.shape)}")


def check_same_device(name: str, x: Any, reference: Any, what: str = "weight", *, same_dtype: bool = True) -> None:
    """Input and parameters (or targets) must live on the same device, with the same dtype unless told."""
    if reference is None:
        return
    dx, dr = backend.device_of(x), backend.device_of(reference)
    if dx != dr:
        raise RuntimeError(
            f"{name}: input is on {dx} but the {what} is on {dr}; move one with .to(device) / gl.to_device"
        )
    if same_dtype and x.dtype != reference.dtype:
        raise TypeError(
            f"{name}: input dtype {x.dtype} does not match the {what} dtype {reference.dtype}; "
            "cast the input or call .to(dtype=...) on the layer"
        )


def check_conv_arrays(name: str, x: Any, weight: Any, weight_layout: str) -> None:
    """The input and weight of a convolution-family op: 4-D floating arrays on one device, one dtype.

    ``weight_layout`` names the weight's axes for the message, e.g. ``"(out, in/groups, kh, kw)"``.
    """
    check_input(name, x, 4, "(N, C, H, W)")
    check_floating(name + " weight", weight)
    if weight.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D weight {weight_layout}, got shape {tuple(weight.shape)}")
    check_same_device(name, x, weight)


def check_bias(name: str, x: Any, bias: Any, out_channels: int) -> None:
    """``bias`` is None, or ``(out_channels,)`` on the input's device with its dtype."""
    if bias is None:
        return
    check_same_device(name, x, bias, what="bias")
    if tuple(bias.shape) != (out_channels,):
        raise ValueError(f"{name}: expected a bias of shape ({out_channels},), got {tuple(bias.shape)}")


def check_pair_of_floats(name: str, input: Any, target: Any, note: str = "") -> None:
    """``input`` and ``target`` floating-point arrays of one shape on one device (any float dtypes);
    ``note`` is appended to the shape message."""
    for what, arr in (("input", input), ("target", target)):
        if not hasattr(arr, "dtype") or np.dtype(arr.dtype).kind != "f":
            got = getattr(arr, "dtype", type(arr).__name__)
            raise TypeError(f"{name}: expected a floating-point {what} (float32 or float64), got {got}")
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(
            f"{name}: expected target of the input's shape {tuple(input.shape)}, got {tuple(target.shape)}{note}"
        )
    check_same_device(name, input, target, "target", same_dtype=False)


def check_channels(name: str, x: Any, expected: int, axis: int = 1, what: str = "channels") -> None:
    got = x.shape[axis]
    if got != expected:
        raise ValueError(f"{name}: expected input with {expected} {what}, got {got} (input shape {tuple(x.shape)})")


def check_grad(name: str, grad: Any, shape: tuple[int, ...], like: Any) -> None:
    """``backward``'s gradient must have the shape of the last output and live on its device."""
    check_floating(name + ".backward", grad)
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"{name}.backward: expected grad_output of shape {tuple(shape)}, got {tuple(grad.shape)}")
    if backend.device_of(grad) != backend.device_of(like):
        raise RuntimeError(
            f"{name}.backward: grad_output is on {backend.device_of(grad)} but the forward ran on "
            f"{backend.device_of(like)}"
        )


def grad_marker(x: Any) -> Any:
    """A 0-size array with the input's dtype and device, for checking the gradient in backward."""
    with backend.device_scope(x):
        return x[:0].copy()


def no_forward(name: str) -> RuntimeError:
    return RuntimeError(f"{name}.backward: called before forward (no saved input); run forward first")


def pooled_size(name: str, size: int, k: int, s: int, p: int, d: int, ceil_mode: bool, axis: str) -> int:
    """PyTorch's pooling output size, raising when no window fits.

    ``floor_or_ceil((size + 2p - span) / s) + 1`` with ``span = d*(k-1) + 1``; with ``ceil_mode`` a
    last window that would start beyond the input and its left padding is dropped. A window may
    run past the padded input in ceil mode (it then covers what is there), so the only failure is
    an output with no window at all.
    """
    span = d * (k - 1) + 1
    num = size + 2 * p - span
    out = (-(-num // s) if ceil_mode else num // s) + 1  # Python's // floors, as PyTorch's div_rtn
    # The last window must start inside the input or its left padding (PyTorch's rule).
    if ceil_mode and out >= 1 and (out - 1) * s >= size + p:
        out -= 1
    if out < 1:
        raise ValueError(
            f"{name}: the window ({span} after dilation) is larger than the padded input {axis} "
            f"({size} + 2*{p} = {size + 2 * p})"
        )
    return out


def conv_size(name: str, size: int, k: int, s: int, p: int, d: int, axis: str) -> int:
    """Convolution output size, raising when the kernel does not fit the padded input."""
    span = d * (k - 1) + 1
    if size + 2 * p < span:
        raise ValueError(
            f"{name}: the kernel ({span} after dilation) is larger than the padded input {axis} "
            f"({size} + 2*{p} = {size + 2 * p})"
        )
    return (size + 2 * p - span) // s + 1
