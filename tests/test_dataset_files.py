"""Hostile or damaged data files: sizes checked against the file before allocating, a clear
DatasetError naming the file, an ``error:`` line and exit status 2 from the command line."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest

from gpulayers import datasets, train
from gpulayers.datasets import DatasetError


def idx_bytes(dims, payload=b"", code=0x08):
    return b"\0\0" + bytes([code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("dims", [(2**21, 2**21, 2**22), (2**32 - 1, 2**32 - 1), (10**9, 28, 28)])
def test_idx_header_overflowing_or_too_large(dims, gzipped, tmp_path):
    raw = idx_bytes(dims, b"\0" * 64)
    path = tmp_path / ("x.idx.gz" if gzipped else "x.idx")
    path.write_bytes(gzip.compress(raw) if gzipped else raw)
    with pytest.raises(DatasetError, match="more than the file can hold") as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)


def test_idx_trailing_and_truncated(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes((2, 2), b"\0" * 5))
    with pytest.raises(DatasetError, match="trailing bytes"):
        datasets.read_idx(path)
    path.write_bytes(idx_bytes((2, 2), b"\0" * 3))
    with pytest.raises(DatasetError, match="IDX data truncated"):
        datasets.read_idx(path)
    assert datasets.read_idx(_write(path, idx_bytes((2, 2), bytes(range(4))))).tolist() == [[0, 1], [2, 3]]


def _write(path, raw):
    path.write_bytes(raw)
    return path


def write_mnist(folder, n_train, n_test=2):
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes((n, 28, 28), b"\0" * (n * 784)))
        _write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes((n,), b"\0" * n))


def test_mnist_without_images_is_refused(tmp_path, capsys):
    write_mnist(tmp_path, 0)
    with pytest.raises(DatasetError, match="holds no images"):
        datasets.load_mnist(tmp_path)
    rc = train.main(["--data", "mnist", "--data-dir", str(tmp_path), "--no-progress", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 2 and "error:" in err and "holds no images" in err and "epoch 1/" not in out


def test_mnist_overflowing_header_on_the_command_line(tmp_path, capsys):
    write_mnist(tmp_path, 2)
    _write(tmp_path / "train-images-idx3-ubyte", idx_bytes((2**21, 2**21, 2**22), b"\0" * 100))
    rc = train.main(["--data", "mnist", "--data-dir", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "train-images-idx3-ubyte: IDX header declares" in err and "Traceback" not in err


class _Forged:
    """Pickles as a call of np.ndarray itself: 10**8 images over one byte with zero strides."""

    def __reduce__(self):
        return (np.ndarray, ((10**8, 3072), "u1", b"\0", 0, (0, 0)))


@pytest.mark.parametrize(
    "batch,message",
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 2**70]}, "'labels' is not a list of integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -(2**70)]}, "'labels' is not a list of integers"),
        ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "holds no images"),
        ({b"data": _Forged(), b"labels": [0]}, "corrupt or truncated CIFAR-10 batch"),
    ],
)
def test_cifar_batches_refused(batch, message, tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DatasetError, match=message) as info:
        datasets._read_cifar_batch(path, tmp_path)
    assert str(path) in str(info.value)


def test_cifar_zero_stride_array_checked_against_file_size(tmp_path, monkeypatch):
    """Even an array that got past the unpickler is checked against the file's size."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"x" * 200)
    forged = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (10**8, 3072), (0, 0))

    class Passing(datasets._ArraysOnlyUnpickler):
        def load(self):
            return {b"data": forged, b"labels": [0] * 10}

    monkeypatch.setattr(datasets, "_ArraysOnlyUnpickler", Passing)
    with pytest.raises(DatasetError, match="claims 100,000,000 images"):
        datasets._read_cifar_batch(path, tmp_path)


def test_cifar_reconstructor_only_builds_the_empty_placeholder(tmp_path):
    # A genuine pickled array still loads.
    path = tmp_path / "data_batch_1"
    good = {b"data": np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072), b"labels": [1, 2]}
    for protocol in (3, 4, 5):
        path.write_bytes(pickle.dumps(good, protocol=protocol))
        x, y = datasets._read_cifar_batch(path, tmp_path)
        assert np.array_equal(x.reshape(2, -1), good[b"data"]) and y.tolist() == [1, 2]
