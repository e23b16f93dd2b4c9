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


GRAPH_OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adamw_amsgrad": lambda ps: optim.AdamW(ps, lr=0.01, amsgrad=True),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("name", list(GRAPH_OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_graphed_steps_equal_eager_steps_bitwise(dtype, name):
    import cupy

    gl_cuda.set_conv_algorithm("implicit_gemm")
    try:
        gl.manual_seed(0)
        models = [_net().to("cuda", dtype=dtype) for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        opts = [GRAPH_OPTIMIZERS[name](m.parameters()) for m in models]
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
                opts[0].param_groups[0]["lr"] = opts[1].param_groups[0]["lr"] = 0.004  # a schedule: no recapture
            a, b = graphed(x, dy), eager(x, dy)
            assert cupy.array_equal(a, b), i
        assert graphed.captures == 1 and graphed.replays == 5 and graphed.reason is None
        assert opts[0].state_dict().keys() == opts[1].state_dict().keys()
        for key, value in opts[1].state_dict().items():
            assert np.array_equal(np.asarray(opts[0].state_dict()[key]), np.asarray(value)), key
        for (key, va), vb in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
            assert np.array_equal(gl.to_numpy(va), gl.to_numpy(vb)), key
    finally:
        gl_cuda.set_conv_algorithm("auto")


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_reference_cnn_step_under_a_graph_equals_eager_bitwise(capsys, dropout):
    """The reference CNN's whole step (with Dropout: its offset lives in device memory) stays
    captured, and each replay equals the eager step from the same random state bit for bit."""
    import cupy

    from gpulayers import backend
    from gpulayers.models import small_cnn

    gl.manual_seed(0)
    models = [small_cnn(image_size=8, dropout=dropout).to("cuda") for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    criterion = [nn.CrossEntropyLoss() for _ in models]
    opts = [optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    rng = np.random.default_rng(0)
    batches = [
        (cupy.asarray(rng.standard_normal((16, 1, 8, 8)).astype(np.float32)), cupy.asarray(rng.integers(0, 10, 16)))
        for _ in range(5)
    ]
    lines = []
    graphed = gl_cuda.graphed(
        train_step(models[0], criterion[0], opts[0]), *batches[0], optimizer=opts[0], model=models[0], log=lines.append
    )
    eager = train_step(models[1], criterion[1], opts[1])
    start = backend.get_rng_state()
    got = [tuple(cupy.asnumpy(v).copy() for v in graphed(x, y)) for x, y in batches]
    offsets = backend.get_rng_state()["gpu_offsets"]
    backend.set_rng_state(start)  # the eager twin draws the same offsets
    want = [tuple(cupy.asnumpy(v) for v in eager(x, y)) for x, y in batches]
    with capsys.disabled():
        print(f"\nreference CNN (dropout={dropout}) graphed: captured={graphed.captured} reason={graphed.reason}")
    assert graphed.captured and graphed.captures == 1 and graphed.replays == 4, lines
    assert backend.get_rng_state()["gpu_offsets"] == offsets
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), i
    assert len({g[0].tobytes() for g in got}) == len(got)  # every step moved the loss
    for (key, va), vb in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
        assert np.array_equal(gl.to_numpy(va), gl.to_numpy(vb)), key
