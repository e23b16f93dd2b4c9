"""Loss modules: CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss and MSELoss.

``loss = criterion(logits, target)`` returns the reduced loss as a 0-d array on the input's device
(NumPy on the CPU, CuPy on the GPU; the per-sample array for ``reduction="none"``), so that
nothing waits for the GPU until the caller asks (``float(loss)`` or ``loss.item()``);
``criterion.backward()`` returns the gradient w.r.t. ``logits``, for the loss as defined (scaled
by the reduction).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..ops import loss as ops
from ..ops.bce_loss import bce_with_logits_backward, bce_with_logits_forward
from ..ops.nll_loss import nll_loss_backward, nll_loss_forward
from .module import Module

__all__ = ["CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "MSELoss"]


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = ops.check_reduction(type(self).__name__, reduction)

    def _result(self, loss: Any) -> Any:
        if backend.is_cuda_array(loss):
            return loss
        return np.asarray(loss)  # a NumPy scalar from a reduction becomes a 0-d array

    def _backward(self, fn, grad_output: Any) -> Any:
        (cache,) = self.saved_for_backward()
        return fn(cache, grad_output)

    def extra_repr(self) -> str:
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"


def _weight_buffer(module: Module, name: str, what: str, value: Any, ndim: int | None = 1) -> None:
    """Register ``value`` (a floating array or None) as the buffer ``what``, as PyTorch's losses do."""
    if value is not None:
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
            value = value.detach().cpu().numpy()
        if not hasattr(value, "dtype") or np.dtype(value.dtype).kind != "f":
            got = getattr(value, "dtype", type(value).__name__)
            raise TypeError(f"{name}: expected {what} to be a floating-point array or None, got {got}")
        if ndim is not None and value.ndim != ndim:
            raise ValueError(f"{name}: expected a 1-D {what} (one value per class), got shape {tuple(value.shape)}")
        if not bool(backend.get_array_module(value).isfinite(value).all()):
            raise ValueError(f"{name}: expected finite {what} values, got {backend.to_numpy(value)!r}")
    module.register_buffer(what, value)


class _ClassLoss(_Loss):
    """Shared by the losses over class indices: ``weight`` buffer, ``ignore_index``, the GPU label check."""

    def __init__(self, weight: Any, ignore_index: int, reduction: str) -> None:
        super().__init__(reduction)
        name = type(self).__name__
        _weight_buffer(self, name, "weight", weight)
        self.ignore_index = ops.check_ignore_index(name, ignore_index)

    def _run(self, fn, input: Any, target: Any, **kwargs: Any) -> Any:
        name = type(self).__name__
        gpu = backend.is_cuda_array(input)
        loss, cache = fn(input, target, check_labels=not gpu, name=name, **kwargs)
        if gpu and not cache.fused and bool(cache.invalid):  # the fused kernel checks on the device
            raise ops.label_range_error(name, target, input.shape[1], self.ignore_index)
        self.save_for_backward(cache)
        self._last_cache = cache  # for check_targets, also after a forward under no_grad
        self._target = (target, input.shape[1])
        return self._result(loss)

    def check_targets(self) -> None:
        """Raise the error naming the out-of-range class indices of the last forward, if any.

        On the GPU the (N, C) path checks the targets on the device and makes the loss NaN
        instead of raising; this reads that flag on the host (a synchronisation). Free on the
        CPU, where the forward has already raised.
        """
        cache = self.__dict__.get("_last_cache")
        if cache is None or not cache.fused or not bool(cache.invalid):
            return
        target, classes = self._target
        raise ops.label_range_error(type(self).__name__, target, classes, self.ignore_index)

    def extra_repr(self) -> str:
        parts = [super().extra_repr()] if self.reduction != "mean" else []
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        return ", ".join(parts)


