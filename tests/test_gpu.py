"""The GPU path end to end: every layer on CuPy against the CPU path and PyTorch CUDA.

Marked ``gpu`` and skipped without a usable CUDA device. Covers: forward/backward of every
layer vs the NumPy path (and vs PyTorch on CUDA when available, TF32 off), the losses and
dropout, float64 gradchecks on the GPU, bitwise determinism of training steps, a 3-epoch run
matching the CPU's losses, ``model.to("cuda")`` and ``gl.manual_seed`` reproducibility. The
kernels themselves are checked in test_gpu_kernels.py.

``GPULAYERS_GPU_TEST_DEVICE=cpu`` runs the same file on the CPU (a dry run of the tests' own
logic, see gpu_test_device.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_test_device import DEVICE, GPU_TEST_MARKS, ON_GPU, gpu_tol, to_dev
from helpers import assert_close, small_cnn, torch

import gpulayers as gl
from gpulayers import nn, optim

pytestmark = GPU_TEST_MARKS

# PyTorch on the same device as the layers under test (its CPU build in the dry run).
TORCH_DEVICE = "cuda" if ON_GPU else "cpu"
TORCH_TWIN = torch is not None and (torch.cuda.is_available() if ON_GPU else True)


@pytest.fixture(autouse=True, scope="module")
def _exact_torch_cuda():
    """PyTorch's CUDA convs and matmuls default to TF32; compare against full float32."""
    if not (TORCH_TWIN and ON_GPU):
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ----------------------------------------------------------------------------------------------
# Every layer: GPU vs CPU vs PyTorch CUDA
# ----------------------------------------------------------------------------------------------
# name: (gpulayers factory, torch factory or None, input shape)
LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 8, 3, padding=1), lambda: torch.nn.Conv2d(3, 8, 3, padding=1), (4, 3, 12, 12)),
    "conv_strided": (
        lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2),
        lambda: torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2),
        (3, 4, 11, 9),
    ),
    "conv_depthwise": (
        lambda: nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False),
        lambda: torch.nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False),
        (2, 8, 10, 10),
    ),
    "conv_same": (
        lambda: nn.Conv2d(2, 3, 4, padding="same"),
        lambda: torch.nn.Conv2d(2, 3, 4, padding="same"),
        (2, 2, 9, 9),
    ),
    "conv_1x1": (lambda: nn.Conv2d(16, 4, 1), lambda: torch.nn.Conv2d(16, 4, 1), (2, 16, 5, 5)),
    "maxpool": (lambda: nn.MaxPool2d(2), lambda: torch.nn.MaxPool2d(2), (2, 3, 8, 8)),
    "maxpool_ceil": (
        lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        lambda: torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        (2, 3, 10, 9),
    ),
    "maxpool_dilated": (
        lambda: nn.MaxPool2d((3, 2), stride=1, padding=1, dilation=(2, 3)),
        lambda: torch.nn.MaxPool2d((3, 2), stride=1, padding=1, dilation=(2, 3)),
        (2, 2, 9, 11),
    ),
    "avgpool": (
        lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        lambda: torch.nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        (2, 3, 9, 8),
    ),
    "adaptive_avgpool": (lambda: nn.AdaptiveAvgPool2d(1), lambda: torch.nn.AdaptiveAvgPool2d(1), (2, 5, 6, 7)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(4), lambda: torch.nn.BatchNorm2d(4), (3, 4, 5, 6)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(7), lambda: torch.nn.BatchNorm1d(7), (6, 7)),
    "linear": (lambda: nn.Linear(10, 5), lambda: torch.nn.Linear(10, 5), (8, 10)),
    "relu": (lambda: nn.ReLU(), lambda: torch.nn.ReLU(), (4, 9)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2), (4, 9)),
    "sigmoid": (lambda: nn.Sigmoid(), lambda: torch.nn.Sigmoid(), (4, 9)),
    "tanh": (lambda: nn.Tanh(), lambda: torch.nn.Tanh(), (4, 9)),
    "flatten": (lambda: nn.Flatten(), lambda: torch.nn.Flatten(), (2, 3, 4, 5)),
    "dropout_eval": (lambda: nn.Dropout(0.5).eval(), lambda: torch.nn.Dropout(0.5).eval(), (4, 9)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_gpu_matches_cpu_and_torch(name, dtype):
    make, make_torch, shape = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    cpu = make().to(dtype=dtype)
    initial = {k: np.array(v, copy=True) for k, v in cpu.state_dict().items()}
    gpu = make().to(dtype=dtype)
    gpu.load_state_dict(initial)
    gpu.to(DEVICE)

    y_cpu = cpu(x)
    y_gpu = gpu(to_dev(x))
    assert gl.get_array_module(y_gpu) is gl.get_array_module(to_dev(x))
    assert y_gpu.dtype == dtype
    dy = rng.standard_normal(y_cpu.shape).astype(dtype)
    dx_cpu = cpu.backward(dy)
    dx_gpu = gpu.backward(to_dev(dy))
    assert_close(y_gpu, y_cpu, dtype, scale=True, **gpu_tol(dtype))
    assert_close(dx_gpu, dx_cpu, dtype, scale=True, **gpu_tol(dtype))
    for (pname, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        assert_close(p_gpu.grad, p_cpu.grad, dtype, scale=True, **gpu_tol(dtype))
        assert gl.get_array_module(p_gpu.grad) is gl.get_array_module(y_gpu), pname
    for key, value in cpu.state_dict().items():  # running statistics updated alike
        assert_close(gpu.state_dict()[key], value, dtype, scale=True, **gpu_tol(dtype))

    if TORCH_TWIN and make_torch is not None:
        twin = make_torch()
        twin.load_state_dict({k: torch.tensor(v) for k, v in initial.items()})
        twin = twin.to(device=TORCH_DEVICE, dtype=torch.float64 if dtype == np.float64 else torch.float32)
        twin.train(cpu.training)
        xt = torch.tensor(x, device=TORCH_DEVICE, requires_grad=True)
        yt = twin(xt)
        yt.backward(torch.tensor(dy, device=TORCH_DEVICE))
        assert_close(y_gpu, yt.detach().cpu().numpy(), dtype, scale=True, **gpu_tol(dtype))
        assert_close(dx_gpu, xt.grad.cpu().numpy(), dtype, scale=True, **gpu_tol(dtype))
        for (pname, p_gpu), (tname, pt) in zip(gpu.named_parameters(), twin.named_parameters(), strict=True):
            assert pname == tname
            assert_close(p_gpu.grad, pt.grad, dtype, scale=True, **gpu_tol(dtype))
        for key, value in twin.state_dict().items():  # running statistics, as PyTorch updates them
            assert_close(gpu.state_dict()[key], value.cpu().numpy(), dtype, scale=True, **gpu_tol(dtype))


@pytest.fixture(autouse=True)
def _reseed_layers():
    gl.manual_seed(0)


def test_losses_gpu_match_cpu():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((16, 10)).astype(np.float32) * 5
    labels = rng.integers(0, 10, 16)
    for criterion, target in ((nn.CrossEntropyLoss(label_smoothing=0.1), labels), (nn.MSELoss(), logits[::-1] * 0.5)):
        cpu_loss = criterion(logits, target)
        cpu_grad = criterion.backward()
        gpu_loss = criterion(to_dev(logits), to_dev(np.ascontiguousarray(target)))
        gpu_grad = criterion.backward()
        assert gl.backend.is_cuda_array(gpu_loss) and gpu_loss.shape == ()  # stays on the device
        assert float(gpu_loss) == pytest.approx(float(cpu_loss), rel=1e-5)
        assert_close(gpu_grad, cpu_grad, scale=True, **gpu_tol())


def test_dropout_on_gpu_is_inverted_dropout():
    layer = nn.Dropout(0.25).to(DEVICE)
    x = to_dev(np.random.default_rng(2).uniform(1, 2, (64, 128)).astype(np.float32))
    y = gl.to_numpy(layer(x))
    dx = gl.to_numpy(layer.backward(to_dev(np.ones((64, 128), np.float32))))
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], gl.to_numpy(x)[kept] / 0.75, rtol=1e-6)
    np.testing.assert_allclose(dx, kept / 0.75, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Gradchecks in float64 on the GPU
# ----------------------------------------------------------------------------------------------
GRADCHECK_LAYERS = {
    "conv_gemm": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1), (2, 2, 5, 5)),
    "conv_groups": (lambda: nn.Conv2d(4, 4, (2, 3), padding=(1, 0), dilation=(1, 2), groups=2), (1, 4, 4, 6)),
    "conv_depthwise": (lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3), (2, 3, 4, 4)),
    "maxpool": (lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 2, 6, 5)),
    "batchnorm2d": (lambda: nn.BatchNorm2d(3), (4, 3, 3, 3)),
    "linear": (lambda: nn.Linear(6, 4), (3, 6)),
    "small_net": (
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)),
        (2, 1, 4, 4),
    ),
}


