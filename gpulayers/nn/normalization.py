"""BatchNorm1d, BatchNorm2d, GroupNorm and LayerNorm (PyTorch's arguments, buffers and state_dict keys)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .._checks import check_bool
from ..ops import max_pool2d as max_pool_ops
from ..ops import normalization as ops
from ..ops.group_norm import group_norm_backward, group_norm_forward
from ..ops.layer_norm import layer_norm_backward, layer_norm_forward
from .module import Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm"]


class _Affine(Module):
    """A normalisation layer with an optional per-element ``weight`` (ones) and ``bias`` (zeros),
    whose op's backward gives ``(dx, dweight, dbias)`` (``_backward_op``, set by each subclass)."""

    _backward_op: Any

    def _affine_parameters(self, shape: Any, weight: bool, bias: bool) -> None:
        self.register_parameter("weight", Parameter(np.ones(shape, dtype=np.float32)) if weight else None)
        self.register_parameter("bias", Parameter(np.zeros(shape, dtype=np.float32)) if weight and bias else None)

    def backward(self, grad_output: Any) -> Any:
        dx, dw, db = type(self)._backward_op(grad_output, self._op_cache(grad_output))
        self._accumulate(self.weight, dw)
        self._accumulate(self.bias, db)
        return dx


class _BatchNorm(_Affine):
    """Shared state and logic; subclasses fix the accepted input ranks."""

    _backward_op = staticmethod(ops.batch_norm_backward)

    _ranks: tuple[int, ...] = ()
    _layout = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
            raise TypeError(f"{name}: expected num_features to be an int, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"{name}: expected num_features >= 1, got {num_features}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < math.inf:
            raise ValueError(f"{name}: expected a finite eps > 0 (it keeps the division finite), got {eps!r}")
        if momentum is not None and (
            isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1
        ):
            raise ValueError(f"{name}: expected momentum in [0, 1] or None (cumulative average), got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = check_bool(name, "affine", affine)
        self.track_running_stats = check_bool(name, "track_running_stats", track_running_stats)
        c = self.num_features
        self._affine_parameters(c, self.affine, True)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c, dtype=np.float32))
            self.register_buffer("running_var", np.ones(c, dtype=np.float32))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, counter 0 (in place, on the buffers' device)."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def forward(self, x: Any) -> Any:
        return self._forward(x)

    def _forward(self, x: Any, relu: bool = False) -> Any:
        """The forward, optionally with a ReLU applied to the output (``Sequential`` fuses a
        ``BatchNorm`` followed by ``ReLU`` this way); ``backward`` then masks the gradient too."""
        return self._run(x, relu, None)[0]

    def _forward_relu_pool(self, x: Any, pool: Any) -> tuple[Any, bool]:
        """``(y, pooled)``: the forward with a ReLU and, when the op can take it on (NumPy, windows
        that tile the input), the ``MaxPool2d`` ``pool`` after it in the same blocks; ``y`` is then
        the pooled output and ``backward`` takes its gradient (``Sequential`` fuses the three)."""
        pool_args = max_pool_ops.pool_arguments("MaxPool2d", *pool._op_args())
        y, cache = self._run(x, True, pool_args)
        return y, getattr(cache, "pool", None) is not None

    def _run(self, x: Any, relu: bool, pool: Any) -> tuple[Any, Any]:
        y, cache = ops.batch_norm_forward(
            x,
            self.weight.data if self.weight is not None else None,
            self.bias.data if self.bias is not None else None,
            self.running_mean,
            self.running_var,
            self.training or not self.track_running_stats,
            self.momentum,
            self.eps,
            self.num_batches_tracked,
            name=type(self).__name__,
            ndim=self._ranks,
            relu=relu,
            pool=pool,
        )
        self.save_for_backward(cache, output=y)
        return y, cache

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input over the batch (and length) axes.

    In training the batch mean and (biased) variance normalise the input and the running
    statistics are updated with the unbiased variance; in eval the running statistics are used
    (batch statistics when ``track_running_stats=False``). See ``torch.nn.BatchNorm1d``.

    Args:
        num_features: C, the number of features (channels).
        eps: added to the variance for stability, > 0. Defaults to 1e-5.
        momentum: running-average factor, or None for a cumulative average. Defaults to 0.1.
        affine: learn a per-feature scale ``weight`` (ones) and shift ``bias`` (zeros). Defaults to True.
        track_running_stats: keep ``running_mean``, ``running_var`` and ``num_batches_tracked``
            buffers. Defaults to True.

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same as the input
    """

    _ranks = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input over the batch and spatial axes.

    Same arguments and behaviour as :class:`BatchNorm1d` (see ``torch.nn.BatchNorm2d``).

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for stability, > 0. Defaults to 1e-5.
        momentum: running-average factor, or None for a cumulative average. Defaults to 0.1.
        affine: learn a per-channel ``weight`` and ``bias``. Defaults to True.
        track_running_stats: keep running statistics buffers. Defaults to True.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """

    _ranks = (4,)
    _layout = "(N, C, H, W)"


def _check_eps(name: str, eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < math.inf:
        raise ValueError(f"{name}: expected a finite eps >= 0, got {eps!r}")
    return float(eps)


def _count(name: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected {arg} to be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected {arg} >= 1, got {value}")
    return int(value)


class GroupNorm(_Affine):
    """Group normalisation: per sample, each group of channels normalised over its channels and positions.

    Unlike batch normalisation there are no running statistics, so training and eval agree
    (``torch.nn.GroupNorm``).

    Args:
        num_groups: number of groups; ``num_channels`` must divide by it.
        num_channels: C, the channels of the input.
        eps: added to the variance for stability. Defaults to 1e-5.
        affine: learn a per-channel ``weight`` (ones) and ``bias`` (zeros). Defaults to True.
        bias: keyword-only; with ``affine``, whether to learn the ``bias`` too. Defaults to True.

    Shape:
        - Input: (N, C, *)
        - Output: same as the input
    """

    _backward_op = staticmethod(group_norm_backward)

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *, bias: bool = True
    ) -> None:
        super().__init__()
        name = "GroupNorm"
        self.num_groups = _count(name, "num_groups", num_groups)
        self.num_channels = _count(name, "num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"{name}: expected num_channels divisible by num_groups, got num_channels={num_channels}, "
                f"num_groups={num_groups}"
            )
        self.eps = _check_eps(name, eps)
        self.affine = check_bool(name, "affine", affine)
        self.use_bias = check_bool(name, "bias", bias)
        self._affine_parameters(self.num_channels, self.affine, self.use_bias)

    def forward(self, x: Any) -> Any:
        y, cache = group_norm_forward(
            x,
            self.num_groups,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            self.eps,
            num_channels=self.num_channels,
            name="GroupNorm",
        )
        self.save_for_backward(cache, output=y)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, bias={self.use_bias}"


class LayerNorm(_Affine):
    """Layer normalisation over the trailing ``normalized_shape`` axes of each sample (``torch.nn.LayerNorm``).

    Args:
        normalized_shape: an int or a tuple of ints, the trailing shape to normalise over.
        eps: added to the variance for stability. Defaults to 1e-5.
        elementwise_affine: learn a ``weight`` (ones) of shape ``normalized_shape``. Defaults to True.
        bias: with ``elementwise_affine``, also learn a ``bias`` (zeros). Defaults to True.

    Shape:
        - Input: (*, *normalized_shape)
        - Output: same as the input
    """

    _backward_op = staticmethod(layer_norm_backward)

    def __init__(
        self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True
    ) -> None:
        super().__init__()
        name = "LayerNorm"
        dims = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else normalized_shape
        if (
            isinstance(normalized_shape, bool)
            or not isinstance(dims, (tuple, list))
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in dims)
        ):
            raise TypeError(
                f"{name}: expected normalized_shape to be an int or a tuple of ints, got {normalized_shape!r}"
            )
        if any(v < 0 for v in dims):
            raise ValueError(f"{name}: expected non-negative sizes in normalized_shape, got {tuple(dims)}")
        self.normalized_shape = tuple(int(v) for v in dims)
        self.eps = _check_eps(name, eps)
        self.elementwise_affine = check_bool(name, "elementwise_affine", elementwise_affine)
        self.use_bias = check_bool(name, "bias", bias)
        self._affine_parameters(self.normalized_shape, self.elementwise_affine, self.use_bias)

    def forward(self, x: Any) -> Any:
        y, cache = layer_norm_forward(
            x,
            self.normalized_shape,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            self.eps,
            name="LayerNorm",
        )
        self.save_for_backward(cache, output=y)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.use_bias}"
        )
