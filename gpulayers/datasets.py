"""Data sets held in memory, and the readers that build them from the original files.

Images are NumPy arrays in NCHW: ``x`` (float32 in [0, 1], or uint8 pixels that the loader scales
to [0, 1] on the device) and ``y`` (int64 class indices). :class:`ArrayDataset` holds any other
(N, ...) inputs and targets too.

- :func:`load_digits`: scikit-learn's 8x8 handwritten digits, bundled with scikit-learn (no download).
- :func:`load_mnist`, :func:`load_fashion_mnist`: the original IDX files in a folder.
- :func:`load_cifar10`: the ``cifar-10-batches-py`` pickles, read by an unpickler that refuses every
  global except NumPy's array reconstructors (a pickle can otherwise run arbitrary code).

Nothing here touches the network: when files are missing the error says what to download and where
to put it.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from . import backend
from ._checks import check_int

__all__ = [
    "ArrayDataset",
    "DatasetError",
    "DatasetNotFoundError",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "read_idx",
    "DATASETS",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


class DatasetError(ValueError):
    """A data file is missing, corrupt or not what it should be."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data folder or file is missing (the message says what to download and where)."""


class ArrayDataset:
    """Inputs and targets held in memory (PyTorch's ``TensorDataset`` for a pair of arrays).

    Args:
        x: inputs (N, ...): images (N, C, H, W) as float, or uint8 pixels in 0..255, tabular
            rows (N, F), sequences (N, C, L), or any other real-valued (N, ...) array.
        y: targets (N, ...). Integer and bool targets become int64 class indices; floating
            targets keep their dtype (regression targets are never truncated).
        name: a label for messages.
        mean, std: per-channel statistics of the training inputs (on the [0, 1] scale for
            pixels), for :class:`~gpulayers.data.DataLoader`'s ``normalize``.
        classes: class names, or None.
        target_dtype: an integer dtype to convert floating targets to class indices; every
            target must then be a finite whole number (NaN and 1.7 are refused). Defaults to
            None (keep floating targets as they are).
    """

    def __init__(self, x, y, name: str = "", mean=None, std=None, classes=None, target_dtype=None):
        x = backend.to_numpy(x)  # CuPy arrays too (np.asarray refuses them)
        y = backend.to_numpy(y)
        if x.ndim < 1:
            raise ValueError("ArrayDataset: expected inputs of shape (N, ...), got a 0-D array")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"ArrayDataset: expected real-valued inputs (float, int or uint8), got dtype {x.dtype}")
        if y.ndim < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"ArrayDataset: expected {x.shape[0]} targets of shape ({x.shape[0]}, ...) "
                f"for inputs of shape {x.shape}, got shape {y.shape}"
            )
        if y.dtype.kind not in "biuf":
            raise TypeError(f"ArrayDataset: expected integer or floating targets, got dtype {y.dtype}")
        if target_dtype is not None:
            y = _as_class_indices(y, np.dtype(target_dtype))
        elif y.dtype.kind in "biu":
            y = y.astype(np.int64, copy=False)
        self.x, self.y = x, y
        self.name, self.mean, self.std, self.classes = name, mean, std, classes

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def subset(self, n: int | None) -> ArrayDataset:
        """The first ``n`` examples (all of them for None or ``n >= len``); ``n`` >= 0."""
        if n is None:
            return self
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"ArrayDataset.subset: expected n to be an int or None, got {type(n).__name__} {n!r}")
        if n < 0:
            raise ValueError(f"ArrayDataset.subset: expected n >= 0 (the first n examples), got {n}")
        if n >= len(self):
            return self
        return ArrayDataset(self.x[:n], self.y[:n], self.name, self.mean, self.std, self.classes)

    def __repr__(self) -> str:
        return f"ArrayDataset({self.name!r}, x={self.x.shape} {self.x.dtype}, y={self.y.shape} {self.y.dtype})"


