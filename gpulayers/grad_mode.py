"""Gradient mode: ``no_grad``, ``enable_grad``, ``set_grad_enabled`` and ``is_grad_enabled``.

Layers keep what their backward needs only while gradient mode is on (the default). Inside
``with gl.no_grad():`` a forward keeps nothing, so evaluation and inference use no memory for
backward. The mode is per thread, as in PyTorch.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled"]

_state = threading.local()


def is_grad_enabled() -> bool:
    """True when forwards keep what backward needs (the default)."""
    return getattr(_state, "enabled", True)


def _set(mode: bool) -> None:
    _state.enabled = bool(mode)


class _GradMode:
    """A context manager that is also a decorator; subclasses fix the mode."""

    _mode = True

    def __enter__(self) -> None:
        self._previous = is_grad_enabled()
        _set(self._mode)

    def __exit__(self, *exc: Any) -> None:
        _set(self._previous)

    def __call__(self, fn: Callable) -> Callable:
        mode = self._mode

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            previous = is_grad_enabled()
            _set(mode)
            try:
                return fn(*args, **kwargs)
            finally:
                _set(previous)

        return wrapped


class no_grad(_GradMode):  # noqa: N801 - PyTorch's name
    """Forwards inside keep nothing for backward.

    Use as ``with gl.no_grad(): ...`` or as a decorator ``@gl.no_grad()``. A ``backward`` that
    needs a forward run inside raises ``RuntimeError``.
    """

    _mode = False


class enable_grad(_GradMode):  # noqa: N801 - PyTorch's name
    """Turn gradient mode back on inside a ``no_grad`` block (context manager or decorator)."""

    _mode = True


class set_grad_enabled(_GradMode):  # noqa: N801 - PyTorch's name
    """Set gradient mode on or off: as a function call, a context manager or a decorator.

    Args:
        mode: True keeps what backward needs, False keeps nothing.
    """

    def __init__(self, mode: bool) -> None:
        self._previous = is_grad_enabled()
        self._mode = bool(mode)
        _set(self._mode)

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: Any) -> None:
        _set(self._previous)

    def __call__(self, fn: Callable) -> Callable:
        _set(self._previous)  # as a decorator the mode applies only inside ``fn``
        return super().__call__(fn)
