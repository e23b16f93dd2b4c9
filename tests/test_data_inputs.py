"""ArrayDataset and DataLoader inputs: float targets, any (N, ...) input, map-style datasets,
and every loader argument checked at construction with a message naming the class."""

from __future__ import annotations

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import data as D

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------------------------------ ArrayDataset
def test_float_targets_stay_float():
    ds = D.ArrayDataset(np.zeros((3, 2), np.float32), np.array([0.5, 1.7, 2.2]))
    assert ds.y.dtype == np.float64
    np.testing.assert_array_equal(ds.y, [0.5, 1.7, 2.2])
    _, yb = next(iter(D.DataLoader(ds, batch_size=3)))
    np.testing.assert_array_equal(yb, [0.5, 1.7, 2.2])


def test_nan_target_is_not_turned_into_an_int():
    ds = D.ArrayDataset(np.zeros((2, 2), np.float32), np.array([np.nan, 1.0]))
    assert np.isnan(ds.y[0])


@pytest.mark.parametrize(
    "y,pattern",
    [
        (np.array([np.nan, 1.0]), r"whole-number targets .*first: nan"),
        (np.array([0.0, 1.7]), r"whole-number targets .*first: 1.7"),
        (np.array([np.inf, 1.0]), r"whole-number targets"),
    ],
)
def test_integer_target_dtype_refuses_nan_and_fractions(y, pattern):
    with pytest.raises(ValueError, match="ArrayDataset: expected " + pattern):
        D.ArrayDataset(np.zeros((2, 2), np.float32), y, target_dtype=np.int64)


def test_integer_target_dtype_converts_whole_floats():
    ds = D.ArrayDataset(np.zeros((3, 2), np.float32), np.array([0.0, 2.0, 1.0]), target_dtype=np.int64)
    assert ds.y.dtype == np.int64 and ds.y.tolist() == [0, 2, 1]


def test_int_and_bool_targets_become_int64():
    assert D.ArrayDataset(np.zeros((2, 1)), np.array([1, 0], np.int32)).y.dtype == np.int64
    assert D.ArrayDataset(np.zeros((2, 1)), np.array([True, False])).y.dtype == np.int64


@pytest.mark.parametrize("shape", [(5,), (5, 3), (5, 2, 7), (5, 1, 4, 4), (5, 2, 2, 2, 2), (0, 3)])
def test_any_n_by_anything_input_is_accepted_like_torch(shape):
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    y = np.arange(shape[0])
    batches = list(D.DataLoader(D.ArrayDataset(x, y), batch_size=2))
    want = list(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)), 2))
    assert len(batches) == len(want)
    for (xb, yb), (xt, yt) in zip(batches, want, strict=True):
        np.testing.assert_array_equal(xb, xt.numpy())
        np.testing.assert_array_equal(yb, yt.numpy())


@pytest.mark.parametrize(
    "x,y,exc,pattern",
    [
        (np.float32(1), np.zeros(1), ValueError, r"inputs of shape \(N, ...\), got a 0-D array"),
        (np.zeros((2, 2), complex), np.zeros(2), TypeError, "real-valued inputs"),
        (np.array([["a"], ["b"]]), np.zeros(2), TypeError, "real-valued inputs"),
        (np.zeros((2, 2)), np.array(["a", "b"]), TypeError, "integer or floating targets"),
        (np.zeros((2, 2)), np.zeros(3), ValueError, r"2 targets of shape \(2, ...\)"),
        (np.zeros((2, 2)), np.float64(1), ValueError, r"2 targets"),
    ],
)
def test_array_dataset_bad_arrays(x, y, exc, pattern):
    with pytest.raises(exc, match="ArrayDataset: expected " + pattern):
        D.ArrayDataset(x, y)


@pytest.mark.parametrize(
    "n,exc,pattern",
    [
        (-3, ValueError, "n >= 0"),
        (True, TypeError, "n to be an int or None"),
        (2.5, TypeError, "n to be an int or None"),
    ],
)
def test_subset_refuses_negative_and_non_int(n, exc, pattern):
    ds = D.ArrayDataset(np.zeros((10, 2)), np.arange(10))
    with pytest.raises(exc, match="ArrayDataset.subset: expected " + pattern):
        ds.subset(n)


def test_subset_keeps_the_first_n():
    ds = D.ArrayDataset(np.zeros((10, 2)), np.arange(10))
    assert len(ds.subset(0)) == 0 and len(ds.subset(3)) == 3 and ds.subset(None) is ds and ds.subset(20) is ds


