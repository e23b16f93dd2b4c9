"""The batch loader and batch augmentations, run on the batch's device.

The data sets and their file readers live in :mod:`gpulayers.datasets`; they are re-exported here,
so ``gpulayers.data.load_mnist`` and friends keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import backend
from . import datasets as _datasets
from ._checks import check_bool, check_int, check_real
from .collate import default_collate
from .datasets import *  # noqa: F403  (re-exported: gpulayers.data.load_mnist and friends)
from .datasets import ArrayDataset
from .distributed import DistributedSampler

__all__ = [
    "DataLoader",
    "DistributedSampler",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Compose",
    "default_collate",
    "cifar10_augment",
    *_datasets.__all__,
]


# ------------------------------------------------------------------------------------------------
# Augmentation on a batch, on the batch's device
# ------------------------------------------------------------------------------------------------
def _check_images(name: str, x: Any) -> None:
    if not hasattr(x, "ndim") or x.ndim != 4:
        raise ValueError(f"{name}: expected a batch of images (N, C, H, W), got shape {getattr(x, 'shape', None)}")


def _rng_for(x):
    """The library's generator for the batch's device (not merely the current one)."""
    xp = backend.get_array_module(x)
    return backend.rng_for(xp, x.device.id) if backend.is_cuda_array(x) else backend.rng_for(xp)


class RandomCrop:
    """Pad each image by ``padding`` zeros, then crop a random ``size`` x ``size`` window (per image).

    Randomness comes from the library's generator for the batch's device (see ``gl.manual_seed``).
    """

    def __init__(self, size: int, padding: int = 0):
        self.size = check_int("RandomCrop", "size", size, 1)
        self.padding = check_int("RandomCrop", "padding", padding, 0)

    def __call__(self, x, rng=None):
        xp = backend.get_array_module(x)
        _check_images("RandomCrop", x)
        n, c, h, w = x.shape
        p, s = self.padding, self.size
        if h + 2 * p < s or w + 2 * p < s:
            raise ValueError(f"RandomCrop: crop {s} is larger than the padded image {h + 2 * p}x{w + 2 * p}")
        with backend.device_scope(x):
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
        self.p = check_real("RandomHorizontalFlip", "p", p, minimum=0.0, maximum=1.0)

    def __call__(self, x, rng=None):
        xp = backend.get_array_module(x)
        _check_images("RandomHorizontalFlip", x)
        with backend.device_scope(x):
            rng = _rng_for(x) if rng is None else rng
            flip = xp.asarray(rng.random(x.shape[0]) < self.p)
            return xp.where(flip[:, None, None, None], x[..., ::-1], x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply augmentations in order."""

    def __init__(self, transforms: Sequence[Callable]):
        if not isinstance(transforms, (list, tuple)):
            raise TypeError(f"Compose: expected a list of callables, got {type(transforms).__name__}")
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"Compose: expected callables, got {type(t).__name__} at position {i}")
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
def _as_dataset(dataset: Any) -> Any:
    """An :class:`ArrayDataset` for arrays; any other map-style dataset as it is."""
    if isinstance(dataset, ArrayDataset):
        return dataset
    if (
        isinstance(dataset, (tuple, list))
        and len(dataset) == 2
        and all(hasattr(a, "shape") and hasattr(a, "dtype") and len(a.shape) >= 1 for a in dataset)
    ):
        return ArrayDataset(dataset[0], dataset[1])
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return dataset
    raise TypeError(
        "DataLoader: expected an ArrayDataset, a pair (x, y) of arrays, or a map-style dataset "
        f"(with __len__ and __getitem__), got {type(dataset).__name__}"
    )


def _check_pixels(name: str, x: Any) -> None:
    """Integer inputs are pixels 0..255 (scaled to [0, 1]); any other integer range is refused."""
    if x.dtype.kind not in "iu" or x.dtype == np.uint8 or x.size == 0:
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise ValueError(
            f"{name}: integer inputs are read as pixels 0..255 and scaled by 1/255, but dtype {x.dtype} holds "
            f"values {lo}..{hi}; convert them to float (scaled as you mean) before loading"
        )


