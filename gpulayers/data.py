"""The batch loader and batch augmentations, run on the batch's device.

The data sets and their file readers live in :mod:`gpulayers.datasets`; they are re-exported here,
so ``gpulayers.data.load_mnist`` and friends keep working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import backend
from .datasets import (
    DATASETS,
    ArrayDataset,
    DatasetError,
    DatasetNotFoundError,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)

__all__ = [
    "ArrayDataset",
    "DataLoader",
    "DatasetError",
    "DatasetNotFoundError",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Compose",
    "cifar10_augment",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "read_idx",
    "DATASETS",
]


# ------------------------------------------------------------------------------------------------
# Augmentation on a batch, on the batch's device
# ------------------------------------------------------------------------------------------------
def _device_scope(x):
    """The batch's GPU as the current device (CuPy allocates there); a no-op for NumPy."""
    return x.device if backend.is_cuda_array(x) else contextlib.nullcontext()


def _rng_for(x):
    """The library's generator for the batch's device (not merely the current one)."""
    xp = backend.get_array_module(x)
    return backend.rng_for(xp, x.device.id) if backend.is_cuda_array(x) else backend.rng_for(xp)


class RandomCrop:
    """Pad each image by ``padding`` zeros, then crop a random ``size`` x ``size`` window (per image).

    Randomness comes from the library's generator for the batch's device (see ``gl.manual_seed``).
    """

    def __init__(self, size: int, padding: int = 0):
        if size < 1 or padding < 0:
            raise ValueError(f"RandomCrop: expected size >= 1 and padding >= 0, got size={size}, padding={padding}")
        self.size, self.padding = int(size), int(padding)

    def __call__(self, x, rng=None):
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        p, s = self.padding, self.size
        if h + 2 * p < s or w + 2 * p < s:
            raise ValueError(f"RandomCrop: crop {s} is larger than the padded image {h + 2 * p}x{w + 2 * p}")
        with _device_scope(x):
            rng = _rng_for(x) if rng is None else rng
            padded = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
            # xp.asarray: a NumPy generator given for a CuPy batch draws on the host.
            top = xp.asarray(rng.integers(0, h + 2 * p - s + 1, size=n))
            left = xp.asarray(rng.integers(0, w + 2 * p - s + 1, size=n))
            rows = top[:, None] + xp.arange(s)[None, :]  # (N, s)
            cols = left[:, None] + xp.arange(s)[None, :]
            batch = xp.arange(n)[:, None, None, None]
            chan = xp.arange(c)[None, :, None, None]
            return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: expected 0 <= p <= 1, got {p}")
        self.p = float(p)

    def __call__(self, x, rng=None):
        xp = backend.get_array_module(x)
        with _device_scope(x):
            rng = _rng_for(x) if rng is None else rng
            flip = xp.asarray(rng.random(x.shape[0]) < self.p)
            return xp.where(flip[:, None, None, None], x[..., ::-1], x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply augmentations in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def cifar10_augment(size: int = 32, padding: int = 4) -> Compose:
    """The usual CIFAR-10 recipe: random crop with 4 pixels of padding, then a horizontal flip."""
    return Compose([RandomCrop(size, padding), RandomHorizontalFlip()])


# ------------------------------------------------------------------------------------------------
# The loader
# ------------------------------------------------------------------------------------------------
class DataLoader:
    """Mini-batches ``(x, y)`` on a device: x float (N, C, H, W), y int64 (N,).

    Each pass shuffles with its own NumPy generator seeded from ``(seed, epoch)``, so a resumed
    run reshuffles exactly as an uninterrupted one. Iterating starts pass number ``epoch`` and
    advances the counter; :meth:`set_epoch` picks the pass explicitly.

    Args:
        dataset: an :class:`ArrayDataset` or a pair ``(x, y)`` of arrays.
        batch_size: examples per batch (default 64).
        shuffle: reshuffle every pass (default False).
        seed: shuffling seed; None draws one from the library generator (``gl.manual_seed``)
            when ``shuffle`` is set.
        drop_last: drop the last incomplete batch (default False).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``. The whole data set is copied to
            the device once, and batches are gathered and prepared there.
        normalize: ``(mean, std)``, scalars or one value per channel, applied as ``(x - mean) / std``
            after scaling uint8 pixels to [0, 1] and after augmentation.
        augment: a callable on the batch (e.g. :func:`cifar10_augment`), run before normalising.
        dtype: the floating dtype of the batches (default float32).
    """

    def __init__(
        self,
        dataset: ArrayDataset | tuple[Any, Any],
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        device: str = "cpu",
        normalize: tuple[Any, Any] | None = None,
        augment: Callable | None = None,
        dtype: Any = np.float32,
    ):
        if not isinstance(dataset, ArrayDataset):
            if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
                raise TypeError(f"DataLoader: expected an ArrayDataset or a pair (x, y), got {type(dataset).__name__}")
            dataset = ArrayDataset(backend.to_numpy(dataset[0]), backend.to_numpy(dataset[1]))
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: expected batch_size >= 1, got {batch_size!r}")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, int(batch_size), shuffle, drop_last
        self.device = backend.default_device() if device == "auto" else device
        backend.parse_device(self.device)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"DataLoader: expected a floating dtype, got {self.dtype}")
        if seed is None:  # only a shuffling loader draws (so an unshuffled one leaves the library RNG alone)
            seed = int(backend.cpu_rng().integers(2**31)) if shuffle else 0
        self.seed = int(seed)
        self.epoch = 0
        self.augment = augment
        self.normalize = None
        if normalize is not None:
            channels = dataset.x.shape[1]
            mean, std = (
                np.broadcast_to(backend.to_numpy(v).astype(np.float64).reshape(-1), (channels,)) for v in normalize
            )
            if np.any(std <= 0):
                raise ValueError(f"DataLoader: normalize std must be positive, got {tuple(std)}")
            self.normalize = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self._on_device: tuple[Any, Any, Any] | None = None

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the shuffle of ``epoch``."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def order(self, epoch: int) -> np.ndarray:
        """The example order of pass ``epoch``."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def _device_arrays(self):
        if self._on_device is None:
            x = backend.to_device(self.dataset.x, self.device)
            y = backend.to_device(self.dataset.y, self.device)
            xp = backend.get_array_module(x)
            stats = None
            if self.normalize is not None:
                mean, std = (xp.asarray(v, dtype=self.dtype).reshape(1, -1, 1, 1) for v in self.normalize)
                stats = (mean, std)
            self._on_device = (x, y, stats)
        return self._on_device

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        order = self.order(self.epoch)
        self.epoch += 1
        return self._batches(order)

    def _batches(self, order: np.ndarray) -> Iterator[tuple[Any, Any]]:
        x_all, y_all, stats = self._device_arrays()
        xp = backend.get_array_module(x_all)
        order_dev = backend.to_device(order, self.device)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            idx = order_dev[start : start + self.batch_size]
            xb = x_all[idx]
            if xb.dtype.kind in "ui":
                xb = xb.astype(self.dtype) / 255  # pixels to [0, 1]
            elif xb.dtype != self.dtype:
                xb = xb.astype(self.dtype)
            if self.augment is not None:
                xb = self.augment(xb)
            if stats is not None:
                xb = (xb - stats[0]) / stats[1]
            yield xp.ascontiguousarray(xb), y_all[idx]

    def __repr__(self) -> str:
        return (
            f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"device={self.device!r}, normalize={self.normalize}, augment={self.augment})"
        )