def _as_class_indices(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Targets as integer class indices, refusing values that are not whole numbers."""
    if dtype.kind not in "iu":
        raise TypeError(f"ArrayDataset: expected an integer target_dtype, got {dtype}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            first = float(y[bad].reshape(-1)[0])
            raise ValueError(
                f"ArrayDataset: expected whole-number targets for target_dtype {dtype}, "
                f"got {int(bad.sum())} that are not (first: {first!r})"
            )
        info = np.iinfo(dtype)
        if y.size and (y.min() < info.min or y.max() > info.max):
            raise ValueError(f"ArrayDataset: targets {y.min()}..{y.max()} do not fit target_dtype {dtype}")
    return y.astype(dtype, copy=False)


# ------------------------------------------------------------------------------------------------
# scikit-learn digits
# ------------------------------------------------------------------------------------------------
_DIGITS_COUNT = 1797


def load_digits(test_size: int = 360, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's 1,797 handwritten digits, 8x8, split 1,437 / 360 (stratified, fixed seed).

    Returns:
        (train, test): images float32 (N, 1, 8, 8) in [0, 1], labels int64.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            'The digits data set comes with scikit-learn, which is not installed: pip install "gpulayers[train]"'
        ) from exc
    test_size = check_int("load_digits", "test_size", test_size, 1)
    if test_size >= _DIGITS_COUNT:
        raise ValueError(f"load_digits: expected test_size < {_DIGITS_COUNT} (the number of images), got {test_size}")
    seed = check_int("load_digits", "seed", seed, 0)
    bunch = _sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    # Stratified split: each class gives its share of the test set (largest remainders fill it up).
    rng = np.random.default_rng(seed)
    counts = np.bincount(y)
    quota = counts * test_size / len(y)
    n_test = np.floor(quota).astype(int)
    short = test_size - n_test.sum()
    n_test[np.argsort(-(quota - n_test), kind="stable")[:short]] += 1
    test_idx, train_idx = [], []
    for c, k in enumerate(n_test):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = np.sort(np.concatenate(test_idx))
    mean = (float(x[train_idx].mean()),)
    std = (float(x[train_idx].std()),)
    classes = tuple(str(i) for i in range(10))
    return (
        ArrayDataset(x[train_idx], y[train_idx], "digits/train", mean, std, classes),
        ArrayDataset(x[test_idx], y[test_idx], "digits/test", mean, std, classes),
    )


# ------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# ------------------------------------------------------------------------------------------------
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


_GZIP_MAX_RATIO = 1100  # deflate cannot expand data by more than about 1032 times


def _idx_stream(path: Path):
    """An open binary stream of the IDX data in ``path`` (decompressed when gzipped), and the
    largest number of bytes it can hold (the file's size, or the most its gzip stream can expand to)."""
    try:
        size = path.stat().st_size
        f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb"), size * _GZIP_MAX_RATIO, f
    f.seek(0)
    return f, size, f


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a NumPy array, checking its header and length.

    The size the header declares is checked against what the file can hold before anything of that
    size is allocated.
    """
    path = Path(path)
    stream, limit, raw_file = _idx_stream(path)
    try:
        with raw_file, stream:
            return _read_idx_stream(path, stream, limit)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({exc}); download it again") from exc


def _read_idx_stream(path: Path, stream, limit: int) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_TYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
    ndim = magic[3]
    raw_dims = stream.read(4 * ndim)
    if ndim == 0 or len(raw_dims) < 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header ({ndim} dimensions, {4 + len(raw_dims)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    dtype = np.dtype(_IDX_TYPES[magic[2]])
    want = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if want > limit:
        raise DatasetError(
            f"{path}: IDX header declares dimensions {dims} ({want:,} bytes), more than the file can hold "
            f"({limit:,} bytes at most); the file is damaged or not an IDX file"
        )
    body = stream.read(want)
    if len(body) < want:
        raise DatasetError(f"{path}: IDX data truncated: dimensions {dims} need {want} bytes, found {len(body)}")
    if stream.read(1):
        raise DatasetError(f"{path}: IDX data has trailing bytes after the {want} that dimensions {dims} need")
    return np.frombuffer(body, dtype).reshape(dims).astype(dtype.newbyteorder("="))


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SOURCES = {
    "MNIST": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "MNIST"),
    "Fashion-MNIST": ("https://github.com/zalandoresearch/fashion-mnist (data/fashion)", "FashionMNIST"),
}
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")


def _idx_help(title: str, root: Path) -> str:
    url, _ = _MNIST_SOURCES[title]
    names = ", ".join(f"{n}.gz" for pair in _MNIST_FILES.values() for n in pair)
    return f"download the four {title} files {names} from {url} and put them in {root} (gzipped or not)"


def _find_idx(root: Path, base: str, title: str) -> Path:
    folders = [root, root / _MNIST_SOURCES[title][1] / "raw"]  # also torchvision's layout
    for folder in folders:
        for name in (base, base + ".gz", base.replace("-idx", ".idx"), base.replace("-idx", ".idx") + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DatasetNotFoundError(f"{title}: {base}[.gz] not found in {root}; {_idx_help(title, root)}")


def _load_idx_pair(root: Path, split: str, title: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    img_path = _find_idx(root, _MNIST_FILES[split][0], title)
    lbl_path = _find_idx(root, _MNIST_FILES[split][1], title)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != shape or images.dtype != np.uint8:
        raise DatasetError(
            f"{img_path}: expected uint8 images of shape (N, {shape[0]}, {shape[1]}), "
            f"got {images.dtype} {images.shape}; {_idx_help(title, root)}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetError(f"{lbl_path}: expected a 1-D uint8 label file, got {labels.dtype} {labels.shape}")
    if len(images) == 0:
        raise DatasetError(f"{img_path}: holds no images (the header says 0); {_idx_help(title, root)}")
    if len(labels) != len(images):
        raise DatasetError(f"{title} {split}: {len(images)} images in {img_path.name} but {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DatasetError(f"{lbl_path}: labels must be 0..9, found {int(labels.max())}")
    return images[:, None], labels.astype(np.int64)


def _load_mnist_like(data_dir, title: str, name: str, mean, std, classes) -> tuple[ArrayDataset, ArrayDataset]:
    if data_dir is None:
        raise DatasetNotFoundError(f"{title}: no data folder given (--data-dir); {_idx_help(title, Path('DIR'))}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"{title}: folder {root} does not exist; {_idx_help(title, root)}")
    train, test = (_load_idx_pair(root, split, title, (28, 28)) for split in ("train", "test"))
    return (
        ArrayDataset(*train, f"{name}/train", mean, std, classes),
        ArrayDataset(*test, f"{name}/test", mean, std, classes),
    )


def load_mnist(data_dir: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    """MNIST from its four IDX files in ``data_dir``: 60,000 / 10,000 uint8 images (N, 1, 28, 28)."""
    return _load_mnist_like(data_dir, "MNIST", "mnist", (0.1307,), (0.3081,), tuple(str(i) for i in range(10)))


def load_fashion_mnist(data_dir: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Fashion-MNIST from its four IDX files (same names and format as MNIST's)."""
    return _load_mnist_like(data_dir, "Fashion-MNIST", "fashion-mnist", (0.2860,), (0.3530,), _FASHION_CLASSES)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles, read without executing anything)
# ------------------------------------------------------------------------------------------------
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_NDARRAY_TOKEN = object()  # stands for np.ndarray: a pickle may pass the class, never call it
_ndarray_reduce = np.zeros(1, np.uint8).__reduce__()[0]  # numpy's _reconstruct, whatever its module
_ndarray_frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]  # protocol-5 pickles of arrays
# The exact globals a pickled NumPy array needs; every other global (os.system, builtins.eval...)
# is refused, so loading a hostile file cannot run code.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _ndarray_reduce,
    ("numpy._core.multiarray", "_reconstruct"): _ndarray_reduce,
    ("numpy.core.numeric", "_frombuffer"): _ndarray_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _ndarray_frombuffer,
    ("numpy", "ndarray"): _NDARRAY_TOKEN,
    ("numpy", "dtype"): np.dtype,
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def _empty_reconstruct(subtype, shape, dtype):
    """NumPy's ``_reconstruct`` for the empty placeholder a pickled array starts from, and nothing
    else (a pickle cannot use it to allocate an array of any size)."""
    if subtype is not _NDARRAY_TOKEN or not isinstance(shape, tuple) or shape != (0,):
        raise pickle.UnpicklingError("an array reconstructor was called with other arguments than a pickled array's")
    return _ndarray_reduce(np.ndarray, shape, dtype)


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            found = _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"refusing to load global {module}.{name} (not a NumPy array part)") from None
        return _empty_reconstruct if found is _ndarray_reduce else found