def _check_normalize(name: str, normalize: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise TypeError(f"{name}: expected normalize=(mean, std), got {normalize!r}")
    out = []
    for what, v in zip(("mean", "std"), normalize, strict=True):
        try:
            arr = np.asarray(backend.to_numpy(v), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected normalize {what} to be numbers, got {v!r}") from exc
        if arr.size == 0 or not np.isfinite(arr).all():
            raise ValueError(f"{name}: expected finite normalize {what} values, got {v!r}")
        out.append(arr)
    mean, std = out
    if np.any(std <= 0):
        raise ValueError(f"{name}: normalize std must be positive, got {tuple(float(s) for s in std)}")
    if mean.size != std.size and 1 not in (mean.size, std.size):
        raise ValueError(f"{name}: normalize has {mean.size} means but {std.size} stds")
    return mean, std


class DataLoader:
    """Mini-batches on a device: ``(x, y)`` with x in ``dtype`` and y as the targets are.

    Each pass shuffles with its own NumPy generator seeded from ``(seed, epoch)``, so a resumed
    run reshuffles exactly as an uninterrupted one. Iterating starts pass number ``epoch`` and
    advances the counter; :meth:`set_epoch` picks the pass explicitly.

    An :class:`ArrayDataset` (or a pair of arrays) is copied to the device once and batches are
    gathered there. Any other map-style dataset (``__len__`` and ``__getitem__``, as PyTorch's
    DataLoader takes) is read item by item and collated with :func:`default_collate`; when its
    items are tuples, the first element is the input and gets the preparation below.

    Args:
        dataset: an :class:`ArrayDataset`, a pair ``(x, y)`` of arrays, or a map-style dataset.
        batch_size: examples per batch (default 64).
        shuffle: reshuffle every pass (default False).
        seed: shuffling seed, an int >= 0; None draws one from the library generator
            (``gl.manual_seed``) when ``shuffle`` is set.
        drop_last: drop the last incomplete batch (default False).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        normalize: ``(mean, std)``, scalars or one value per channel (axis 1 of the input), finite,
            std > 0; applied as ``(x - mean) / std`` after scaling pixels to [0, 1] and after
            augmentation.
        augment: a callable on the input batch (e.g. :func:`cifar10_augment`), run before normalising.
        dtype: the floating dtype of the input batches (default float32).

    The inputs are prepared as: uint8 and other integer inputs are pixels 0..255, scaled to
    [0, 1] (other integer ranges are refused); float inputs are cast to ``dtype``.

    ``sampler`` (e.g. a :class:`DistributedSampler`) gives the indices to visit instead of the
    whole data set, not with ``shuffle``; each pass calls its ``set_epoch`` with the loader's epoch.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        device: str = "cpu",
        normalize: tuple[Any, Any] | None = None,
        augment: Callable | None = None,
        dtype: Any = np.float32,
        sampler: Any = None,
    ):
        name = "DataLoader"
        self.dataset = dataset = _as_dataset(dataset)
        self._arrays = isinstance(dataset, ArrayDataset)
        self.batch_size = check_int(name, "batch_size", batch_size, 1)
        self.shuffle = check_bool(name, "shuffle", shuffle)
        self.drop_last = check_bool(name, "drop_last", drop_last)
        if sampler is not None and self.shuffle:
            raise ValueError(f"{name}: sampler option is mutually exclusive with shuffle")
        self.sampler = sampler
        self.device = backend.default_device() if device == "auto" else device
        backend.parse_device(self.device)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"{name}: expected a floating dtype (float32 or float64), got {dtype!r}") from exc
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(
                f"{name}: expected a floating dtype (float32 or float64, as the layers take), got {self.dtype}"
            )
        if seed is None:  # only a shuffling loader draws (so an unshuffled one leaves the library RNG alone)
            seed = int(backend.cpu_rng().integers(2**31)) if self.shuffle else 0
        self.seed = check_int(name, "seed", seed, 0)
        self.epoch = 0
        if augment is not None and not callable(augment):
            raise TypeError(f"{name}: expected augment to be callable or None, got {type(augment).__name__}")
        self.augment = augment
        self.normalize = None
        if normalize is not None:
            mean, std = _check_normalize(name, normalize)
            if self._arrays:
                self._check_channels(dataset.x, max(mean.size, std.size))
                _check_pixels(name, dataset.x)
            self.normalize = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        elif self._arrays:
            _check_pixels(name, dataset.x)
        self._on_device: tuple[Any, Any, Any] | None = None

    @staticmethod
    def _check_channels(x: Any, count: int) -> None:
        channels = x.shape[1] if x.ndim >= 2 else 1
        if count not in (1, channels):
            raise ValueError(
                f"DataLoader: normalize has {count} values per statistic but the inputs have {channels} "
                f"channels (axis 1 of shape {tuple(x.shape)}); give one value or {channels}"
            )

    def __len__(self) -> int:
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the shuffle of ``epoch``."""
        self.epoch = check_int("DataLoader.set_epoch", "epoch", epoch, 0)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not {"seed", "epoch"} <= set(state):
            raise ValueError(f"DataLoader.load_state_dict: expected a dict with 'seed' and 'epoch', got {state!r}")
        seed = check_int("DataLoader.load_state_dict", "seed", state["seed"], 0)
        self.epoch = check_int("DataLoader.load_state_dict", "epoch", state["epoch"], 0)
        self.seed = seed

    def order(self, epoch: int) -> np.ndarray:
        """The example order of pass ``epoch``."""
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(int(epoch))
            return np.fromiter(iter(self.sampler), dtype=np.int64)
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def _stats(self, x: Any) -> tuple[Any, Any] | None:
        """The normalisation arrays, shaped to broadcast over channel axis 1 of ``x``."""
        if self.normalize is None:
            return None
        xp = backend.get_array_module(x)
        self._check_channels(x, max(len(self.normalize[0]), len(self.normalize[1])))
        shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim >= 2 else (-1,)
        with backend.device_scope(x):
            return tuple(xp.asarray(v, dtype=self.dtype).reshape(shape) for v in self.normalize)

    def _device_arrays(self):
        if self._on_device is None:
            x = backend.to_device(self.dataset.x, self.device)
            y = backend.to_device(self.dataset.y, self.device)
            self._on_device = (x, y, self._stats(x))
        return self._on_device

    def _prepare(self, xb: Any, stats: Any) -> Any:
        if xb.dtype.kind in "ui":
            xb = xb.astype(self.dtype) / 255  # pixels to [0, 1]
        elif xb.dtype != self.dtype:
            xb = xb.astype(self.dtype)
        if self.augment is not None:
            xb = self.augment(xb)
        if stats is not None:
            xb = (xb - stats[0]) / stats[1]
        return backend.get_array_module(xb).ascontiguousarray(xb)

    def __iter__(self) -> Iterator[Any]:
        order = self.order(self.epoch)
        self.epoch += 1
        return self._batches(order) if self._arrays else self._collated(order)

    def _batches(self, order: np.ndarray) -> Iterator[tuple[Any, Any]]:
        x_all, y_all, stats = self._device_arrays()
        order_dev = backend.to_device(order, self.device)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            idx = order_dev[start : start + self.batch_size]
            yield self._prepare(x_all[idx], stats), y_all[idx]

    def _collated(self, order: np.ndarray) -> Iterator[Any]:
        stop = min(len(self) * self.batch_size, len(order))
        for start in range(0, stop, self.batch_size):
            batch = default_collate([self.dataset[int(i)] for i in order[start : start + self.batch_size]])
            if isinstance(batch, tuple) and batch and isinstance(batch[0], np.ndarray):
                yield (self._input(batch[0]),) + tuple(self._move(b) for b in batch[1:])
            elif isinstance(batch, np.ndarray):
                yield self._input(batch)
            else:
                yield self._move(batch)

    def _input(self, x: np.ndarray) -> Any:
        if x.dtype.kind not in "biuf":
            raise TypeError(f"DataLoader: expected real-valued inputs from the dataset, got dtype {x.dtype}")
        _check_pixels("DataLoader", x)
        x = backend.to_device(x, self.device)
        return self._prepare(x, self._stats(x))

    def _move(self, batch: Any) -> Any:
        if isinstance(batch, np.ndarray):
            return backend.to_device(batch, self.device)
        if isinstance(batch, tuple):
            return tuple(self._move(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._move(v) for k, v in batch.items()}
        return batch

    def __repr__(self) -> str:
        return (
            f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"device={self.device!r}, normalize={self.normalize}, augment={self.augment})"
        )