@pytest.mark.parametrize("name", list(GRADCHECK_LAYERS))
def test_gradcheck_on_gpu(name):
    make, shape = GRADCHECK_LAYERS[name]
    layer = make().double().to(DEVICE)
    x = to_dev(np.random.default_rng(8).permutation(np.prod(shape)).reshape(shape) / np.prod(shape) - 0.5)
    assert gl.gradcheck(layer, x)


# ----------------------------------------------------------------------------------------------
# Training: determinism, CPU parity, devices, seeding
# ----------------------------------------------------------------------------------------------
def _small_cnn(dropout: float = 0.0) -> nn.Sequential:
    """The reference CNN for 16x16 images of four classes."""
    return small_cnn(image_size=16, num_classes=4, width=8, hidden=32, dropout=dropout, conv_bias=True)


def _synthetic_data(n: int = 256, seed: int = 9):
    """Four classes of 16x16 images: a bright quadrant plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 0.5, (n, 1, 16, 16)).astype(np.float32)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] += 1.0
    return x, y


def _train_step(model, opt, criterion, x, y) -> float:
    opt.zero_grad()
    loss = criterion(model(x), y)
    model.backward(criterion.backward())
    opt.step()
    return loss


def test_training_steps_are_bitwise_deterministic():
    x, y = _synthetic_data(64)
    states = []
    for _ in range(2):
        gl.manual_seed(11)
        model = _small_cnn(dropout=0.5).to(DEVICE)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        criterion = nn.CrossEntropyLoss()
        losses = [_train_step(model, opt, criterion, to_dev(x), to_dev(y)) for _ in range(2)]
        states.append((losses, model.state_dict()))
    (losses_a, state_a), (losses_b, state_b) = states
    assert losses_a == losses_b
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)


def test_three_epochs_match_the_cpu_run():
    x, y = _synthetic_data(256)
    history = {}
    for device in ("cpu", DEVICE):
        gl.manual_seed(12)
        model = _small_cnn().to(device)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        criterion = nn.CrossEntropyLoss()
        order = np.random.default_rng(13)
        epoch_losses = []
        for _ in range(3):
            perm = order.permutation(len(x))
            losses = []
            for start in range(0, len(x), 64):
                idx = perm[start : start + 64]
                xb, yb = gl.to_device(x[idx], device), gl.to_device(y[idx], device)
                losses.append(_train_step(model, opt, criterion, xb, yb))
            epoch_losses.append(float(np.mean([float(v) for v in losses])))
        history[device] = epoch_losses
    cpu, gpu = history["cpu"], history[DEVICE]
    assert gpu[-1] < 0.7 * gpu[0], gpu  # it learns
    np.testing.assert_allclose(gpu, cpu, rtol=2e-3, atol=1e-4)


def test_model_to_cuda_moves_everything():
    gl.manual_seed(14)
    model = _small_cnn(dropout=0.5)
    before = model.state_dict()
    model.to(DEVICE)
    for name, p in model.named_parameters():
        assert p.device == gl.backend.device_of(to_dev(np.zeros(1))), name
    for mod in model.modules():
        for bname, buf in mod._buffers.items():
            if buf is not None:
                assert gl.backend.device_of(buf) == gl.backend.device_of(to_dev(np.zeros(1))), bname
    x, y = _synthetic_data(8)
    logits = model(to_dev(x))
    assert gl.backend.device_of(logits) == gl.backend.device_of(to_dev(np.zeros(1)))
    model.to("cpu")
    after = model.state_dict()
    assert all(isinstance(v, np.ndarray) for v in after.values())
    for key in before:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # the training-mode forward above updated them
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


def test_manual_seed_reproduces_init_and_dropout_on_gpu():
    def sample(seed):
        gl.manual_seed(seed)
        model = _small_cnn(dropout=0.5).to(DEVICE)
        mask = gl.to_numpy(nn.Dropout(0.5).to(DEVICE)(to_dev(np.ones((32, 32), np.float32))))
        return model.state_dict(), mask

    (state_a, mask_a), (state_b, mask_b), (state_c, mask_c) = sample(21), sample(21), sample(22)
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(mask_a, mask_c)
    assert not np.array_equal(state_a["0.weight"], state_c["0.weight"])


def test_zero_size_batch_on_gpu():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2)).to(DEVICE)
    y = model(to_dev(np.zeros((0, 3, 8, 8), np.float32)))
    assert y.shape == (0, 4, 4, 4)
    dx = model.backward(to_dev(np.zeros((0, 4, 4, 4), np.float32)))
    assert dx.shape == (0, 3, 8, 8)