# ------------------------------------------------------------------------------------------------ map-style
class _Squares:
    """A map-style dataset that is not an ArrayDataset: items are (x, label, weight)."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return np.full((2, 3), i, dtype=np.float64), i % 3, 0.5 * i


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_takes_any_map_style_dataset_like_torch(shuffle):
    ours = list(D.DataLoader(_Squares(), batch_size=3, shuffle=shuffle, seed=4))
    order = D.DataLoader(_Squares(), batch_size=3, shuffle=shuffle, seed=4).order(0)
    want = list(torch.utils.data.DataLoader(torch.utils.data.Subset(_Squares(), order.tolist()), batch_size=3))
    assert len(ours) == len(want) == 3
    for (xb, lb, wb), (xt, lt, wt) in zip(ours, want, strict=True):
        assert xb.dtype == np.float32  # the input is prepared like an ArrayDataset's
        np.testing.assert_array_equal(xb, xt.numpy())
        assert lb.dtype == np.int64 and wb.dtype == np.float64  # torch's collate dtypes
        np.testing.assert_array_equal(lb, lt.numpy())
        np.testing.assert_array_equal(wb, wt.numpy())


def test_collate_dicts_and_single_arrays():
    batch = D.default_collate([{"a": np.ones(2), "b": 1}, {"a": np.zeros(2), "b": 2}])
    np.testing.assert_array_equal(batch["a"], [[1, 1], [0, 0]])
    assert batch["b"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="DataLoader: cannot stack samples of different shapes"):
        D.default_collate([np.ones(2), np.ones(3)])
    with pytest.raises(TypeError, match="DataLoader: cannot collate samples of type object"):
        D.default_collate([object()])

    class Plain:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.full((1, 2, 2), i, np.uint8)

    xb = next(iter(D.DataLoader(Plain(), batch_size=4)))
    np.testing.assert_allclose(xb, np.arange(4).reshape(4, 1, 1, 1) / 255 * np.ones((1, 1, 2, 2)), rtol=1e-6)


def test_loader_refuses_what_is_not_a_dataset():
    with pytest.raises(TypeError, match=r"DataLoader: expected an ArrayDataset, a pair \(x, y\) .*got int"):
        D.DataLoader(5)


# ------------------------------------------------------------------------------------------------ arguments
X = np.zeros((4, 1, 3, 3), np.float32)
Y = np.zeros(4, np.int64)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"batch_size": True}, TypeError, "expected batch_size to be an int, got bool"),
        ({"batch_size": 2.0}, TypeError, "expected batch_size to be an int, got float"),
        ({"batch_size": 0}, ValueError, "expected batch_size >= 1, got 0"),
        ({"seed": -1}, ValueError, "expected seed >= 0, got -1"),
        ({"seed": 1.5}, TypeError, "expected seed to be an int"),
        ({"seed": True}, TypeError, "expected seed to be an int, got bool"),
        ({"shuffle": "yes"}, TypeError, "expected shuffle to be a bool"),
        ({"drop_last": 1}, TypeError, "expected drop_last to be a bool"),
        ({"normalize": (0.5, float("nan"))}, ValueError, "expected finite normalize std"),
        ({"normalize": (float("inf"), 0.5)}, ValueError, "expected finite normalize mean"),
        ({"normalize": (0.5, float("inf"))}, ValueError, "expected finite normalize std"),
        ({"normalize": (0.5, 0.0)}, ValueError, "normalize std must be positive"),
        ({"normalize": (0.5, -1.0)}, ValueError, "normalize std must be positive"),
        (
            {"normalize": ((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))},
            ValueError,
            "normalize has 3 values per statistic but the inputs have 1",
        ),
        ({"normalize": (0.5,)}, TypeError, r"expected normalize=\(mean, std\)"),
        ({"normalize": ("a", 1.0)}, TypeError, "expected normalize mean to be numbers"),
        ({"augment": 3}, TypeError, "expected augment to be callable"),
        ({"dtype": np.int32}, TypeError, "expected a floating dtype"),
        ({"dtype": "nonsense"}, TypeError, "expected a floating dtype"),
        ({"dtype": np.float16}, TypeError, r"expected a floating dtype \(float32 or float64, as the layers take\)"),
    ],
)
def test_loader_arguments_refused_at_construction(kwargs, exc, pattern):
    with pytest.raises(exc, match="DataLoader: " + pattern):
        D.DataLoader((X, Y), **kwargs)


def test_set_epoch_and_state_checked():
    loader = D.DataLoader((X, Y), shuffle=True, seed=1)
    with pytest.raises(ValueError, match="DataLoader.set_epoch: expected epoch >= 0"):
        loader.set_epoch(-1)
    with pytest.raises(ValueError, match="DataLoader.load_state_dict: expected seed >= 0"):
        loader.load_state_dict({"seed": -1, "epoch": 0})
    with pytest.raises(ValueError, match="DataLoader.load_state_dict: expected a dict"):
        loader.load_state_dict([1, 2])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.int8])
def test_integer_pixels_outside_0_255_refused(dtype):
    info = np.iinfo(dtype)
    x = np.zeros((2, 1, 2, 2), dtype)
    x[0, 0, 0, 0] = min(info.max, 1000) if info.max > 255 else info.min
    with pytest.raises(
        ValueError, match=f"DataLoader: integer inputs are read as pixels 0..255 .*dtype {np.dtype(dtype)}"
    ):
        D.DataLoader((x, np.zeros(2, int)))


def test_integer_pixels_in_range_are_scaled_explicitly():
    x = np.full((2, 1, 2, 2), 255, np.int32)
    xb, _ = next(iter(D.DataLoader((x, np.zeros(2, int)))))
    np.testing.assert_array_equal(xb, np.ones((2, 1, 2, 2), np.float32))


def test_normalize_per_feature_on_tabular_rows():
    x = np.array([[1.0, 10.0], [3.0, 30.0]], np.float32)
    xb, _ = next(iter(D.DataLoader((x, np.zeros(2, int)), normalize=((2.0, 20.0), (1.0, 10.0)))))
    np.testing.assert_allclose(xb, [[-1.0, -1.0], [1.0, 1.0]])


def test_normalize_channels_of_a_map_style_dataset_checked_on_the_first_batch():
    loader = D.DataLoader(_Squares(), batch_size=2, normalize=((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="DataLoader: normalize has 3 values per statistic but the inputs have 2"):
        next(iter(loader))


@pytest.mark.parametrize(
    "make,exc,pattern",
    [
        (lambda: D.RandomCrop(2.5), TypeError, "RandomCrop: expected size to be an int, got float"),
        (lambda: D.RandomCrop(True), TypeError, "RandomCrop: expected size to be an int, got bool"),
        (lambda: D.RandomCrop(0), ValueError, "RandomCrop: expected size >= 1"),
        (lambda: D.RandomCrop(2, padding=-1), ValueError, "RandomCrop: expected padding >= 0"),
        (lambda: D.RandomCrop(2, padding=1.5), TypeError, "RandomCrop: expected padding to be an int"),
        (lambda: D.RandomHorizontalFlip(float("nan")), ValueError, "RandomHorizontalFlip: expected a finite p"),
        (lambda: D.RandomHorizontalFlip(1.5), ValueError, "RandomHorizontalFlip: expected p >= 0.0 and <= 1.0"),
        (lambda: D.RandomHorizontalFlip(True), TypeError, "RandomHorizontalFlip: expected p to be a real number"),
        (lambda: D.Compose([1]), TypeError, "Compose: expected callables, got int at position 0"),
        (lambda: D.Compose(D.RandomCrop(2)), TypeError, "Compose: expected a list of callables"),
        (lambda: D.cifar10_augment(32.0), TypeError, "RandomCrop: expected size to be an int"),
    ],
)
def test_augmentation_arguments_refused(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


def test_augmentations_name_themselves_on_a_non_image_batch():
    with pytest.raises(ValueError, match=r"RandomCrop: expected a batch of images \(N, C, H, W\), got shape \(2, 3\)"):
        D.RandomCrop(2)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="RandomHorizontalFlip: expected a batch of images"):
        D.RandomHorizontalFlip()(np.zeros((2, 3), np.float32))


def test_seed_refused_before_the_first_iteration():
    with pytest.raises(ValueError, match="seed >= 0"):
        D.DataLoader((X, Y), shuffle=True, seed=-1)
    assert gl.to_numpy(next(iter(D.DataLoader((X, Y), shuffle=True, seed=0)))[0]).shape == (4, 1, 3, 3)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"test_size": True}, TypeError, "load_digits: expected test_size to be an int, got bool"),
        ({"test_size": 2.5}, TypeError, "load_digits: expected test_size to be an int"),
        ({"test_size": -5}, ValueError, "load_digits: expected test_size >= 1"),
        ({"test_size": 5000}, ValueError, "load_digits: expected test_size < 1797"),
        ({"seed": -1}, ValueError, "load_digits: expected seed >= 0"),
        ({"seed": True}, TypeError, "load_digits: expected seed to be an int"),
    ],
)
def test_load_digits_arguments(kwargs, exc, pattern):
    pytest.importorskip("sklearn")
    with pytest.raises(exc, match=pattern):
        D.load_digits(**kwargs)


@pytest.mark.parametrize("name", [3, None, b"digits"])
def test_load_dataset_name_must_be_a_string(name):
    with pytest.raises(TypeError, match="load_dataset: expected the data set's name as a string"):
        D.load_dataset(name)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"seed": -1}, ValueError, "DistributedSampler: expected seed >= 0"),
        ({"shuffle": "no"}, TypeError, "DistributedSampler: expected shuffle to be a bool"),
        ({"drop_last": 1}, TypeError, "DistributedSampler: expected drop_last to be a bool"),
    ],
)
def test_distributed_sampler_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        D.DistributedSampler(range(4), num_replicas=2, rank=0, **kwargs)


def test_distributed_sampler_dataset_and_epoch_checked():
    with pytest.raises(TypeError, match="DistributedSampler: expected a dataset with a length, got int"):
        D.DistributedSampler(5, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="DistributedSampler.set_epoch: expected epoch >= 0"):
        D.DistributedSampler(range(4), num_replicas=1, rank=0).set_epoch(-1)
