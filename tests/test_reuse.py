"""Module reuse and the backward contract: shared modules, Siamese models, tied weights, no_grad."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from helpers import requires_torch, torch
from torch_twins import assert_parity, copy_weights

import gpulayers as gl
from gpulayers import nn, optim
from gpulayers.training import evaluate

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def _shared_relu_pair(dtype, device):
    r = nn.ReLU()
    ours = nn.Sequential(nn.Linear(4, 4), r, nn.Linear(4, 4), r)
    tr = torch.nn.ReLU()
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 4), tr, torch.nn.Linear(4, 4), tr).to(torch.float64)
    return ours, theirs


class Siamese(nn.Module):
    """``enc(a) - enc(b)``: the encoder runs twice per forward."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, a, b):
        return self.enc(a) - self.enc(b)

    def backward(self, g):
        db = self.enc.backward(-g)  # b ran last: its backward first
        da = self.enc.backward(g)
        return da, db


if torch is not None:

    class TorchSiamese(torch.nn.Module):
        def __init__(self):
            super().__init__()
            tnn = torch.nn
            self.enc = tnn.Sequential(tnn.Linear(4, 6), tnn.BatchNorm1d(6), tnn.Tanh(), tnn.Linear(6, 3))

        def forward(self, a, b):
            return self.enc(a) - self.enc(b)

    class TorchTied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(5, 5)
            self.dec = torch.nn.Linear(5, 5)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(torch.tanh(self.enc(x)))


