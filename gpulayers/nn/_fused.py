"""Layers that ``Sequential`` may run inside the passes of the BatchNorm before them (ReLU, MaxPool2d)."""

from __future__ import annotations

from typing import Any

# What such a layer keeps for a use whose forward the preceding BatchNorm ran.
FUSED = "applied by the preceding BatchNorm"


class FusedStandIn:
    """Mixin for a layer ``Sequential`` can fuse into the preceding BatchNorm: a fused use records
    ``FUSED`` (:meth:`_record_fused`) and its backward passes the gradient on, since the
    BatchNorm's backward does this layer's part; other uses run :meth:`_unfused_backward`."""

    def _record_fused(self, y: Any) -> None:
        """Stand in for a forward that the preceding BatchNorm ran in its own passes (``y``: the output)."""
        self.save_for_backward(FUSED, output=y)

    def backward(self, grad_output: Any) -> Any:
        cache = self._op_cache(grad_output)
        return grad_output if cache is FUSED else self._unfused_backward(grad_output, cache)

    def _unfused_backward(self, grad_output: Any, cache: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError
