"""The module system: registration, names, modes, dtype/device moves, state dicts, repr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import one_block_cnn

import gpulayers as gl
from gpulayers import nn


def test_module_state_dict_keys_match_pytorch():
    ours = one_block_cnn().state_dict()
    theirs = one_block_cnn(torch.nn).state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == tuple(value.shape), key
        assert ours[key].dtype == value.numpy().dtype, key


def test_module_named_parameters_order_and_names():
    names = [n for n, _ in one_block_cnn().named_parameters()]
    assert names == [n for n, _ in one_block_cnn(torch.nn).named_parameters()]
    assert names[0] == "0.weight"


def test_module_state_dict_roundtrip_with_pytorch():
    model, tmodel = one_block_cnn(), one_block_cnn(torch.nn)
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    for k, v in tmodel.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), model.state_dict()[k])
    tmodel2 = one_block_cnn(torch.nn)
    model.load_state_dict({k: v.numpy() for k, v in tmodel2.state_dict().items()})
    for k, v in tmodel2.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v.numpy())


def test_module_state_dict_is_a_copy():
    model = nn.Linear(3, 2)
    sd = model.state_dict()
    sd["weight"][...] = 99
    assert not np.any(model.weight.data == 99)


def test_module_load_state_dict_keeps_dtype():
    model = nn.Linear(3, 2).double()
    model.load_state_dict({"weight": np.ones((2, 3), np.float32), "bias": np.zeros(2, np.float32)})
    assert model.weight.data.dtype == np.float64
    np.testing.assert_array_equal(model.weight.data, np.ones((2, 3)))


def test_module_load_state_dict_missing_key():
    model = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="missing keys.*bias"):
        model.load_state_dict({"weight": np.ones((2, 3))})


def test_module_load_state_dict_unexpected_key():
    model = nn.Linear(3, 2)
    sd = model.state_dict()
    sd["extra.weight"] = np.ones(1)
    with pytest.raises(RuntimeError, match="unexpected keys.*extra.weight"):
        model.load_state_dict(sd)


def test_module_load_state_dict_non_strict_ignores_extras():
    model = nn.Linear(3, 2)
    model.load_state_dict({"weight": np.full((2, 3), 2.0), "junk": np.ones(1)}, strict=False)
    np.testing.assert_array_equal(model.weight.data, np.full((2, 3), 2.0, np.float32))


def test_module_load_state_dict_shape_mismatch_names_key():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match=r"0\.weight.*\(2, 3\).*\(3, 2\)"):
        model.load_state_dict({"0.weight": np.ones((3, 2)), "0.bias": np.ones(2)})


def test_module_to_double_casts_params_and_float_buffers_only():
    model = one_block_cnn().double()
    for _, p in model.named_parameters():
        assert p.data.dtype == np.float64
    sd = model.state_dict()
    assert sd["1.running_mean"].dtype == np.float64
    assert sd["1.num_batches_tracked"].dtype == np.int64
    model.float()
    assert model.state_dict()["1.running_var"].dtype == np.float32


def test_module_to_rejects_integer_dtype():
    with pytest.raises(TypeError, match="floating"):
        nn.Linear(2, 2).to(dtype=np.int32)


def test_module_new_modules_start_on_cpu_float32():
    for _, p in one_block_cnn().named_parameters():
        assert isinstance(p.data, np.ndarray) and p.data.dtype == np.float32


def test_module_train_eval_recursive():
    model = one_block_cnn()
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_module_zero_grad():
    model = nn.Linear(3, 2)
    x = np.ones((4, 3), np.float32)
    model.backward(np.ones_like(model(x)))
    assert model.weight.grad is not None
    model.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(model.weight.grad, 0)
    model.zero_grad()
    assert model.weight.grad is None


def test_module_backward_accumulates():
    model = nn.Linear(3, 2)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    model(x)
    model.backward(np.ones((4, 2), np.float32))
    first = model.weight.grad.copy()
    model(x)
    model.backward(np.ones((4, 2), np.float32))
    np.testing.assert_allclose(model.weight.grad, 2 * first)


def test_module_repr_shows_structure_and_non_defaults():
    text = repr(one_block_cnn())
    assert text.startswith("Sequential(")
    assert "(0): Conv2d(1, 8, kernel_size=(3, 3)" in text
    assert "padding=(1, 1)" in text
    assert "(6): Linear(in_features=1568, out_features=10, bias=True)" in text


def test_module_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="Sequential"):
        nn.Sequential(nn.ReLU(), "relu")


def test_module_sequential_indexing():
    model = one_block_cnn()
    assert isinstance(model[0], nn.Conv2d)
    assert len(model[1:3]) == 2
    assert len(model) == 7


def test_module_assigning_non_parameter_to_parameter_slot_fails():
    layer = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="weight"):
        layer.weight = np.zeros((2, 2))


def test_module_custom_module_registration():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 3)
            self.b = nn.Linear(3, 1)
            self.scale = nn.Parameter(np.ones(1, np.float32))

    names = [n for n, _ in Two().named_parameters()]
    assert names == ["scale", "a.weight", "a.bias", "b.weight", "b.bias"]


def test_module_parameters_are_shared_once():
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin, lin)
    assert len(list(model.parameters())) == 2


def test_module_to_cuda_without_gpu_raises():
    if gl.cuda_is_available():
        pytest.skip("a GPU is usable here")
    with pytest.raises(RuntimeError, match="CUDA"):
        nn.Linear(2, 2).to("cuda")
