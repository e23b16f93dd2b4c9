"""SyncBatchNorm: batch normalisation with the statistics of the global batch across ranks."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from .._checks import check_channels, check_input, check_same_device
from ..distributed import process_group as pg
from ..ops.normalization import _channel_dot, _channel_sum
from .module import Module
from .normalization import _BatchNorm

__all__ = ["SyncBatchNorm"]


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation over the whole batch of every rank (``torch.nn.SyncBatchNorm``).

    In training with more than one rank, the per-channel mean and variance are those of the global
    batch (every rank's examples): two all-reduces in forward (the sums, then the sums of squared
    deviations from the global mean, the two-pass variance) and one in backward (the sums of
    ``dy`` and of ``dy * (x - mean)``). The running statistics are updated with the global
    unbiased variance, identically on every rank. The ``weight`` and ``bias`` gradients are this
    rank's share (``DistributedDataParallel`` averages them). In eval mode, or with one rank, it
    is exactly :class:`BatchNorm2d` (any input of rank 2 to 4 with channels on axis 1).

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for stability. Defaults to 1e-5.
        momentum: running-average factor, or None for a cumulative average. Defaults to 0.1.
        affine: learn a per-channel ``weight`` and ``bias``. Defaults to True.
        track_running_stats: keep running statistics buffers. Defaults to True.

    Shape:
        - Input: (N, C), (N, C, L) or (N, C, H, W); the same C on every rank
        - Output: same as the input
    """

    _ranks = (2, 3, 4)
    _layout = "(N, C), (N, C, L) or (N, C, H, W)"

    def forward(self, x: Any) -> Any:
        if not self.training or pg.get_world_size() == 1:
            return super().forward(x)  # saves one item: the batch-norm op's cache
        name = type(self).__name__
        check_input(name, x, self._ranks, self._layout)
        check_channels(name, x, self.num_features, axis=1, what="features (axis 1)")
        reference = self.weight.data if self.weight is not None else self.running_mean
        check_same_device(name, x, reference, "weight" if self.weight is not None else "running_mean")
        xp = backend.get_array_module(x)
        bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        count_arr = np.array([x.size // x.shape[1]], dtype=np.int64)
        pg.all_reduce(count_arr, "sum")  # on the host, through MPI
        count = int(count_arr[0])
        if count <= 1:
            raise ValueError(
                f"{name}: expected more than 1 value per channel across ranks when training, got {count} "
                f"(this rank's input size {tuple(x.shape)})"
            )
        sums = _channel_sum(x) if x.size else xp.zeros(x.shape[1], dtype=x.dtype)
        pg.all_reduce(sums, "sum")
        mean = (sums / count).astype(x.dtype, copy=False)
        centred = x - mean.reshape(bshape)
        squares = _channel_dot(centred, centred) if x.size else xp.zeros(x.shape[1], dtype=x.dtype)
        pg.all_reduce(squares, "sum")
        var = (squares / count).astype(x.dtype, copy=False)
        if self.track_running_stats:
            self.num_batches_tracked += 1
            if self.momentum is None:
                factor = 1.0 / self.num_batches_tracked.astype(self.running_mean.dtype)
            else:
                factor = self.momentum
            unbiased = var * (count / (count - 1))
            self.running_mean[...] = (1 - factor) * self.running_mean + factor * mean
            self.running_var[...] = (1 - factor) * self.running_var + factor * unbiased
        invstd = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)
        weight = self.weight.data if self.weight is not None else None
        scale = invstd if weight is None else weight * invstd
        y = centred * scale.reshape(bshape)
        if self.bias is not None:
            y += self.bias.data.reshape(bshape)
        saved = {"centred": centred, "invstd": invstd, "weight": weight, "count": count, "bshape": bshape}
        self.save_for_backward(saved, "synced", output=y)
        return y

    def backward(self, grad_output: Any) -> Any:
        pending = self.__dict__["_saved"]
        if not pending or len(pending[-1].items) != 2:  # nothing saved, or a forward that did not sync
            return super().backward(grad_output)
        saved, _ = self.saved_for_backward(grad_output)
        dy = grad_output
        xp = backend.get_array_module(dy)
        centred, invstd, weight = saved["centred"], saved["invstd"], saved["weight"]
        count, bshape = saved["count"], saved["bshape"]
        c = dy.shape[1]
        if dy.size:
            sum_dy, sum_dy_xmu = _channel_sum(dy), _channel_dot(dy, centred)
        else:
            sum_dy, sum_dy_xmu = xp.zeros(c, dtype=dy.dtype), xp.zeros(c, dtype=dy.dtype)
        if self.weight is not None:
            self.weight.accumulate_grad(sum_dy_xmu * invstd)  # this rank's share
        if self.bias is not None:
            self.bias.accumulate_grad(sum_dy)
        both = xp.concatenate([sum_dy, sum_dy_xmu])
        pg.all_reduce(both, "sum")
        a = invstd if weight is None else weight * invstd
        b = -a * invstd * invstd * both[c:] / count
        shift = -a * both[:c] / count
        dx = dy * a.reshape(bshape)
        dx += centred * b.reshape(bshape)
        dx += shift.reshape(bshape)
        return dx.astype(dy.dtype, copy=False)

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group: Any = None) -> Module:
        """Replace every BatchNorm layer of ``module`` by a SyncBatchNorm sharing its parameters
        and buffers; returns the converted module (a new object when ``module`` itself is one).

        Args:
            module: a model, or a single BatchNorm layer.
            process_group: only the default group exists; must be None.
        """
        if process_group is not None:
            raise ValueError("SyncBatchNorm.convert_sync_batchnorm: only the default process group (None) exists")
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            for name in ("weight", "bias"):
                out.register_parameter(name, module._parameters.get(name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                out.register_buffer(name, module._buffers.get(name))
            object.__setattr__(out, "training", module.training)
            return out
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child)
        return module