class CrossEntropyLoss(_ClassLoss):
    """Cross-entropy between raw logits and class indices or class probabilities (log-softmax + NLL).

    Numerically stable for large logits (the per-sample maximum is subtracted first). With
    ``weight``, ``ignore_index`` and ``label_smoothing`` together it follows PyTorch's formulas
    exactly (see :func:`gpulayers.ops.loss.cross_entropy_forward`): "mean" divides by the total
    weight of the samples not ignored.

    Args:
        weight: per-class weights ``(C,)`` (kept as the buffer ``weight``), or None.
        ignore_index: target value whose samples add nothing (index targets). Defaults to -100.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        label_smoothing: mix ``label_smoothing / C`` of a uniform distribution into the target,
            as in PyTorch. Defaults to 0.

    Shape:
        - Input: (N, C) logits (or (N, C, d1, ...))
        - Target: (N,) integer class indices in [0, C) or ``ignore_index`` (or (N, d1, ...)); int64
          or int32. Or class probabilities, floating, of the input's shape.
        - Output: a 0-d array, or (N,) / (N, d1, ...) for ``reduction="none"``

    On the GPU, (N, C) logits with class indices are checked on the device: an out-of-range
    class index makes the loss and its gradient NaN instead of raising at once;
    :meth:`check_targets` raises the error naming the bad labels (one host read).
    """

    def __init__(
        self,
        weight: Any = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.label_smoothing = ops.check_label_smoothing("CrossEntropyLoss", label_smoothing)

    def forward(self, input: Any, target: Any) -> Any:
        return self._run(
            ops.cross_entropy_forward,
            input,
            target,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            weight=self.weight,
            ignore_index=self.ignore_index,
        )

    def backward(self, grad_output: Any = None) -> Any:
        """d loss / d input (``grad_output`` scales it; an array of the target's shape for "none")."""
        return self._backward(ops.cross_entropy_backward, grad_output)

    def extra_repr(self) -> str:
        parts = [p for p in [super().extra_repr()] if p]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)


class NLLLoss(_ClassLoss):
    """Negative log-likelihood of log-probabilities (e.g. after :class:`LogSoftmax`) and class indices.

    ``loss_i = -weight[t_i] * input[i, t_i]``, nothing for ``t_i == ignore_index``; "mean" divides
    by the total weight of the samples not ignored, as PyTorch does.

    Args:
        weight: per-class weights ``(C,)`` (kept as the buffer ``weight``), or None.
        ignore_index: target value whose samples add nothing. Defaults to -100.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        - Input: (N, C) log-probabilities (or (N, C, d1, ...))
        - Target: (N,) integer class indices (or (N, d1, ...))
        - Output: a 0-d array, or the target's shape for ``reduction="none"``
    """

    def __init__(self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__(weight, ignore_index, reduction)

    def forward(self, input: Any, target: Any) -> Any:
        return self._run(
            nll_loss_forward,
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def backward(self, grad_output: Any = None) -> Any:
        """d loss / d input (``grad_output`` scales it; an array of the target's shape for "none")."""
        return self._backward(nll_loss_backward, grad_output)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on raw logits (a sigmoid and BCE in one, without overflow).

    ``loss = -weight * (pos_weight * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x)))``.

    Args:
        weight: rescaling weight broadcasting to the input's shape (the buffer ``weight``), or None.
        reduction: ``"mean"`` (default, over every element), ``"sum"`` or ``"none"``.
        pos_weight: weight of the positive examples, broadcasting to the input's shape (usually
            one per class along the last axis; the buffer ``pos_weight``), or None.

    Shape:
        - Input: (*), logits
        - Target: (*), the same shape; floating, values in [0, 1]
        - Output: a 0-d array, or the input's shape for ``reduction="none"``
    """

    def __init__(self, weight: Any = None, reduction: str = "mean", pos_weight: Any = None) -> None:
        super().__init__(reduction)
        _weight_buffer(self, "BCEWithLogitsLoss", "weight", weight, ndim=None)
        _weight_buffer(self, "BCEWithLogitsLoss", "pos_weight", pos_weight, ndim=None)

    def forward(self, input: Any, target: Any) -> Any:
        loss, cache = bce_with_logits_forward(
            input, target, self.weight, self.reduction, self.pos_weight, name="BCEWithLogitsLoss"
        )
        self.save_for_backward(cache)
        return self._result(loss)

    def backward(self, grad_output: Any = None) -> Any:
        """d loss / d input (``grad_output`` scales it; an array of the input's shape for "none")."""
        return self._backward(bce_with_logits_backward, grad_output)


class MSELoss(_Loss):
    """Mean squared error ``(input - target) ** 2``, reduced.

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        - Input: (*), any shape
        - Target: (*), the same shape (no broadcasting); floating, cast to the input's dtype
        - Output: a 0-d array, or the input's shape for ``reduction="none"``
    """

    def forward(self, input: Any, target: Any) -> Any:
        loss, cache = ops.mse_loss_forward(input, target, self.reduction, name="MSELoss")
        self.save_for_backward(cache)
        return self._result(loss)

    def backward(self, grad_output: Any = None) -> Any:
        """d loss / d input (``grad_output`` scales it; an array of the input's shape for "none")."""
        return self._backward(ops.mse_loss_backward, grad_output)
