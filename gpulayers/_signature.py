"""Constructors whose argument list is data: one list shared by several classes, PyTorch's order kept.

:func:`signed_init` makes an ``__init__`` that shows ``signature`` to ``inspect.signature`` and
``help``, binds every call to it (positional arguments in its order, defaults filled in) and hands
the bound arguments on. ``Conv2d``/``ConvTranspose2d`` and ``AdamW`` are built this way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["signed_init"]


def signed_init(
    signature: inspect.Signature, body: Callable[..., None], name: Callable[[Any], str] | None = None
) -> Callable[..., None]:
    """An ``__init__`` with ``signature`` (``self`` first) that calls ``body(self, **arguments)``.

    Args:
        signature: the constructor's signature, ``self`` included.
        body: called with the bound arguments by name (defaults filled in).
        name: ``name(self)`` prefixes the TypeError of a call that does not fit the signature
            (``"Conv2d: missing a required argument: ..."``); None leaves Python's message as it is.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            if name is None:
                raise
            raise TypeError(f"{name(self)}: {exc}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments[next(iter(signature.parameters))]  # self
        body(self, **arguments)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    return __init__
