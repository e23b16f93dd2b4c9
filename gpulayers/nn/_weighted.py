"""The base of layers with a ``weight`` and an optional ``bias`` (Conv2d, ConvTranspose2d, Linear)."""

from __future__ import annotations

from typing import Any

from .._checks import check_bool
from .init import default_weight_and_bias
from .module import Module, Parameter


class WeightBiasLayer(Module):
    """A layer with ``weight`` and ``bias`` parameters whose op's backward can skip the input gradient.

    Subclasses create the parameters with :meth:`_create_parameters` and set ``_backward_op``:
    ``(grad_output, cache, input_grad) -> (dx, dweight, dbias)`` (``dx`` may be None without
    ``input_grad``), and save the op's cache in ``forward``.
    """

    _backward_op: Any

    def _create_parameters(self, name: str, shape: tuple, fan_out: int, bias: Any) -> None:
        """``weight`` of ``shape`` and, when ``bias``, a ``bias`` of ``fan_out`` values (PyTorch's init)."""
        w, b = default_weight_and_bias(shape, fan_out, check_bool(name, "bias", bias))
        self.weight = Parameter(w)
        if b is not None:
            self.bias = Parameter(b)
        else:
            self.register_parameter("bias", None)

    def backward(self, grad_output: Any) -> Any:
        return self._backward(grad_output, self.needs_input_grad)

    def _backward_without_input(self, grad_output: Any) -> Any:
        return self._backward(grad_output, False)

    def _backward(self, grad_output: Any, input_grad: bool) -> Any:
        dx, dw, db = type(self)._backward_op(grad_output, self._op_cache(grad_output), input_grad)
        self._accumulate(self.weight, dw)
        self._accumulate(self.bias, db)
        return dx
