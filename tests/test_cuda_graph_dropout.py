"""Dropout under gl.cuda.graphed, on the CuPy stand-in (kernels on the host harness; a replay
recomputes the captured work): the dropout kernel reads the generator's seed and offset from
device memory, so the reference CNN's step stays captured and each replay draws fresh masks,
bit for bit the masks and results of eager steps from the same random state.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cupy_standin import COUNTER
from helpers import small_cnn

import gpulayers as gl
from gpulayers import backend, nn, optim
from gpulayers import cuda as gl_cuda
from gpulayers.ops import dropout as dropout_ops
from gpulayers.ops import dropout_cuda
from gpulayers.training import train_step

STEPS = 5


@pytest.fixture
def cp(graph_cp):
    return graph_cp  # kernel_harness.fixtures: the stand-in, convolutions by implicit GEMM


@pytest.fixture
def masks(monkeypatch):
    """Per fused dropout launch that Python makes, a function returning its mask (drawn again from
    the launch's generator state: a capture's is rewritten by each replay)."""
    made = []
    launch = dropout_cuda.dropout_forward

    def spy(x, p):
        y, draw = launch(x, p)
        made.append(lambda: dropout_cuda.dropout_mask(y, tuple(y.shape), p, draw))
        return y, draw

    monkeypatch.setattr(dropout_cuda, "dropout_forward", spy)
    return made


def _setup(cp, graph: bool, log=None):
    gl.manual_seed(0)
    model = small_cnn(image_size=8, dropout=0.5).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = train_step(model, nn.CrossEntropyLoss(), opt)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((6, 1, 8, 8)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 10, 6))
    if graph:
        step = gl_cuda.graphed(step, x, y, optimizer=opt, model=model, log=log)
    return model, step, x, y


def _run(step, x, y, masks):
    out = []
    for _ in range(STEPS):
        loss, hits = step(x, y)
        out.append((loss.get().copy(), hits.get().copy(), masks[-1]().get()))
    return out


def test_reference_cnn_with_dropout_stays_captured_with_fresh_masks(cp, masks):
    lines = []
    model_g, step_g, x, y = _setup(cp, True, lines.append)
    graphed = _run(step_g, x, y, masks)
    offsets_g = backend.get_rng_state()["gpu_offsets"]
    assert step_g.captured and step_g.captures == 1 and step_g.replays == STEPS - 1
    assert step_g.reason is None and lines == []

    model_e, step_e, x, y = _setup(cp, False)  # the same seed: the same offsets, step by step
    eager = _run(step_e, x, y, masks)
    assert backend.get_rng_state()["gpu_offsets"] == offsets_g == {"0": STEPS}
    for i, (g, e) in enumerate(zip(graphed, eager, strict=True)):
        for a, b in zip(g, e, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"step {i}")
    for i in range(1, STEPS):
        assert not np.array_equal(graphed[i][2], graphed[i - 1][2]), f"step {i} reused the mask"
    for key, value in model_e.state_dict().items():
        np.testing.assert_array_equal(gl.to_numpy(model_g.state_dict()[key]), gl.to_numpy(value), err_msg=key)


def test_a_replay_writes_the_offset_without_syncing(cp, masks):
    _, step, x, y = _setup(cp, True)
    step(x, y)  # warm-up
    COUNTER.reset()
    step(x, y)  # capture, then replay
    assert COUNTER.count(("sync", "d2h", "cublas"), phase="capture") == 0
    assert COUNTER.count("kernel", phase="capture") > 0
    COUNTER.reset()
    step(x, y)
    assert COUNTER.count("graph") == 1 and COUNTER.count("kernel") == 0
    assert COUNTER.count(("sync", "d2h")) == 0
    assert COUNTER.names("h2d") == {"ndarray.set": 2}  # the generator's [seed, offset]; the optimiser's table
    assert backend.get_rng_state()["gpu_offsets"] == {"0": 3}


def test_rng_state_round_trip_replays_the_masks_under_a_graph(cp, masks):
    _, step, x, y = _setup(cp, True)
    step(x, y)
    step(x, y)
    state = json.loads(json.dumps(backend.get_rng_state()))  # as a checkpoint stores it
    first = [m for *_, m in _run(step, x, y, masks)]
    backend.set_rng_state(state)
    again = [m for *_, m in _run(step, x, y, masks)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert step.captures == 1


def test_eager_dropout_writes_the_device_state_once(cp, masks):
    gl.manual_seed(3)
    x = cp.asarray(np.ones((8, 40), np.float32))
    COUNTER.reset()
    dropout_ops.dropout_forward(x, 0.5, True)
    assert COUNTER.count("h2d") == 1  # the device's [seed, base], made on first use
    COUNTER.reset()
    for _ in range(3):
        dropout_ops.dropout_forward(x, 0.5, True)
    assert COUNTER.count("h2d") == 0 and COUNTER.syncs() == 0 and COUNTER.count("kernel") == 3
    assert not np.array_equal(masks[-1]().get(), masks[-2]().get())


def test_a_failed_capture_gives_back_the_offsets(cp, masks):
    gl.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 3)).to("cuda")
    x = cp.asarray(np.ones((2, 1, 8, 8), np.float32))

    def step(x):
        return float(model(x).sum())  # a host synchronisation: refused under capture

    graphed = gl_cuda.graphed(step, x, model=model, log=None)
    graphed(x)
    graphed(x)  # the capture fails part way, then the step runs eagerly
    assert graphed.reason.startswith("capture failed (")
    assert backend.get_rng_state()["gpu_offsets"] == {"0": 2}
