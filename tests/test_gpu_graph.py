"""On a GPU: a graphed training step equals the eager one bit for bit, and the reference CNN's
step is captured (or the reason it cannot be is printed for the device check's log)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import plain_step

import gpulayers as gl
from gpulayers import cuda as gl_cuda
from gpulayers import nn, optim
from gpulayers.training import train_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gl.cuda_is_available(), reason="no usable CUDA device (CuPy + GPU)"),
]


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 5, 3, padding=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_graphed_steps_equal_eager_steps_bitwise(dtype):
    import cupy

    gl_cuda.set_conv_algorithm("implicit_gemm")
    try:
        gl.manual_seed(0)
        models = [_net().to("cuda", dtype=dtype) for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        opts = [optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4) for m in models]
        rng = np.random.default_rng(0)
        batches = [
            (
                cupy.asarray(rng.standard_normal((4, 3, 12, 12)).astype(dtype)),
                cupy.asarray(rng.standard_normal((4, 5, 6, 6)).astype(dtype)),
            )
            for _ in range(6)
        ]

        graphed = gl_cuda.graphed(
            plain_step(models[0], opts[0]), *batches[0], optimizer=opts[0], model=models[0], log=None
        )
        eager = plain_step(models[1], opts[1])
        for i, (x, dy) in enumerate(batches):
            if i == 4:
                opts[0].param_groups[0]["lr"] = opts[1].param_groups[0]["lr"] = 0.01  # a schedule: recapture
            a, b = graphed(x, dy), eager(x, dy)
            assert cupy.array_equal(a, b), i
        assert graphed.captures == 2 and graphed.replays == 5 and graphed.reason is None
        for (key, va), vb in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
            assert np.array_equal(gl.to_numpy(va), gl.to_numpy(vb)), key
    finally:
        gl_cuda.set_conv_algorithm("auto")


def test_reference_cnn_step_under_a_graph(capsys):
    """Prints whether the reference CNN's whole step captures; equal to eager where it does."""
    import cupy

    from gpulayers.models import small_cnn

    gl.manual_seed(0)
    models = [small_cnn(image_size=8, dropout=0.0).to("cuda") for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    criterion = [nn.CrossEntropyLoss() for _ in models]
    opts = [optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    y = cupy.asarray(rng.integers(0, 10, 16))
    lines = []
    graphed = gl_cuda.graphed(
        train_step(models[0], criterion[0], opts[0]), x, y, optimizer=opts[0], model=models[0], log=lines.append
    )
    eager = train_step(models[1], criterion[1], opts[1])
    for _ in range(4):
        loss_a, _ = graphed(x, y)
        loss_b, _ = eager(x, y)
        assert float(loss_a) == float(loss_b)
    with capsys.disabled():
        print(f"\nreference CNN under a CUDA graph: captured={graphed.captured} reason={graphed.reason}")
