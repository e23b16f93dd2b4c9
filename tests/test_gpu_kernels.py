"""The CUDA kernels directly on the GPU, and the kernel loader: against the CPU path and PyTorch.

Marked ``gpu`` and skipped without a usable CUDA device. Covers: both conv algorithms (and the
chunked im2col GEMM), the max-pool kernels exact against PyTorch (ties, NaN, -inf), the fused
optimiser steps (one kernel per step, vs the CPU path), kernels on a non-default stream and a
second device, compile-once per device with compile errors reported, and 64-bit indices past
2**31 elements.

``GPULAYERS_GPU_TEST_DEVICE=cpu`` runs the same file on the CPU, the kernels on the g++ harness
(a dry run of the tests' own logic, see gpu_test_device.py); tests that need CuPy itself are
skipped there.
"""

from __future__ import annotations

import numpy as np
import pytest
from gpu_test_device import GPU_TEST_MARKS, ON_GPU, gpu_tol, requires_real_gpu, to_dev
from helpers import assert_close, requires_torch, torch

import gpulayers as gl
from gpulayers import kernels, nn, optim
from gpulayers._checks import pooled_size
from gpulayers.ops import conv2d_cuda, max_pool2d_cuda

pytestmark = GPU_TEST_MARKS


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
