"""``DistributedDataParallel``: one model per rank, gradients averaged across ranks after backward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import backend
from . import process_group as pg

__all__ = ["DistributedDataParallel"]


def _buckets(arrays: list[Any], cap_bytes: int) -> list[list[int]]:
    """Indices of ``arrays`` grouped into flat buckets: same dtype and device, at most ``cap_bytes``
    each (an array larger than the cap gets a bucket of its own); the order is kept."""
    out: list[list[int]] = []
    open_buckets: dict[tuple[str, str], tuple[list[int], int]] = {}
    for i, arr in enumerate(arrays):
        key = (np.dtype(arr.dtype).str, backend.device_of(arr))
        nbytes = int(arr.size) * np.dtype(arr.dtype).itemsize
        current = open_buckets.get(key)
        if current is None or current[1] + nbytes > cap_bytes:
            bucket: list[int] = []
            out.append(bucket)
            current = (bucket, 0)
        current[0].append(i)
        open_buckets[key] = (current[0], current[1] + nbytes)
    return out


def _flatten(arrays: list[Any]) -> Any:
    xp = backend.get_array_module(arrays[0])
    with backend.device_scope(arrays[0]):
        return xp.concatenate([a.reshape(-1) for a in arrays])


def _unflatten(flat: Any, arrays: list[Any]) -> None:
    offset = 0
    for a in arrays:
        a[...] = flat[offset : offset + a.size].reshape(a.shape)
        offset += a.size


class DistributedDataParallel:
    """Data-parallel training: each rank runs ``module`` on its own share of every batch.

    At construction every rank checks that its model has the same parameters and buffers (names,
    shapes, dtypes) as rank 0's, then takes rank 0's values. After :meth:`backward` the gradients
    are averaged across ranks through a few large flat all-reduces (buckets of at most
    ``bucket_cap_mb`` per dtype and device, last layers first), so every rank's optimiser applies
    the same step and the models stay identical.

    BatchNorm statistics are per rank, as in PyTorch: each rank normalises with its own batch's
    statistics. With ``broadcast_buffers`` (the default, as PyTorch) rank 0's buffers (running
    statistics) are copied to every rank before each training forward, and also when switching to
    eval mode, so every rank evaluates the same model. :class:`gpulayers.nn.SyncBatchNorm`
    normalises with the statistics of the whole global batch instead.

    The wrapper forwards ``state_dict``, ``load_state_dict``, ``parameters``, ``named_parameters``,
    ``modules``, ``train``, ``eval``, ``zero_grad``, ``to`` and any other attribute to the model
    (its ``state_dict`` keys have no ``module.`` prefix, so checkpoints load with or without the
    wrapper); ``wrapper.module`` is the model itself.

    Args:
        module: the model (the same architecture on every rank).
        broadcast_buffers: copy rank 0's buffers to every rank before each training forward.
        bucket_cap_mb: the largest flat gradient buffer, in MiB (default 25, as PyTorch).

    Raises:
        RuntimeError: no process group, or the models differ across ranks (raised on every rank).
    """

    def __init__(self, module: Any, broadcast_buffers: bool = True, bucket_cap_mb: float = 25.0):
        if not all(hasattr(module, a) for a in ("forward", "backward", "named_parameters", "named_buffers")):
            raise TypeError(f"DistributedDataParallel: expected a gpulayers Module, got {type(module).__name__}")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: expected bucket_cap_mb > 0, got {bucket_cap_mb!r}")
        if not pg.is_initialized():
            raise RuntimeError("DistributedDataParallel: call gpulayers.distributed.init_process_group() first")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.require_backward_grad_sync = True
        self._check_same_model()
        self._broadcast_arrays([p.data for _, p in self.module.named_parameters()])
        self._sync_buffers()

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the wrapped model's attribute.
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    # -- construction checks ------------------------------------------------------------------
    def _signature(self) -> list[tuple[str, str, tuple[int, ...], str]]:
        sig = [("parameter", n, tuple(p.shape), np.dtype(p.dtype).name) for n, p in self.module.named_parameters()]
        sig += [("buffer", n, tuple(b.shape), np.dtype(b.dtype).name) for n, b in self.module.named_buffers()]
        return sig

    def _check_same_model(self) -> None:
        signatures = pg.all_gather_object(self._signature())
        reference = signatures[0]
        for rank, sig in enumerate(signatures[1:], start=1):
            if sig == reference:
                continue
            for ours, theirs in zip(reference, sig, strict=False):
                if ours != theirs:
                    raise RuntimeError(
                        f"DistributedDataParallel: the models differ across ranks: rank 0 has {ours[0]} "
                        f"{ours[1]!r} of shape {ours[2]} ({ours[3]}), rank {rank} has {theirs[0]} {theirs[1]!r} "
                        f"of shape {theirs[2]} ({theirs[3]})"
                    )
            raise RuntimeError(
                f"DistributedDataParallel: the models differ across ranks: rank 0 has {len(reference)} "
                f"parameters and buffers, rank {rank} has {len(sig)}"
            )

    # -- communication ------------------------------------------------------------------------
    def _cap_bytes(self) -> int:
        return max(1, int(self.bucket_cap_mb * 2**20))

    def _broadcast_arrays(self, arrays: list[Any]) -> None:
        if pg.get_world_size() == 1 or not arrays:
            return
        for bucket in _buckets(arrays, self._cap_bytes()):
            members = [arrays[i] for i in bucket]
            flat = _flatten(members)
            pg.broadcast(flat, src=0)
            _unflatten(flat, members)

    def _sync_buffers(self) -> None:
        if self.broadcast_buffers:
            self._broadcast_arrays([b for _, b in self.module.named_buffers()])

    def gradient_buckets(self) -> list[list[str]]:
        """The parameter names of each flat all-reduce, in the order they run."""
        named = list(self.module.named_parameters())[::-1]
        return [[named[i][0] for i in b] for b in _buckets([p.data for _, p in named], self._cap_bytes())]

    def sync_gradients(self) -> None:
        """Average every parameter's gradient across ranks (``backward`` calls it).

        A parameter without a gradient on this rank counts as zeros (and gets a zero gradient),
        so that every rank takes part in the same all-reduces.
        """
        params = [p for _, p in self.module.named_parameters()][::-1]  # last layers' gradients come first
        if pg.get_world_size() == 1 or not params:
            return
        for p in params:
            if p.grad is None:
                with backend.device_scope(p.data):
                    p.grad = backend.get_array_module(p.data).zeros_like(p.data)
        grads = [p.grad for p in params]
        for bucket in _buckets(grads, self._cap_bytes()):
            members = [grads[i] for i in bucket]
            flat = _flatten(members)
            pg.all_reduce(flat, op="mean")
            _unflatten(flat, members)

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally inside the block (the next synced backward averages the sum)."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    # -- the computation ----------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.module.training:
            self._sync_buffers()
        return self.module(*args, **kwargs)

    __call__ = forward

    def backward(self, grad_output: Any) -> Any:
        grad_input = self.module.backward(grad_output)
        if self.require_backward_grad_sync:
            self.sync_gradients()
        return grad_input

    # -- the wrapped model --------------------------------------------------------------------
    @property
    def training(self) -> bool:
        return bool(self.module.training)

    def train(self, mode: bool = True) -> DistributedDataParallel:
        self.module.train(mode)
        if not mode:
            self._sync_buffers()
        return self

    def eval(self) -> DistributedDataParallel:
        return self.train(False)

    def to(self, *args: Any, **kwargs: Any) -> DistributedDataParallel:
        self.module.to(*args, **kwargs)
        return self

    def modules(self) -> Iterator[Any]:
        return self.module.modules()

    def parameters(self) -> Iterator[Any]:
        return self.module.parameters()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        return self.module.named_parameters(prefix)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        return self.module.named_buffers(prefix)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True):
        return self.module.load_state_dict(state_dict, strict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.module.zero_grad(set_to_none)

    def __repr__(self) -> str:
        inner = repr(self.module).replace("\n", "\n  ")
        head = f"DistributedDataParallel(world_size={pg.get_world_size()}, bucket_cap_mb={self.bucket_cap_mb}"
        return f"{head}\n  (module): {inner}\n)"
