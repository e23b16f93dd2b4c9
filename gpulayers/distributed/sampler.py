"""``DistributedSampler``: each rank's share of a data set's indices, PyTorch's assignment."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._checks import check_bool, check_int
from . import process_group as pg

__all__ = ["DistributedSampler"]


def _int_arg(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"DistributedSampler: expected {name} to be an int, got {type(value).__name__}")
    return int(value)


class DistributedSampler:
    """The indices of one rank's share of ``dataset``, for :class:`gpulayers.data.DataLoader`'s ``sampler``.

    PyTorch's assignment: the (optionally shuffled) index list is padded by wrapping around to a
    multiple of ``num_replicas`` (or cut to one with ``drop_last``), and rank ``r`` takes every
    ``num_replicas``-th index starting at ``r``. The shuffle of epoch ``e`` comes from a NumPy
    generator seeded with ``(seed, e)``: the same on every rank, different every epoch (the
    permutation itself differs from PyTorch's, whose generator is torch's). Call
    :meth:`set_epoch` before each epoch (the DataLoader does it for its ``sampler``).

    Args:
        dataset: anything with ``len``.
        num_replicas: the number of ranks (default: the process group's world size).
        rank: this rank (default: the process group's rank).
        shuffle: reshuffle every epoch (default True).
        seed: the shuffling seed, the same on every rank (default 0).
        drop_last: drop the tail that does not divide evenly instead of padding (default False).
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        num_replicas = pg.get_world_size() if num_replicas is None else _int_arg("num_replicas", num_replicas)
        rank = pg.get_rank() if rank is None else _int_arg("rank", rank)
        if num_replicas < 1:
            raise ValueError(f"DistributedSampler: expected num_replicas >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: expected rank in [0, {num_replicas}), got {rank}")
        if not hasattr(dataset, "__len__"):
            raise TypeError(f"DistributedSampler: expected a dataset with a length, got {type(dataset).__name__}")
        self.dataset = dataset
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle = check_bool("DistributedSampler", "shuffle", shuffle)
        self.drop_last = check_bool("DistributedSampler", "drop_last", drop_last)
        self.seed = check_int("DistributedSampler", "seed", seed, 0)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % num_replicas:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` (the same number on every rank)."""
        self.epoch = check_int("DistributedSampler.set_epoch", "epoch", epoch, 0)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n, dtype=np.int64)
        if self.drop_last:
            order = order[: self.total_size]
        elif self.total_size > n:  # pad by wrapping around, as often as needed
            order = np.resize(order, self.total_size)
        return order[self.rank : self.total_size : self.num_replicas].astype(np.int64, copy=False)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"DistributedSampler(num_replicas={self.num_replicas}, rank={self.rank}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last})"
        )
