"""Data sets (digits, IDX, CIFAR pickles) and the DataLoader."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import data as D

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return b"\0\0" + bytes([code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write(path, payload: bytes, gz: bool):
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_mnist(folder, n_train=6, n_test=4, gz=False, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        MNIST_NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        MNIST_NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        MNIST_NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        MNIST_NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write(folder / name, idx_bytes(arr), gz)
    return arrays


def cifar_batch(n, seed, keys_bytes=True):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    k = (lambda s: s.encode()) if keys_bytes else (lambda s: s)
    return {k("batch_label"): b"batch", k("labels"): labels, k("data"): data, k("filenames"): [b"a.png"] * n}


def make_cifar(root, protocol=4, n=5, keys_bytes=True):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        batches[name] = cifar_batch(n, i, keys_bytes)
        payload = pickle.dumps(batches[name], protocol=protocol)
        if protocol <= 3:  # the name the original (NumPy 1.x era) files use
            payload = payload.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        (folder / name).write_bytes(payload)
    return folder, batches


# ------------------------------------------------------------------------------------------------ digits
def test_digits_split_shapes_and_range():
    train, test = D.load_digits()
    assert (len(train), len(test)) == (1437, 360)
    assert train.x.shape == (1437, 1, 8, 8) and train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert train.x.min() == 0.0 and train.x.max() == 1.0
    counts = np.bincount(test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~20% of every class


def test_digits_split_is_deterministic_and_disjoint():
    from sklearn.datasets import load_digits

    a_train, a_test = D.load_digits()
    b_train, b_test = D.load_digits()
    np.testing.assert_array_equal(a_train.x, b_train.x)
    np.testing.assert_array_equal(a_test.y, b_test.y)
    images = (load_digits().images / 16).astype(np.float32).reshape(1797, -1)
    rows = {r.tobytes(): i for i, r in enumerate(images)}
    train_ids = {rows[r.tobytes()] for r in a_train.x.reshape(1437, -1)}
    test_ids = {rows[r.tobytes()] for r in a_test.x.reshape(360, -1)}
    assert not train_ids & test_ids
    assert len(train_ids | test_ids) >= 1780  # a few digit images are exact duplicates


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "gpulayers\[train\]"'):
        D.load_digits()


# ------------------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.dtype(">i4"), 0x0C), (np.dtype(">f4"), 0x0D)])
def test_read_idx_roundtrip(tmp_path, gz, dtype, code):
    arr = np.arange(24).reshape(2, 3, 4).astype(dtype)
    path = write(tmp_path / "x-idx3", idx_bytes(arr, code), gz)
    out = D.read_idx(path)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.isnative


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_load_mnist_from_folder(tmp_path, gz, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays = make_mnist(folder, gz=gz)
    train, test = D.load_mnist(tmp_path)
    assert train.x.shape == (6, 1, 28, 28) and train.x.dtype == np.uint8 and train.y.dtype == np.int64
    np.testing.assert_array_equal(train.x[:, 0], arrays[MNIST_NAMES[0]])
    np.testing.assert_array_equal(test.y, arrays[MNIST_NAMES[3]])
    assert train.mean == (0.1307,)


def test_load_fashion_mnist(tmp_path):
    arrays = make_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    train, test = D.load_dataset("fashion-mnist", tmp_path)
    np.testing.assert_array_equal(test.x[:, 0], arrays[MNIST_NAMES[2]])
    assert train.classes[0] == "T-shirt/top"


def test_mnist_missing_folder_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST: folder .*nope does not exist.*train-images-idx3-ubyte\.gz"):
        D.load_mnist(tmp_path / "nope")
    with pytest.raises(D.DatasetNotFoundError, match="no data folder given"):
        D.load_mnist(None)


def test_mnist_missing_one_file(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / MNIST_NAMES[3]).unlink()
    with pytest.raises(D.DatasetNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found in .*put them in"):
        D.load_mnist(tmp_path)


def _corrupt(tmp_path, kind):
    arrays = make_mnist(tmp_path)
    img = tmp_path / MNIST_NAMES[0]
    lbl = tmp_path / MNIST_NAMES[1]
    raw = img.read_bytes()
    if kind == "magic":
        img.write_bytes(b"\x12\x34" + raw[2:])
    elif kind == "truncated-data":
        img.write_bytes(raw[:-10])
    elif kind == "trailing":
        img.write_bytes(raw + b"\0")
    elif kind == "truncated-header":
        img.write_bytes(raw[:9])
    elif kind == "wrong-dims":
        img.write_bytes(idx_bytes(np.zeros((6, 27, 28), np.uint8)))
    elif kind == "labels-as-images":
        img.write_bytes(lbl.read_bytes())
    elif kind == "count-mismatch":
        lbl.write_bytes(idx_bytes(arrays[MNIST_NAMES[1]][:5]))
    elif kind == "label-range":
        lbl.write_bytes(idx_bytes(np.full(6, 10, np.uint8)))
    elif kind == "truncated-gzip":
        img.unlink()
        (tmp_path / (MNIST_NAMES[0] + ".gz")).write_bytes(gzip.compress(raw)[:-20])


@pytest.mark.parametrize(
    "kind,message",
    [
        ("magic", "not an IDX file"),
        ("truncated-data", "truncated"),
        ("trailing", "trailing bytes"),
        ("truncated-header", "truncated IDX header"),
        ("wrong-dims", r"expected uint8 images of shape \(N, 28, 28\)"),
        ("labels-as-images", r"expected uint8 images of shape \(N, 28, 28\), got uint8 \(6,\)"),
        ("count-mismatch", "6 images in train-images-idx3-ubyte but 5 labels"),
        ("label-range", "labels must be 0..9"),
        ("truncated-gzip", "corrupt or truncated gzip"),
    ],
)
def test_mnist_corrupt_files(tmp_path, kind, message):
    _corrupt(tmp_path, kind)
    with pytest.raises(D.DatasetError, match=message):
        D.load_mnist(tmp_path)


# ------------------------------------------------------------------------------------------------ CIFAR
@pytest.mark.parametrize("protocol", [3, 4, 5])  # 3: the original files' numpy.core.multiarray name
@pytest.mark.parametrize("keys_bytes", [True, False])
def test_load_cifar10(tmp_path, protocol, keys_bytes):
    folder, batches = make_cifar(tmp_path, protocol, keys_bytes=keys_bytes)
    for root in (tmp_path, folder):
        train, test = D.load_cifar10(root)
        assert train.x.shape == (25, 3, 32, 32) and train.x.dtype == np.uint8
        assert test.x.shape == (5, 3, 32, 32)
        key = b"data" if keys_bytes else "data"
        first = batches["data_batch_1"][key][0]
        np.testing.assert_array_equal(train.x[0, 1].ravel(), first[1024:2048])  # R, G, B planes in order
        lab = b"labels" if keys_bytes else "labels"
        np.testing.assert_array_equal(test.y, batches["test_batch"][lab])


def test_cifar_missing_files_name_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        D.load_cifar10(tmp_path / "none")
    folder, _ = make_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(D.DatasetNotFoundError, match=r"missing data_batch_3 .*extract it first"):
        D.load_cifar10(tmp_path)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("protocol", [3, 4])
def test_cifar_malicious_pickle_is_refused(tmp_path, protocol):
    folder, _ = make_cifar(tmp_path)
    target = str(tmp_path / "pwned")
    batch = cifar_batch(5, 0)
    batch[b"data"] = _Evil(target)
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(D.DatasetError, match=r"refusing to load global (posix|os)\.mkdir"):
        D.load_cifar10(tmp_path)
    assert not os.path.exists(target)


def test_cifar_refuses_builtins(tmp_path):
    folder, _ = make_cifar(tmp_path)
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(D.DatasetError, match=r"refusing to load global builtins\.eval"):
        D.load_cifar10(tmp_path)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda b: b.__setitem__(b"data", b[b"data"][:, :3000]), r"uint8 array \(N, 3072\)"),
        (lambda b: b.__setitem__(b"data", b[b"data"].astype(object)), r"uint8 array \(N, 3072\), got object"),
        (lambda b: b.__setitem__(b"labels", b[b"labels"][:-1]), "5 images but labels of shape"),
        (lambda b: b.__setitem__(b"labels", [11] * 5), "labels must be 0..9"),
        (lambda b: b.pop(b"data"), "'data' as a uint8 array"),
    ],
)
def test_cifar_wrong_content(tmp_path, mutate, message):
    folder, _ = make_cifar(tmp_path)
    batch = cifar_batch(5, 0)
    mutate(batch)
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(D.DatasetError, match=message):
        D.load_cifar10(tmp_path)


def test_cifar_truncated_pickle(tmp_path):
    folder, _ = make_cifar(tmp_path)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(D.DatasetError, match="test_batch: corrupt or truncated CIFAR-10 batch"):
        D.load_cifar10(tmp_path)


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="expected one of digits, mnist, fashion-mnist, cifar10, got 'svhn'"):
        D.load_dataset("svhn")


# ------------------------------------------------------------------------------------------------ DataLoader
def small_set(n=10, channels=1, dtype=np.float32):
    x = np.arange(n * channels * 4 * 4).reshape(n, channels, 4, 4).astype(dtype)
    if dtype == np.float32:
        x /= x.max()
    return D.ArrayDataset(x, np.arange(n) % 10)


@pytest.mark.parametrize(
    "n,bs,drop_last,sizes", [(10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (8, 4, True, [4, 4])]
)
def test_loader_batching(n, bs, drop_last, sizes):
    ds = small_set(n)
    loader = D.DataLoader(ds, batch_size=bs, drop_last=drop_last)
    batches = list(loader)
    assert len(loader) == len(sizes) and [len(b[1]) for b in batches] == sizes
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), ds.x[: sum(sizes)])
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int64


def test_loader_accepts_pair_and_checks_arguments():
    x = np.zeros((3, 1, 2, 2), np.float32)
    assert len(D.DataLoader((x, np.zeros(3, int)), batch_size=2)) == 2
    with pytest.raises(ValueError, match=r"expected 3 targets of shape \(3, ...\) .*got shape \(2,\)"):
        D.DataLoader((x, np.zeros(2, int)))
    with pytest.raises(ValueError, match="expected batch_size >= 1, got 0"):
        D.DataLoader((x, np.zeros(3, int)), batch_size=0)
    with pytest.raises(ValueError, match="std must be positive"):
        D.DataLoader((x, np.zeros(3, int)), normalize=(0.0, 0.0))
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        D.DataLoader((x, np.zeros(3, int)), device="gpu")


def _orders(loader, passes):
    return [np.concatenate([gl.to_numpy(y) for _, y in loader]) for _ in range(passes)]


def test_loader_shuffle_reproducible_and_resumable():
    ds = D.ArrayDataset(np.zeros((50, 1, 1, 1), np.float32), np.arange(50))
    a = _orders(D.DataLoader(ds, 8, shuffle=True, seed=3), 3)
    b = _orders(D.DataLoader(ds, 8, shuffle=True, seed=3), 3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
        assert sorted(x) == list(range(50))  # a permutation
    assert not np.array_equal(a[0], a[1])  # each pass reshuffles
    assert not np.array_equal(a[0], _orders(D.DataLoader(ds, 8, shuffle=True, seed=4), 1)[0])
    resumed = D.DataLoader(ds, 8, shuffle=True, seed=99)
    resumed.load_state_dict({"seed": 3, "epoch": 2})
    np.testing.assert_array_equal(_orders(resumed, 1)[0], a[2])
    again = D.DataLoader(ds, 8, shuffle=True, seed=3)
    again.set_epoch(1)
    np.testing.assert_array_equal(_orders(again, 1)[0], a[1])
    assert again.state_dict() == {"seed": 3, "epoch": 2}


def test_loader_seed_none_follows_manual_seed():
    ds = small_set(20)
    gl.manual_seed(5)
    s1 = D.DataLoader(ds, shuffle=True).seed
    gl.manual_seed(5)
    assert D.DataLoader(ds, shuffle=True).seed == s1
    state = gl.backend.get_rng_state()
    D.DataLoader(ds)  # an unshuffled loader draws nothing
    assert gl.backend.get_rng_state() == state


def test_loader_normalize_and_uint8_scaling(device):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    loader = D.DataLoader((x, np.zeros(6, int)), batch_size=6, normalize=(mean, std), device=device)
    xb, yb = next(iter(loader))
    assert gl.get_array_module(xb) is gl.get_array_module(gl.to_device(np.zeros(1), device))
    assert gl.get_array_module(yb) is gl.get_array_module(xb)
    want = (x / 255.0 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    np.testing.assert_allclose(gl.to_numpy(xb), want, rtol=1e-6, atol=1e-6)
    assert xb.dtype == np.float32


def test_loader_float64_batches():
    xb, _ = next(iter(D.DataLoader(small_set(4), batch_size=4, dtype=np.float64)))
    assert xb.dtype == np.float64


def test_random_crop_is_a_window_of_the_padded_image(device):
    x = gl.to_device(np.random.default_rng(0).random((16, 2, 5, 5)).astype(np.float32), device)
    out = gl.to_numpy(D.RandomCrop(5, padding=2)(x))
    padded = np.pad(gl.to_numpy(x), ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for i in range(16):
        hits = [
            (t, l) for t in range(5) for l in range(5) if np.array_equal(padded[i, :, t : t + 5, l : l + 5], out[i])
        ]
        assert hits, f"image {i} is not a crop of its padded input"
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets vary per image


def test_random_crop_without_padding_is_identity_and_flip(device):
    x = gl.to_device(np.random.default_rng(0).random((4, 1, 3, 3)).astype(np.float32), device)
    np.testing.assert_array_equal(gl.to_numpy(D.RandomCrop(3)(x)), gl.to_numpy(x))
    np.testing.assert_array_equal(gl.to_numpy(D.RandomHorizontalFlip(1.0)(x)), gl.to_numpy(x)[..., ::-1])
    np.testing.assert_array_equal(gl.to_numpy(D.RandomHorizontalFlip(0.0)(x)), gl.to_numpy(x))
    with pytest.raises(ValueError, match="RandomCrop: crop 8 is larger than the padded image 5x5"):
        D.RandomCrop(8, padding=1)(x)


def test_augmented_loader_shapes_and_determinism(device):
    x = np.random.default_rng(1).integers(0, 256, (12, 3, 8, 8), dtype=np.uint8)
    ds = D.ArrayDataset(x, np.zeros(12, int))

    def run():
        gl.manual_seed(7)
        loader = D.DataLoader(ds, 5, shuffle=True, seed=1, device=device, augment=D.cifar10_augment(8, 2))
        return [gl.to_numpy(b) for b, _ in loader]

    first, second = run(), run()
    assert [b.shape for b in first] == [(5, 3, 8, 8), (5, 3, 8, 8), (2, 3, 8, 8)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    plain = D.DataLoader(ds, 5, shuffle=True, seed=1, device=device)
    assert any(not np.array_equal(a, gl.to_numpy(b)) for a, (b, _) in zip(first, plain, strict=True))
