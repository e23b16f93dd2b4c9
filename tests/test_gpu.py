"""The GPU path end to end: every layer on CuPy against the CPU path and PyTorch CUDA.

Marked ``gpu`` and skipped without a usable CUDA device. Covers: forward/backward of every
layer vs the NumPy path (and vs PyTorch on CUDA when available, TF32 off), the conv and
max-pool kernels directly (both conv algorithms, ties and NaN exact), the fused optimiser steps
(one kernel per parameter, vs the CPU path), float64 gradchecks on the GPU, bitwise determinism
of training steps, a 3-epoch run matching the CPU's losses, ``model.to("cuda")``,
``gl.manual_seed`` reproducibility, and the kernel loader itself.

``GPULAYERS_GPU_TEST_DEVICE=cpu`` runs the same file on the CPU: a dry run of the tests' own
logic for machines without a GPU (GPU-vs-CPU comparisons then compare the CPU with itself,
PyTorch runs on the CPU, and the kernel-level tests run the kernels on the g++ harness of
``tests/kernel_harness``); tests that need CuPy itself are skipped there.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import assert_close, requires_gpu, requires_torch, small_cnn, torch

import gpulayers as gl
from gpulayers import kernels, nn, optim
from gpulayers._checks import pooled_size
from gpulayers.ops import conv2d_cuda, max_pool2d_cuda

DEVICE = os.environ.get("GPULAYERS_GPU_TEST_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")

pytestmark = [
    pytest.mark.gpu,
    *([requires_gpu] if ON_GPU else []),
]

# PyTorch on the same device as the layers under test (its CPU build in the dry run).
TORCH_DEVICE = "cuda" if ON_GPU else "cpu"
TORCH_TWIN = torch is not None and (torch.cuda.is_available() if ON_GPU else True)
requires_real_gpu = pytest.mark.skipif(not ON_GPU, reason="needs the real GPU path")


@pytest.fixture(scope="module")
def kernel_backend(tmp_path_factory):
    """The GPU loader, or in the CPU dry run the harness in its place."""
    if ON_GPU:
        yield kernels.get_function
        return
    from kernel_harness import HarnessLibrary

    library = HarnessLibrary(tmp_path_factory.mktemp("gpu_dry_run"))
    saved = kernels.get_function
    kernels.get_function = library.get_function
    yield library.get_function
    kernels.get_function = saved


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


def to_dev(x):
    return gl.to_device(x, DEVICE)


def gpu_tol(dtype=np.float32) -> dict:
    """assert_close options for GPU against CPU/PyTorch: summation order differs, so a looser row than TOL."""
    tol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-11
    return {"rtol": tol * 10, "atol": tol}


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
# The kernels directly: both conv algorithms, max-pool ties / NaN / -inf, exact where exact
# ----------------------------------------------------------------------------------------------
CONV_CASES = [
    ((2, 3, 7, 9), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ((2, 4, 8, 8), (6, 3, 3), (2, 2), (0, 0), (1, 1), 2, True),
    ((1, 4, 9, 7), (8, 3, 2), (2, 1), (1, 2), (2, 1), 4, False),
    ((2, 6, 10, 11), (12, 3, 3), (1, 1), (1, 1), (1, 1), 6, True),
    ((3, 1, 12, 12), (5, 5, 5), (2, 1), (2, 2), (1, 2), 1, True),
    ((2, 2, 11, 11), (2, 2, 2), (3, 3), (0, 0), (1, 1), 1, True),
    ((0, 3, 5, 5), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
]


@pytest.mark.parametrize("algorithm", ["implicit_gemm", "im2col", "direct"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
def test_conv_kernels_on_gpu_match_cpu(case, dtype, algorithm, kernel_backend):
    shape, (oc, kh, kw), stride, padding, dilation, groups, bias = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((oc, shape[1] // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(oc).astype(dtype) if bias else None
    y, cache = conv2d_cuda.conv2d_forward(
        to_dev(x), to_dev(w), None if b is None else to_dev(b), stride, padding, dilation, groups, algorithm=algorithm
    )
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = conv2d_cuda.conv2d_backward(to_dev(dy), cache)
    y_ref, cache_ref = gl.functional.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    dx_ref, dw_ref, db_ref = gl.functional.conv2d_backward(dy, cache_ref)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        assert_close(got, want, dtype, scale=10.0, **gpu_tol(dtype))
    assert (db is None) == (b is None)
    if b is not None:
        assert_close(db, db_ref, dtype, scale=10.0, **gpu_tol(dtype))


@requires_torch
@pytest.mark.parametrize("kind", ["random", "ties", "nan", "neg_inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "case",
    [
        ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),
        ((2, 2, 7, 8), (3, 3), (1, 1), (1, 1), (1, 1), False),
        ((1, 2, 10, 7), (3, 3), (2, 2), (1, 1), (1, 1), True),
        ((2, 2, 11, 10), (3, 2), (1, 2), (1, 1), (2, 3), True),
    ],
    ids=["2x2", "overlap", "ceil", "dilated"],
)
def test_max_pool_kernels_on_gpu_equal_torch_exactly(case, dtype, kind, kernel_backend):
    shape, k, s, p, d, ceil_mode = case
    rng = np.random.default_rng(4)
    if kind == "random":
        x = rng.standard_normal(shape).astype(dtype)
    else:
        x = rng.integers(-1, 2, size=shape).astype(dtype)
        if kind == "nan":
            x[rng.random(shape) < 0.15] = np.nan
        if kind == "neg_inf":
            x[rng.random(shape) < 0.9] = -np.inf
    out = tuple(pooled_size("t", shape[2 + i], k[i], s[i], p[i], d[i], ceil_mode, "h") for i in range(2))
    y, cache = max_pool2d_cuda.max_pool2d_forward(to_dev(x), k, s, p, d, out)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = max_pool2d_cuda.max_pool2d_backward(to_dev(dy), cache)
    xt = torch.tensor(x, requires_grad=True)  # PyTorch on the CPU: the reference order of sums
    yt = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil_mode=ceil_mode)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(gl.to_numpy(y), yt.detach().numpy())
    np.testing.assert_array_equal(gl.to_numpy(dx), xt.grad.numpy())


def test_conv_gemm_chunks_on_gpu(monkeypatch, kernel_backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    monkeypatch.setattr(conv2d_cuda, "COL_BUDGET_BYTES", 2 * 4 * 9 * 81 * 4)  # two samples per chunk
    y, cache = conv2d_cuda.conv2d_forward(to_dev(x), to_dev(w), None, (1, 1), (1, 1), (1, 1), 1)
    assert cache.col is None
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, _ = conv2d_cuda.conv2d_backward(to_dev(dy), cache)
    y_ref, c_ref = gl.functional.conv2d_forward(x, w, None, 1, 1, 1, 1)
    dx_ref, dw_ref, _ = gl.functional.conv2d_backward(dy, c_ref)
    assert_close(y, y_ref, scale=10.0, **gpu_tol())
    assert_close(dx, dx_ref, scale=10.0, **gpu_tol())
    assert_close(dw, dw_ref, scale=30.0, **gpu_tol())


FUSED_OPTIMIZERS = {
    "sgd_nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True),
    "sgd_plain": lambda ps: optim.SGD(ps, lr=0.1),
    "adam_amsgrad": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.02, betas=(0.6, 0.95), weight_decay=0.5),
    "rmsprop_centered": lambda ps: optim.RMSprop(ps, lr=0.01, weight_decay=0.1, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(FUSED_OPTIMIZERS))
def test_fused_optimizer_steps_on_gpu_match_cpu(name, dtype, kernel_backend, monkeypatch):
    """The optimisers step all GPU parameters with one kernel per step (cuda_kernels/optim.cu); parameters
    and state dicts agree with the CPU's NumPy path."""
    from gpulayers.optim import optim_cuda

    if not ON_GPU:  # the dry run routes NumPy parameters to the launchers (on the harness)
        monkeypatch.setattr(optim_cuda, "can_fuse", optim_cuda.fusable)
    launched = []
    launch = kernels.launch
    monkeypatch.setattr(kernels, "launch", lambda f, k, *rest: (launched.append(k), launch(f, k, *rest))[1])
    make = FUSED_OPTIMIZERS[name]
    rng = np.random.default_rng(9)
    shapes = [(8, 3, 3, 3), (8,), (700, 100)]  # the last spans many blocks
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gpu_params = [nn.Parameter(to_dev(a.copy())) for a in init]
    cpu_params = [nn.Parameter(a.copy()) for a in init]
    buffers = [p.data for p in gpu_params]
    opt_gpu, opt_cpu = make(gpu_params), make(cpu_params)
    steps = 4
    for _ in range(steps):
        for p, q, s in zip(gpu_params, cpu_params, shapes, strict=True):
            g = rng.standard_normal(s).astype(dtype)
            p.grad, q.grad = to_dev(g), g
        opt_gpu.step()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(optim_cuda, "can_fuse", lambda *a: False)
            opt_cpu.step()
    kernel = name.split("_")[0].replace("adamw", "adam") + "_multi_update_kernel"
    assert launched == [kernel] * steps  # one multi-tensor launch per step
    for p, q, b in zip(gpu_params, cpu_params, buffers, strict=True):
        assert p.data is b  # updated in place
        assert_close(p.data, q.data, dtype, scale=True, **gpu_tol(dtype))
    sd_gpu, sd_cpu = opt_gpu.state_dict(), opt_cpu.state_dict()
    assert sd_gpu.keys() == sd_cpu.keys()
    for key, value in sd_cpu.items():
        if isinstance(value, np.ndarray) and value.dtype == dtype:
            assert_close(sd_gpu[key], value, dtype, scale=True, **gpu_tol(dtype))
        else:
            np.testing.assert_array_equal(np.asarray(sd_gpu[key]), np.asarray(value), err_msg=key)


