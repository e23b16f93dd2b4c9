"""gl.cuda.graphed and fit(cuda_graph=True): the eager fallback on the CPU, and the captured
region on the CuPy stand-in (no host synchronisation, no cuBLAS; one launch per replay).

Bitwise equality of graphed and eager steps needs a GPU: ``test_gpu_graph.py`` checks it there.
"""

from __future__ import annotations

import numpy as np
import pytest
from cupy_standin import COUNTER
from helpers import plain_step

import gpulayers as gl
from gpulayers import cuda as gl_cuda
from gpulayers import nn, optim
from gpulayers.training import fit, train_step


def _conv_net() -> nn.Module:
    """Conv, ReLU, pooling (implicit-GEMM convolutions): its step needs no cuBLAS or cuRAND."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 3, padding=1),
    )


# -- CPU: the eager fallback -------------------------------------------------------------------------
def test_graphed_on_the_cpu_runs_eagerly_and_says_why():
    gl.manual_seed(0)
    model, twin = _conv_net(), _conv_net()
    twin.load_state_dict(model.state_dict())
    opt, opt_twin = (optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, twin))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    lines = []
    step = gl_cuda.graphed(plain_step(model, opt), x, dy, optimizer=opt, log=lines.append)
    eager = plain_step(twin, opt_twin)
    for _ in range(3):
        np.testing.assert_array_equal(step(x, dy), eager(x, dy))
    assert not step.captured and step.captures == 0
    assert step.reason == "the inputs are not CuPy arrays: CUDA graphs need the GPU"
    assert lines == ["cuda graph: the inputs are not CuPy arrays: CUDA graphs need the GPU; the step runs eagerly"]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, twin.state_dict()[key])


@pytest.mark.parametrize(("kwargs", "match"), [({"warmup": -1}, "warmup"), ({"warmup": True}, "warmup")])
def test_graphed_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gl_cuda.graphed(lambda x: x, np.zeros(2), **kwargs)
    with pytest.raises(TypeError, match="step must be callable"):
        gl_cuda.graphed(3, np.zeros(2))


def test_fit_with_cuda_graph_on_the_cpu_trains_as_without(tmp_path):
    def run(cuda_graph: bool):
        gl.manual_seed(0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((24, 1, 6, 6)).astype(np.float32)
        y = rng.integers(0, 3, 24)
        loader = gl.data.DataLoader(gl.data.ArrayDataset(x, y), batch_size=8, shuffle=True, seed=0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
        lines = []
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        history = fit(
            model, loader, None, nn.CrossEntropyLoss(), opt, 2, progress=False, log=lines.append, cuda_graph=cuda_graph
        )
        return history, model.state_dict(), lines

    h_graph, s_graph, lines = run(True)
    h_eager, s_eager, _ = run(False)
    assert h_graph == h_eager
    for key, value in s_eager.items():
        np.testing.assert_array_equal(s_graph[key], value)
    assert sum("cuda graph: the inputs are not CuPy arrays" in line for line in lines) == 1


def test_train_step_returns_loss_and_hits_without_syncing():
    gl.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    opt = optim.SGD(model.parameters(), lr=0.0)
    x = np.eye(4, dtype=np.float32)[:3].reshape(3, 1, 2, 2)
    y = np.array([0, 1, 2])
    loss, hits = train_step(model, nn.CrossEntropyLoss(), opt)(x, y)
    logits = model(x)
    assert int(hits) == int((logits.argmax(axis=1) == y).sum())
    assert np.isfinite(float(loss))


# -- the stand-in: what the capture records ----------------------------------------------------------
@pytest.fixture
def cp(graph_cp):
    return graph_cp  # kernel_harness.fixtures: the stand-in, convolutions by implicit GEMM


def _device_batch(cp):
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    dy = cp.asarray(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    return x, dy


def test_captured_step_has_no_sync_no_cublas_and_replays_as_one_launch(cp):
    gl.manual_seed(0)
    model = _conv_net().to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, dy = _device_batch(cp)
    lines = []
    step = gl_cuda.graphed(plain_step(model, opt), x, dy, optimizer=opt, model=model, log=lines.append)
    step(x, dy)  # warm-up, eager: creates the momentum buffers
    assert not step.captured
    COUNTER.reset()
    step(x, dy)  # capture, then the first replay
    assert step.captured and step.captures == 1 and step.reason is None, lines
    assert COUNTER.count("sync", phase="capture") == 0
    assert COUNTER.count("cublas", phase="capture") == 0
    assert COUNTER.count("kernel", phase="capture") > 0  # the step's kernels were recorded
    COUNTER.reset()
    step(x, dy)
    assert COUNTER.count("graph") == 1
    assert COUNTER.count(("kernel", "cublas", "sync", "d2h")) == 0
    assert COUNTER.count("h2d") == 1  # the optimiser's learning rate, asynchronously
    assert COUNTER.launches() == 1 + 2  # the graph, and the copies into its two input buffers
    assert lines == []


def test_a_new_learning_rate_replays_without_recapture(cp):
    gl.manual_seed(0)
    model = _conv_net().to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, dy = _device_batch(cp)
    step = gl_cuda.graphed(plain_step(model, opt), x, dy, optimizer=opt, model=model, log=None)
    for _ in range(4):
        step(x, dy)
    assert step.captures == 1 and step.replays == 3
    opt.param_groups[0]["lr"] = 0.05
    step(x, dy)
    step(x, dy)
    assert step.captures == 1 and step.replays == 5


GRAPHED_OPTIMIZERS = {
    "adam": (lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.1, amsgrad=True), None),
    "adamw_steplr": (lambda ps: optim.AdamW(ps, lr=1e-2), lambda o: optim.lr_scheduler.StepLR(o, 2, gamma=0.5)),
    "sgd_steplr": (
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda o: optim.lr_scheduler.StepLR(o, 2, gamma=0.5),
    ),
    "rmsprop_cosine": (
        lambda ps: optim.RMSprop(ps, lr=1e-2, momentum=0.5, centered=True),
        lambda o: optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
    ),
}


@pytest.mark.parametrize("name", list(GRAPHED_OPTIMIZERS))
def test_graphed_optimizer_step_follows_lr_and_step_count_without_recapture(cp, name):
    """Learning rates and step counts live in device memory: a scheduler's new lr and Adam's next
    step replay the one captured graph, and every step equals the eager step bit for bit (the
    stand-in's replay reruns the captured optimiser kernel on the harness)."""
    make, make_scheduler = GRAPHED_OPTIMIZERS[name]
    rng = np.random.default_rng(4)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    graphed_params = [nn.Parameter(cp.asarray(a)) for a in init]
    eager_params = [nn.Parameter(cp.asarray(a)) for a in init]
    for p in graphed_params + eager_params:  # gradients written in place: fixed addresses for the graph
        p.grad = cp.zeros(p.shape, np.float32)
    opt, opt_eager = make(graphed_params), make(eager_params)
    schedulers = [make_scheduler(o) for o in (opt, opt_eager)] if make_scheduler else []
    lines = []
    step = gl_cuda.graphed(lambda x: (opt.step(), x)[1], cp.zeros(1), optimizer=opt, log=lines.append)
    for t in range(7):
        for p, q in zip(graphed_params, eager_params, strict=True):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad.set(g)
            q.grad.set(g)
        COUNTER.reset()
        step(cp.zeros(1))
        if t >= 2:  # replayed: one graph launch and one upload of the learning rate and step counts
            assert COUNTER.count("graph") == 1 and COUNTER.count("kernel") == 0
            assert COUNTER.count("h2d") == 1 and COUNTER.syncs() == 0
        opt_eager.step()
        for s in schedulers:
            s.step()
        for p, q in zip(graphed_params, eager_params, strict=True):
            np.testing.assert_array_equal(p.data.get(), q.data.get(), err_msg=f"step {t + 1}")
        assert opt.state_dict().keys() == opt_eager.state_dict().keys()
        for key, value in opt_eager.state_dict().items():
            np.testing.assert_array_equal(np.asarray(opt.state_dict()[key]), np.asarray(value), err_msg=key)
    assert step.captures == 1 and step.replays == 6 and step.reason is None, lines
    assert lines == []


def test_momentum_changes_still_recapture(cp):
    """Options the kernels take as arguments (momentum, betas, weight decay) capture anew."""
    params = [nn.Parameter(cp.asarray(np.ones((3, 2), np.float32)))]
    params[0].grad = cp.ones((3, 2), np.float32)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    step = gl_cuda.graphed(lambda x: (opt.step(), x)[1], cp.zeros(1), optimizer=opt, log=None)
    for _ in range(3):
        step(cp.zeros(1))
    opt.param_groups[0]["lr"] = 0.01
    step(cp.zeros(1))
    assert step.captures == 1
    opt.param_groups[0]["momentum"] = 0.5
    step(cp.zeros(1))
    step(cp.zeros(1))
    assert step.captures == 2 and step.replays == 5


def test_a_refused_operation_falls_back_with_the_reason(cp):
    gl.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = cp.asarray(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    dy = cp.asarray(np.ones((2, 3), np.float32))

    def step(x, dy):
        opt.zero_grad()
        y = model(x)
        model.backward(dy)
        opt.step()
        return float(y.sum())  # a host synchronisation: refused under capture

    lines = []
    graphed = gl_cuda.graphed(step, x, dy, optimizer=opt, model=model, log=lines.append)
    values = [graphed(x, dy) for _ in range(3)]
    # the failed capture's forward was dropped: only the last eager step's bookkeeping is left
    assert all(not m.__dict__["_saved"] for m in model.modules())
    assert graphed.reason.startswith("capture failed (")
    assert len(lines) == 1 and lines[0].endswith("the step runs eagerly")
    assert all(np.isfinite(v) for v in values) and not graphed.captured


def test_another_batch_shape_runs_eagerly(cp):
    gl.manual_seed(0)
    model = _conv_net().to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.1)
    x, dy = _device_batch(cp)
    lines = []
    step = gl_cuda.graphed(plain_step(model, opt), x, dy, optimizer=opt, model=model, log=lines.append)
    step(x, dy)
    step(x, dy)
    assert step.captured
    COUNTER.reset()
    step(x[:1], dy[:1])
    assert COUNTER.count("graph") == 0 and COUNTER.count("kernel") > 0
    assert len(lines) == 1 and "runs eagerly" in lines[0]


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7)])
def test_linear_on_the_gpu_uses_the_implicit_gemm_kernels(cp, shape):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    layer = nn.Linear(7, 4)
    w, b = layer.weight.data.copy(), layer.bias.data.copy()
    dy = rng.standard_normal((*shape[:-1], 4)).astype(np.float32)
    layer.to("cuda")
    COUNTER.reset()
    y = layer(cp.asarray(x))
    dx = layer.backward(cp.asarray(dy))
    assert COUNTER.count("cublas") == 0 and COUNTER.count("kernel") >= 3
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(y.get(), x64 @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.get(), dy64 @ w, rtol=1e-5, atol=1e-5)
    rows = int(np.prod(shape[:-1]))
    np.testing.assert_allclose(
        layer.weight.grad.get(), dy64.reshape(rows, 4).T @ x64.reshape(rows, 7), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(layer.bias.grad.get(), dy64.reshape(rows, 4).sum(0), rtol=1e-5, atol=1e-5)