class Tied(nn.Module):
    """Two linear layers sharing one weight Parameter (each with its own bias)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(5, 5)
        self.dec = nn.Linear(5, 5)
        self.act = nn.Tanh()
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(self.act(self.enc(x)))

    def backward(self, g):
        return self.enc.backward(self.act.backward(self.dec.backward(g)))


def _to(ours, theirs, dtype, device):
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_weights(ours, theirs)
    return ours.to(device, dtype)


@requires_torch
@DTYPES
def test_shared_activation_in_sequential_matches_torch(dtype, device):
    ours, theirs = _shared_relu_pair(dtype, device)
    ours = _to(ours, theirs, dtype, device)
    assert len(list(ours.modules())) == 4  # the shared ReLU once, as in PyTorch
    x = np.random.default_rng(1).standard_normal((6, 4))
    assert_parity(ours, theirs, [x], dtype, device)


@requires_torch
@DTYPES
def test_siamese_encoder_called_twice_matches_torch(dtype, device):
    ours, theirs = Siamese(), TorchSiamese()
    ours = _to(ours, theirs, dtype, device)
    rng = np.random.default_rng(2)
    assert_parity(ours, theirs, [rng.standard_normal((5, 4)), rng.standard_normal((5, 4)) + 1], dtype, device)
    # running statistics updated by both calls, in the same order
    tstate = theirs.state_dict()
    for key, value in ours.state_dict().items():
        np.testing.assert_allclose(value, tstate[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


@requires_torch
@DTYPES
def test_tied_weights_match_torch_and_step_once(dtype, device):
    ours, theirs = Tied(), TorchTied()
    assert list(ours.state_dict()) == list(theirs.state_dict())  # every name, as PyTorch lists them
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert len(list(ours.parameters())) == 3
    ours = _to(ours, theirs, dtype, device)  # a strict load of the tied PyTorch model
    assert ours.dec.weight is ours.enc.weight
    x = np.random.default_rng(3).standard_normal((4, 5))
    assert_parity(ours, theirs, [x], dtype, device)
    # one optimiser step moves the tied weight once, as in PyTorch
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    opt.step()
    topt.step()
    np.testing.assert_allclose(
        gl.to_numpy(ours.enc.weight.data), theirs.enc.weight.detach().numpy(), rtol=1e-6, atol=1e-6
    )


def test_gradcheck_residual_model_with_shared_activation():
    act = nn.Tanh()
    body = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4))
    model = nn.Sequential(nn.Residual(body), act, nn.Linear(4, 3), act).double()
    x = np.random.default_rng(4).standard_normal((3, 4))
    assert gl.gradcheck(model, x)


def test_gradcheck_several_inputs():
    model = Siamese().double()
    rng = np.random.default_rng(5)
    assert gl.gradcheck(model, rng.standard_normal((4, 4)), rng.standard_normal((4, 4)))


def test_gradcheck_rejects_a_wrong_input_gradient_count():
    class Wrong(Siamese):
        def backward(self, g):
            return super().backward(g)[0]

    rng = np.random.default_rng(5)
    with pytest.raises(AssertionError, match="returned 1 input gradient"):
        gl.gradcheck(Wrong().double(), rng.standard_normal((4, 4)), rng.standard_normal((4, 4)))


def test_gradcheck_catches_a_backward_in_the_wrong_order():
    class Swapped(Siamese):
        def backward(self, g):
            da = self.enc.backward(g)  # the forward of b is consumed for a: wrong
            db = self.enc.backward(-g)
            return da, db

    rng = np.random.default_rng(6)
    assert not gl.gradcheck(
        Swapped().double(), rng.standard_normal((4, 4)), rng.standard_normal((4, 4)), raise_exception=False
    )


@pytest.mark.parametrize(
    "make,shape",
    [(lambda: nn.Linear(3, 2), (4, 3)), (lambda: nn.ReLU(), (4, 3)), (lambda: nn.Conv2d(1, 2, 3), (1, 1, 4, 4))],
    ids=["Linear", "ReLU", "Conv2d"],
)
def test_second_backward_after_one_forward_raises(make, shape):
    layer = make()
    y = layer(np.ones(shape, np.float32))
    layer.backward(np.ones_like(y))
    name = type(layer).__name__
    with pytest.raises(RuntimeError, match=rf"{name}\.backward: called before forward \(no forward left"):
        layer.backward(np.ones_like(y))


def test_second_backward_of_a_model_names_the_module():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    y = model(np.ones((2, 3), np.float32))
    model.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match=r"Linear\.backward"):
        model.backward(np.ones_like(y))


def test_parameter_gradients_accumulate_over_uses():
    lin = nn.Linear(3, 2).double()
    x1, x2 = np.random.default_rng(7).standard_normal((2, 5, 3))
    g1, g2 = np.ones((5, 2)), np.full((5, 2), 2.0)
    lin(x1), lin(x2)
    dx2 = lin.backward(g2)
    dx1 = lin.backward(g1)
    np.testing.assert_allclose(lin.weight.grad, g1.T @ x1 + g2.T @ x2)
    np.testing.assert_allclose(dx1, g1 @ lin.weight.data)
    np.testing.assert_allclose(dx2, g2 @ lin.weight.data)


def test_wrong_gradient_leaves_the_forward_saved():
    lin = nn.Linear(3, 2)
    y = lin(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"Linear\.backward: expected grad_output of shape \(4, 2\)"):
        lin.backward(np.ones((4, 3), np.float32))
    assert lin.backward(np.ones_like(y)).shape == (4, 3)


def test_no_grad_keeps_nothing_and_backward_raises():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    assert gl.is_grad_enabled()
    with gl.no_grad():
        assert not gl.is_grad_enabled()
        y = model(np.ones((2, 3), np.float32))
    assert gl.is_grad_enabled()
    assert all(not m._saved for m in model.modules())
    with pytest.raises(RuntimeError, match=r"ReLU\.backward: .*no_grad"):
        model.backward(np.ones_like(y))


def test_no_grad_as_decorator_and_nested_modes():
    @gl.no_grad()
    def infer():
        return gl.is_grad_enabled()

    assert infer() is False and gl.is_grad_enabled()
    with gl.no_grad():
        with gl.enable_grad():
            assert gl.is_grad_enabled()
        assert not gl.is_grad_enabled()
    with gl.set_grad_enabled(False):
        assert not gl.is_grad_enabled()
    assert gl.is_grad_enabled()
    gl.set_grad_enabled(False)
    assert not gl.is_grad_enabled()
    gl.set_grad_enabled(True)
    assert gl.is_grad_enabled()


def test_no_grad_restores_the_mode_after_an_error():
    with pytest.raises(ZeroDivisionError), gl.no_grad():
        1 / 0  # noqa: B018
    assert gl.is_grad_enabled()


def test_eval_mode_keeps_only_the_latest_forward():
    layer = nn.Linear(3, 2).eval()
    x = np.ones((2, 3), np.float32)
    for _ in range(5):
        y = layer(x)
    assert len(layer._saved) == 1
    layer.backward(np.ones_like(y))  # one backward through an eval-mode model works, as in PyTorch
    with pytest.raises(RuntimeError, match="in eval mode a module keeps only its latest forward"):
        layer.backward(np.ones_like(y))


def test_training_forward_after_a_backward_drops_unconsumed_forwards():
    layer = nn.Linear(3, 2)
    x = np.ones((2, 3), np.float32)
    layer(x)
    y = layer(x)
    assert len(layer._saved) == 2
    layer.backward(np.ones_like(y))
    layer(x)  # a new step: the forward left from the last one is dropped
    assert len(layer._saved) == 1


def test_many_training_forwards_without_backward_warn_once():
    layer = nn.Identity()
    x = np.ones(3, np.float32)
    with pytest.warns(ResourceWarning, match="Identity: 256 forwards in training mode wait for a backward"):
        for _ in range(256):
            layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)


def _saved_count(model) -> int:
    return sum(len(m._saved) for m in model.modules())


@pytest.fixture
def one_thread():
    """One CPU thread: a pool worker allocates its scratch arrays (one per op, kept for reuse) the
    first time it happens to take a block of that op, which on several threads can fall after a
    warm-up and read as growth."""
    before = gl.get_num_threads()
    gl.set_num_threads(1)
    yield
    gl.set_num_threads(before)


@pytest.mark.parametrize("how", ["eval", "no_grad", "evaluate"])
def test_evaluation_loop_does_not_grow_memory(how, one_thread):
    gl.manual_seed(0)
    model = gl.models.small_cnn(1, 10, 8, width=4)
    criterion = nn.CrossEntropyLoss()
    x = np.random.default_rng(8).standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = np.arange(16) % 10
    loader = [(x, y)] * 4

    def run():
        if how == "eval":
            model.eval()
            for xb, _ in loader:
                model(xb)
        elif how == "no_grad":
            with gl.no_grad():
                for xb, _ in loader:
                    model(xb)
        else:
            evaluate(model, loader, criterion)

    for _ in range(5):  # warm-up: first-call allocations of NumPy and the interpreter
        run()
    tracemalloc.start()
    try:
        run()
        first, _ = tracemalloc.get_traced_memory()
        for _ in range(10):
            run()
        last, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _saved_count(model) <= (len(list(model.modules())) if how == "eval" else 0)
    assert _saved_count(criterion) == 0
    # One kept forward of the first convolution alone is 4 * x.nbytes (16 KB) per batch, so a forward
    # kept per run would grow the 10 runs by 160 KB or more. NumPy's own small-allocation caches
    # (array dimensions and small data blocks, bounded, traced by tracemalloc) fill slowly over the
    # first hundreds of calls of new shapes: about 2 KB per run here, hence the margin.
    assert last - first < 10 * x.nbytes


def test_to_drops_saved_forwards():
    layer = nn.Linear(2, 2)
    layer(np.ones((1, 2), np.float32))
    layer.double()
    with pytest.raises(RuntimeError, match="Linear.backward"):
        layer.backward(np.ones((1, 2)))


def test_accumulate_grad_is_public_and_checks_shape():
    p = nn.Parameter(np.zeros((2, 3), np.float32))
    g = np.ones((2, 3), np.float64)
    p.accumulate_grad(g)
    assert p.grad.dtype == np.float32 and p.grad is not g
    p.accumulate_grad(g)
    np.testing.assert_array_equal(p.grad, 2 * np.ones((2, 3)))
    p.accumulate_grad(None)
    msg = r"Parameter.accumulate_grad: expected a gradient of shape \(2, 3\), got \(3,\)"
    with pytest.raises(ValueError, match=msg):
        p.accumulate_grad(np.ones(3))


def test_shared_module_listed_once_but_state_dict_lists_every_name():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert [n for n, _ in model.named_modules()] == ["", "0", "1"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_summary_takes_several_inputs():
    text = nn.summary(Siamese(), (4,), (4,), batch_size=2)
    assert "Input shapes: [-1, 4], [-1, 4] float32; output shape: [-1, 3]" in text
    assert text.count("Linear") == 4  # one row per call: the encoder ran twice