def _cifar_help(root: Path) -> str:
    files = ", ".join((*_CIFAR_TRAIN, "test_batch"))
    return (
        f"download {_CIFAR_URL}, extract it (tar xzf cifar-10-python.tar.gz) and pass the folder that holds "
        f"cifar-10-batches-py/ (or that folder itself) as the data folder; expected files: {files} (now: {root})"
    )


def _read_cifar_batch(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise DatasetError(f"{path}: not a CIFAR-10 batch ({exc}); {_cifar_help(root)}") from exc
    except (
        pickle.UnpicklingError,
        RecursionError,
        EOFError,
        ValueError,
        TypeError,
        LookupError,
        AttributeError,
        OverflowError,
        MemoryError,
        struct.error,
    ) as exc:
        raise DatasetError(f"{path}: corrupt or truncated CIFAR-10 batch ({exc}); {_cifar_help(root)}") from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a dict with 'data' and 'labels', got {type(batch).__name__}")
    get = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    data, labels = get.get("data"), get.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: expected 'data' as a uint8 array (N, 3072), got {got}")
    file_size = path.stat().st_size
    if data.nbytes > file_size or 0 in data.strides or not data.flags.c_contiguous:
        raise DatasetError(
            f"{path}: 'data' claims {data.shape[0]:,} images ({data.nbytes:,} bytes) but the file holds "
            f"{file_size:,} bytes; the file is damaged or forged"
        )
    if data.shape[0] == 0:
        raise DatasetError(f"{path}: holds no images; {_cifar_help(root)}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DatasetError(f"{path}: 'labels' is not a list of integers in the int64 range ({exc})") from exc
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: labels must be 0..9, found {int(labels.min())}..{int(labels.max())}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 from ``cifar-10-batches-py``: 50,000 / 10,000 uint8 images (N, 3, 32, 32)."""
    if data_dir is None:
        raise DatasetNotFoundError(f"CIFAR-10: no data folder given (--data-dir); {_cifar_help(Path('DIR'))}")
    root = Path(data_dir).expanduser()
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    if not folder.is_dir():
        raise DatasetNotFoundError(f"CIFAR-10: folder {root} does not exist; {_cifar_help(root)}")
    missing = [n for n in (*_CIFAR_TRAIN, "test_batch") if not (folder / n).is_file()]
    if missing:
        hint = " (found cifar-10-python.tar.gz: extract it first)" if (root / "cifar-10-python.tar.gz").exists() else ""
        raise DatasetNotFoundError(f"CIFAR-10: missing {', '.join(missing)} in {folder}{hint}; {_cifar_help(root)}")
    parts = [_read_cifar_batch(folder / n, root) for n in _CIFAR_TRAIN]
    x_test, y_test = _read_cifar_batch(folder / "test_batch", root)
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return (
        ArrayDataset(x_train, y_train, "cifar10/train", *stats, _CIFAR_CLASSES),
        ArrayDataset(x_test, y_test, "cifar10/test", *stats, _CIFAR_CLASSES),
    )


def load_dataset(name: str, data_dir: str | Path | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """``(train, test)`` for ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``."""
    if not isinstance(name, str):
        raise TypeError(f"load_dataset: expected the data set's name as a string, got {type(name).__name__}")
    key = name.lower().replace("_", "-")
    if key == "digits":
        return load_digits()
    if key == "mnist":
        return load_mnist(data_dir)
    if key in ("fashion-mnist", "fashionmnist"):
        return load_fashion_mnist(data_dir)
    if key in ("cifar10", "cifar-10"):
        return load_cifar10(data_dir)
    raise ValueError(f"load_dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