@requires_real_gpu
def test_kernels_run_on_a_non_default_stream():
    import cupy

    x = np.random.default_rng(6).standard_normal((4, 8, 16, 16)).astype(np.float32)
    y_ref, _ = gl.functional.max_pool2d_forward(x, 2)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y, _ = gl.functional.max_pool2d_forward(cupy.asarray(x), 2)
    stream.synchronize()
    np.testing.assert_array_equal(y.get(), y_ref)


@requires_real_gpu
def test_kernels_compile_once_per_device_and_report_errors(monkeypatch):
    import cupy

    f1 = kernels.get_function("max_pool2d.cu", "max_pool2d_forward_kernel", np.float32)
    f2 = kernels.get_function("max_pool2d.cu", "max_pool2d_forward_kernel", np.float32)
    assert f1 is f2
    assert (cupy.cuda.Device().id, "max_pool2d.cu") in kernels._modules
    monkeypatch.setitem(
        kernels._sources, "broken.cu", "template <typename T> __global__ void k(T* y) { y[0] = no_such_name; }\n"
    )
    with pytest.raises(RuntimeError, match="no_such_name"):
        kernels.get_function("broken.cu", "k", np.float32)


@requires_real_gpu
def test_kernels_on_a_second_device():
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU only")
    x = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with cupy.cuda.Device(1):
        xg = cupy.asarray(x)
    y, _ = gl.functional.max_pool2d_forward(xg, 2)  # the loader follows the array to device 1
    assert y.device.id == 1
    np.testing.assert_array_equal(y.get(), gl.functional.max_pool2d_forward(x, 2)[0])


@requires_real_gpu
@pytest.mark.slow
def test_max_pool_past_int32_flat_indices():
    """More than 2**31 elements: the 64-bit flat indices of the grid-stride loops."""
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    n_planes, h, w = 2**15 + 3, 256, 256  # 2**31 + 196608 elements
    x = cupy.random.default_rng(0).standard_normal((1, n_planes, h, w), dtype=cupy.float32)
    y, cache = max_pool2d_cuda.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), (h // 2, w // 2))
    tail = x[:, -3:].get()
    np.testing.assert_array_equal(y[:, -3:].get(), gl.functional.max_pool2d_forward(tail, 2)[0])
    dx = max_pool2d_cuda.max_pool2d_backward(cupy.ones_like(y), cache)
    assert float(dx[:, -3:].sum()) == 3 * (h // 2) * (w // 2)
    del x, y, cache, dx
    cupy.get_default_memory_pool().free_all_blocks()


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
