"""A layer-by-layer table of a model: output shapes and parameter counts (like torchsummary)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import backend
from .._checks import check_int
from ..grad_mode import no_grad
from .module import Module

__all__ = ["summary"]


def _count(module: Module) -> int:
    return sum(int(p.data.size) for p in module._parameters.values() if p is not None)


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in value
    ):
        raise TypeError(f"summary: expected input_shape to be an int or a tuple of ints, got {value!r}")
    return tuple(int(s) for s in value)


def summary(
    model: Module,
    *input_shapes: Sequence[int] | int,
    batch_size: int = 1,
    dtype: Any = None,
    print_fn: Callable[[str], Any] | None = None,
) -> str:
    """Run ``model`` on zeros and tabulate each leaf layer's output shape and parameter count.

    The forward runs in eval mode (batch norm uses its running statistics, dropout is off) under
    ``gl.no_grad()``; every module's mode is restored afterwards, so the call changes nothing.

    Args:
        model: the module to describe.
        *input_shapes: the shape of **one example, without the batch dimension**, for each of the
            model's inputs, as in torchsummary: ``(1, 28, 28)`` for MNIST images, ``(784,)`` or
            ``784`` for flat vectors; ``summary(siamese, (1, 28, 28), (1, 28, 28))`` for two inputs.
        batch_size: the batch of the dummy inputs (default 1). Output shapes print the batch as -1.
        dtype: the dummy inputs' dtype (default: that of the model's first parameter, else float32).
        print_fn: e.g. ``print``; called with the table when given.

    Returns:
        The table as text: one row per leaf layer call (name, type, output shape, parameters),
        then the total and trainable parameter counts, the buffer count and the sizes in MB.
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary: expected a Module, got {type(model).__name__}")
    if not input_shapes:
        raise TypeError("summary: expected at least one input shape, e.g. summary(model, (1, 28, 28))")
    shapes = [_shape(s) for s in input_shapes]
    batch_size = check_int("summary", "batch_size", batch_size)
    if any(s < 1 for shape in shapes for s in shape) or batch_size < 1:
        raise ValueError(
            f"summary: expected positive sizes, got input_shape {', '.join(map(str, shapes))} "
            f"and batch_size {batch_size}"
        )
    params = list(model.parameters())
    reference = params[0].data if params else np.zeros(0, np.float32)
    xp = backend.get_array_module(reference)
    dtype = np.dtype(dtype if dtype is not None else (reference.dtype if reference.dtype.kind == "f" else np.float32))
    xs = [xp.zeros((batch_size, *shape), dtype=dtype) for shape in shapes]

    names = {id(m): name for name, m in model.named_modules()}
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    records: list[tuple[str, str, tuple[int, ...], int]] = []
    modes = [(m, m.training) for m in model.modules()]

    def hook(module: Module, forward: Callable) -> Callable:
        def recorded(*args, **kwargs):
            out = forward(*args, **kwargs)
            name = names.get(id(module)) or type(module).__name__
            records.append((name, type(module).__name__, tuple(out.shape), _count(module)))
            return out

        return recorded

    try:
        for m in leaves:
            object.__setattr__(m, "forward", hook(m, m.forward))
        model.eval()
        with no_grad():
            out = model(*xs)
    finally:
        for m in leaves:
            m.__dict__.pop("forward", None)
        for m, mode in modes:
            object.__setattr__(m, "training", mode)

    total = sum(int(p.data.size) for p in params)
    param_bytes = sum(int(p.data.nbytes) for p in params)
    buffers = [b for _, b in model.named_buffers()]
    n_buffers = sum(int(b.size) for b in buffers)
    buffer_bytes = sum(int(b.nbytes) for b in buffers)
    act_bytes = sum(int(np.prod(r[2])) for r in records) * dtype.itemsize

    def fmt_shape(s: tuple[int, ...]) -> str:
        return "[" + ", ".join(["-1", *map(str, s[1:])]) + "]"

    rows = [(name, kind, fmt_shape(s), f"{n:,}") for name, kind, s, n in records]
    head = ("Layer", "Type", "Output shape", "Param #")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]

    def line(cells) -> str:
        return "  ".join(
            [cells[0].ljust(widths[0] + 2), cells[1].ljust(widths[1] + 2), cells[2].rjust(widths[2] + 2)]
        ) + cells[3].rjust(widths[3] + 4)

    total_width = len(line(head))
    mb = 1024.0**2
    text = [
        "=" * total_width,
        line(head),
        "=" * total_width,
        *(line(r) for r in rows),
        "=" * total_width,
        f"Input shape{'s' if len(shapes) > 1 else ''}: {', '.join(fmt_shape((batch_size, *s)) for s in shapes)} "
        f"{dtype}; output shape: {fmt_shape(tuple(out.shape))}",
        f"Total params: {total:,}",
        f"Trainable params: {total:,}",
        "Non-trainable params: 0",
        f"Buffers (running statistics): {n_buffers:,}",
        f"Params size (MB): {param_bytes / mb:.3f}",
        f"Buffers size (MB): {buffer_bytes / mb:.3f}",
        f"Forward activations, batch {batch_size} (MB): {act_bytes / mb:.3f}",
        "=" * total_width,
    ]
    result = "\n".join(text)
    if print_fn is not None:
        print_fn(result)
    return result
