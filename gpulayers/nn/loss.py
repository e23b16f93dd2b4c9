"""Loss modules: CrossEntropyLoss and MSELoss.

``loss = criterion(logits, target)`` returns the reduced loss as a Python float (the array for
``reduction="none"``); ``criterion.backward()`` returns the gradient w.r.t. ``logits``, for the
loss as defined (scaled by the reduction). On the GPU only the loss value crosses to the host.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..ops import loss as ops
from .module import Module

__all__ = ["CrossEntropyLoss", "MSELoss"]


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = ops.check_reduction(type(self).__name__, reduction)
        self._cache = None

    def _result(self, loss: Any) -> Any:
        return loss if self.reduction == "none" else float(loss)

    def _backward(self, fn, grad_output: Any) -> Any:
        name = type(self).__name__
        if self._cache is None:
            raise RuntimeError(f"{name}.backward: called before forward (no saved loss); run criterion(input, target)")
        try:
            return fn(self._cache, grad_output)
        except ValueError as exc:
            raise ValueError(f"{name}.backward: {str(exc).removeprefix('loss backward: ')}") from None

    def extra_repr(self) -> str:
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"


def _rename(name: str, exc: Exception) -> Exception:
    """The op's error, re-raised under the layer's name."""
    text = str(exc)
    for op in ("cross_entropy", "mse_loss"):
        if text.startswith(op + ":"):
            text = name + text[len(op) :]
            # a plain exception of the same kind (subclasses may not take a message argument)
            kind = next(k for k in (ValueError, TypeError, RuntimeError) if isinstance(exc, k))
            return kind(text)
    return exc


class CrossEntropyLoss(_Loss):
    """Cross-entropy between raw logits and integer class indices (log-softmax + NLL).

    Numerically stable for large logits (the per-sample maximum is subtracted first).

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        label_smoothing: mix ``label_smoothing / C`` of a uniform distribution into the target,
            as in PyTorch. Defaults to 0.

    Shape:
        - Input: (N, C) logits (or (N, C, d1, ...))
        - Target: (N,) integer class indices in [0, C) (or (N, d1, ...)); int64 or int32
        - Output: a float, or (N,) / (N, d1, ...) for ``reduction="none"``
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(reduction)
        self.label_smoothing = ops.check_label_smoothing("CrossEntropyLoss", label_smoothing)

    def forward(self, input: Any, target: Any) -> Any:
        name = "CrossEntropyLoss"
        self._cache = None
        gpu = backend.is_cuda_array(input)
        try:
            loss, cache = ops.cross_entropy_forward(
                input, target, self.reduction, self.label_smoothing, check_labels=not gpu
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise _rename(name, exc) from None
        if gpu and self.reduction != "none":
            # One transfer for the loss and the label check together.
            xp = backend.get_array_module(input)
            both = xp.stack([loss.astype(xp.float64), cache["invalid"].astype(xp.float64)]).get()
            if both[1]:
                raise ops.label_range_error(name, target, input.shape[1])
            value = float(both[0])
        else:
            if gpu and bool(cache["invalid"]):
                raise ops.label_range_error(name, target, input.shape[1])
            value = loss
        self._cache = cache
        return self._result(value)

    def backward(self, grad_output: Any = None) -> Any:
        """d loss / d input (``grad_output`` scales it; an array of the target's shape for "none")."""
        return self._backward(ops.cross_entropy_backward, grad_output)

    def extra_repr(self) -> str:
        parts = [super().extra_repr()] if self.reduction != "mean" else []
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)


class MSELoss(_Loss):
    """Mean squared error ``(input - target) ** 2``, reduced.

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        - Input: (*), any shape
        - Target: (*), the same shape (no broadcasting); floating, cast to the input's dtype
        - Output: a float, or the input's shape for ``reduction="none"``
    """

    def forward(self, input: Any, target: Any) -> Any:
        self._cache = None
        try:
            loss, cache = ops.mse_loss_forward(input, target, self.reduction)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise _rename("MSELoss", exc) from None
        self._cache = cache
        return self._result(loss)

    def backward(self, grad_output: Any = None) -> Any:
        """d loss / d input (``grad_output`` scales it; an array of the input's shape for "none")."""
        return self._backward(ops.mse_loss_backward, grad_output)
