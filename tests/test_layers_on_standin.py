"""The newer layers, losses, optimisers and clip_grad_norm_ on their CuPy code path, run on the CPU
through the CuPy stand-in (``tests/cupy_standin.py``): the same results as the NumPy path, and no
host synchronisation where none is needed."""

from __future__ import annotations

import numpy as np
import pytest
from cupy_standin import COUNTER
from kernel_harness import HarnessLibrary

import gpulayers as gl
from gpulayers import nn, optim


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> HarnessLibrary:
    """The custom kernels (fused losses, ...) run on the host harness, so their results are real."""
    return HarnessLibrary(tmp_path_factory.mktemp("standin_layers_harness"))


LAYERS = {
    "gelu": (lambda: nn.GELU(), (3, 7)),
    "gelu_tanh": (lambda: nn.GELU("tanh"), (3, 7)),
    "silu": (lambda: nn.SiLU(), (3, 7)),
    "softmax": (lambda: nn.Softmax(dim=1), (3, 7)),
    "log_softmax": (lambda: nn.LogSoftmax(dim=-1), (2, 3, 5)),
    "group_norm": (lambda: nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    "layer_norm": (lambda: nn.LayerNorm((3, 3)), (2, 4, 3, 3)),
    "dropout2d_eval": (lambda: nn.Dropout2d(0.5).eval(), (2, 4, 3, 3)),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_gpu_path_matches_numpy_without_syncs(cp, name, dtype):
    make, shape = LAYERS[name]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    cpu = make().to(dtype=dtype)
    y_cpu, dx_cpu = cpu(x), cpu.backward(g)
    gpu = make().to("cuda", dtype)
    xg, gg = gl.to_device(x, "cuda"), gl.to_device(g, "cuda")
    gpu(xg)  # the first call may copy constant tables to the device
    COUNTER.reset()
    y = gpu(xg)
    dx = gpu.backward(gg)
    assert COUNTER.syncs() == 0 and COUNTER.count("d2h") == 0
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(gl.to_numpy(y), y_cpu, **tol)
    np.testing.assert_allclose(gl.to_numpy(dx), dx_cpu, **tol)


def test_dropout2d_gpu_path_drops_whole_channels(cp):
    x = gl.to_device(np.ones((4, 6, 3, 3), np.float32), "cuda")
    y = gl.to_numpy(nn.Dropout2d(0.5)(x))
    planes = y.reshape(4, 6, 9)
    assert np.all(planes == planes[..., :1])
    assert set(np.unique(planes)) <= {0.0, 2.0}


LOSSES = {
    "ce_weight_ignore_smooth": (
        lambda w: nn.CrossEntropyLoss(w, ignore_index=1, label_smoothing=0.1),
        lambda rng: rng.integers(0, 4, 5),
    ),
    "ce_probabilities": (lambda w: nn.CrossEntropyLoss(w), lambda rng: rng.dirichlet(np.ones(4), 5)),
    "nll_none": (lambda w: nn.NLLLoss(w, reduction="none"), lambda rng: rng.integers(0, 4, 5)),
    "bce_pos_weight": (lambda w: nn.BCEWithLogitsLoss(pos_weight=w), lambda rng: rng.random((5, 4))),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_gpu_path_matches_numpy(cp, name):
    make, make_target = LOSSES[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4))
    t = make_target(rng)
    w = rng.uniform(0.5, 2, 4)
    cpu = make(w)
    loss_cpu = cpu(x, t)
    upstream = np.ones(5) if name == "nll_none" else None
    grad_cpu = cpu.backward(upstream)
    gpu = make(gl.to_device(w, "cuda"))
    loss = gpu(gl.to_device(x, "cuda"), gl.to_device(t, "cuda"))
    grad = gpu.backward(None if upstream is None else gl.to_device(upstream, "cuda"))
    np.testing.assert_allclose(np.asarray(gl.to_numpy(loss)), np.asarray(loss_cpu), rtol=1e-13)
    np.testing.assert_allclose(gl.to_numpy(grad), grad_cpu, rtol=1e-13, atol=1e-15)


def test_rmsprop_and_clip_grad_norm_gpu_path_match_numpy_without_syncs(cp):
    rng = np.random.default_rng(2)
    init = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(a.shape) for a in init] for _ in range(3)]
    results = []
    for device in ("cpu", "cuda"):
        params = [nn.Parameter(gl.to_device(a.copy(), device)) for a in init]
        opt = optim.RMSprop(params, lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)
        COUNTER.reset()
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = gl.to_device(g.copy(), device)  # clipping scales it in place
            norm = nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        if device == "cuda":
            assert COUNTER.syncs() == 0  # the norm stays on the device
        results.append(([gl.to_numpy(p.data) for p in params], float(norm)))
    (cpu_params, cpu_norm), (gpu_params, gpu_norm) = results
    assert gpu_norm == pytest.approx(cpu_norm, rel=1e-13)
    for a, b in zip(gpu_params, cpu_params, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
