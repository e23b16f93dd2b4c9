"""The GPU training step, run on the CPU through the CuPy stand-in: its results and its cost.

The library's CuPy code path runs on ``tests/cupy_standin.py`` (NumPy underneath) with the
custom kernels on the g++ host harness, so the step's results are real and are compared with
the NumPy path; the stand-in counts kernel launches, cuBLAS calls, device copies, transfers
and host synchronisations, and the budgets of one step of the reference CNN are asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from cupy_standin import COUNTER, LAUNCHES, install
from kernel_harness import HarnessLibrary

import gpulayers as gl

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
from _reference import reference_cnn  # noqa: E402
from gpu_launches import PHASES, count_step, train_step  # noqa: E402


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> HarnessLibrary:
    return HarnessLibrary(tmp_path_factory.mktemp("standin_harness"))


# -- the stand-in counts what CuPy would do ------------------------------------------------------
def test_elementwise_reduction_and_views_are_counted(cp):
    a = cp.asarray(np.arange(12.0).reshape(3, 4))
    assert COUNTER.count("h2d") == 1
    COUNTER.reset()
    b = (a * 2 + 1).sum(axis=0)  # two element-wise kernels and a reduction
    assert COUNTER.launches() == 3
    a.reshape(4, 3).T[1:]  # views: nothing
    cp.expand_dims(a, 0)
    assert COUNTER.launches() == 3
    cp.exp(a)  # any NumPy ufunc through the module's __getattr__
    assert COUNTER.launches() == 4
    np.testing.assert_array_equal(b.get(), (np.arange(12.0).reshape(3, 4) * 2 + 1).sum(axis=0))


@pytest.mark.parametrize("convert", [float, bool, int, lambda x: x.item(), lambda x: x.get()])
def test_host_conversions_are_syncs(cp, convert):
    x = cp.asarray(np.array(3.0)).sum()
    COUNTER.reset()
    convert(x)
    assert COUNTER.syncs() == 1 and COUNTER.count("d2h") == 1


def test_asnumpy_and_implicit_conversion(cp):
    x = cp.asarray(np.ones(3))
    COUNTER.reset()
    np.testing.assert_array_equal(cp.asnumpy(x), np.ones(3))
    assert COUNTER.syncs() == 1
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)


def test_matmul_on_3d_operands_copies_strided_ones_but_gemm_does_not(cp):
    a = cp.asarray(np.ones((2, 3, 4), np.float32))
    b = cp.asarray(np.ones((2, 3, 5), np.float32))
    COUNTER.reset()
    cp.matmul(a.transpose(0, 2, 1), b)
    assert COUNTER.names("copy") == {"matmul makes a contiguous": 1} and COUNTER.count("cublas") == 1
    COUNTER.reset()
    out = cp.cublas.gemm("T", "N", a[0], b[0])
    assert COUNTER.launches() == 1
    np.testing.assert_allclose(out.get(), np.full((4, 5), 3.0))


def test_custom_kernels_run_on_the_harness_and_are_counted(cp):
    x = cp.asarray(np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32))
    COUNTER.reset()
    y = gl.nn.MaxPool2d(2)(x)
    assert COUNTER.count("kernel") == 1
    want = x.get().reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(y.get(), want)


# -- the GPU step computes what the CPU step computes --------------------------------------------
def _step_results(device_module, p_dropout: float):
    gl.manual_seed(0)
    model = reference_cnn(gl.nn)
    model[11].p = p_dropout
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int64)
    if device_module is not None:
        model.to("cuda")
        x, y = device_module.asarray(x), device_module.asarray(y)
    criterion = gl.nn.CrossEntropyLoss()
    opt = gl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(2):
        train_step(model, criterion, opt, x, y)
        losses.append(float(criterion(model(x), y)))
    state = {k: gl.to_numpy(v) for k, v in model.state_dict().items()}
    return losses, state


def test_gpu_step_matches_the_cpu_step(monkeypatch, harness):
    want_losses, want_state = _step_results(None, 0.0)
    with install(harness, monkeypatch) as cp:
        losses, state = _step_results(cp, 0.0)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    for key, value in want_state.items():
        np.testing.assert_allclose(state[key], value, rtol=2e-3, atol=2e-5, err_msg=key)


# -- the cost of one step --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_step(harness):
    mp = pytest.MonkeyPatch()
    try:
        return count_step(lambda: reference_cnn(gl.nn), (1, 28, 28), 10, 64, harness, mp)
    finally:
        mp.undo()


def _count(events, kinds, phase=None):
    return sum(1 for e in events if e.kind in kinds and (phase is None or e.phase == phase))


def test_step_counts_every_phase(reference_step):
    for phase in PHASES:
        assert _count(reference_step, LAUNCHES, phase) > 0, phase


@pytest.mark.parametrize("phase", PHASES)
def test_no_host_synchronisation_or_transfer_in_a_step(reference_step, phase):
    """Forward, loss, backward and the optimiser step never wait for the GPU or move data, except the
    optimiser's one asynchronous upload of its launch table (learning rate, addresses)."""
    picked = [(e.kind, e.name) for e in reference_step if e.phase == phase and e.kind in ("sync", "d2h", "h2d")]
    assert picked == ([("h2d", "ndarray.set")] if phase == "optimizer" else [])


@pytest.mark.parametrize(
    "options",
    [
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        {"momentum": 0.5, "dampening": 0.3},
        {},
    ],
)
def test_sgd_updates_every_parameter_in_one_launch(cp, options):
    """20 parameters: one multi-tensor launch and one table upload per step, the numbers of the NumPy code."""
    rng = np.random.default_rng(5)
    shapes = [(3, 5), (7,), (2, 3, 4)] * 6 + [(1,), (33,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    cpu = [gl.nn.Parameter(a.copy()) for a in init]
    gpu = [gl.nn.Parameter(cp.asarray(a)) for a in init]
    opt_cpu = gl.optim.SGD(cpu, lr=0.1, **options)
    opt_gpu = gl.optim.SGD(gpu, lr=0.1, **options)
    for step in grads:
        for p, q, g in zip(cpu, gpu, step, strict=True):
            p.grad, q.grad = g, cp.asarray(g)
        opt_cpu.step()
        COUNTER.reset()
        opt_gpu.step()
        assert COUNTER.launches() == 1 and COUNTER.names() == {"sgd_multi_update_kernel<float>": 1}
        assert COUNTER.count(("h2d",)) == 1 and COUNTER.syncs() == 0
    for p, q in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(q.data.get(), p.data, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("adam", lambda ps: gl.optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True)),
        ("adam", lambda ps: gl.optim.AdamW(ps, lr=0.01)),
        ("rmsprop", lambda ps: gl.optim.RMSprop(ps, lr=0.01, momentum=0.9, centered=True)),
        ("rmsprop", lambda ps: gl.optim.RMSprop(ps, lr=0.01, weight_decay=0.1)),
    ],
    ids=["adam_amsgrad", "adamw", "rmsprop_centered_momentum", "rmsprop_plain"],
)
def test_adam_and_rmsprop_update_every_parameter_in_one_launch(cp, name, make):
    """20 parameters: one launch and one table upload per step from the second step (the first
    also zero-fills the new state), no sync; the numbers of the NumPy code."""
    rng = np.random.default_rng(6)
    shapes = [(3, 5), (7,), (2, 3, 4)] * 6 + [(1,), (33,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    cpu = [gl.nn.Parameter(a.copy()) for a in init]
    gpu = [gl.nn.Parameter(cp.asarray(a)) for a in init]
    opt_cpu, opt_gpu = make(cpu), make(gpu)
    for step in range(3):
        for p, q in zip(cpu, gpu, strict=True):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad, q.grad = g, cp.asarray(g)
        opt_cpu.step()
        COUNTER.reset()
        opt_gpu.step()
        assert COUNTER.names() == ({f"{name}_multi_update_kernel<float>": 1} if step else COUNTER.names())
        assert COUNTER.names()[f"{name}_multi_update_kernel<float>"] == 1
        assert COUNTER.count(("h2d",)) == 1 and COUNTER.syncs() == 0
    for p, q in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(q.data.get(), p.data, rtol=1e-6, atol=1e-7)


# Launches of one step of the reference CNN, batch 64, counted on the stand-in (custom kernels,
# CuPy kernels, cuBLAS calls and device copies): the budget, and per phase what is reached (one
# launch per kernel: BatchNorm+ReLU fused, ReLU in one launch each way, bias gradients in the
# weight gradients' launches, no input gradient for the images: ``needs_input_grad = False``).
STEP_LAUNCH_BUDGET = 40
PHASE_LAUNCHES = {"forward": 12, "loss": 1, "backward": 20, "optimizer": 1}


def test_step_launches_within_the_budget(reference_step):
    assert _count(reference_step, LAUNCHES) <= STEP_LAUNCH_BUDGET


@pytest.mark.parametrize("phase", PHASES)
def test_step_launches_per_phase(reference_step, phase):
    assert _count(reference_step, LAUNCHES, phase) <= PHASE_LAUNCHES[phase]


def test_relu_runs_in_the_batch_norm_kernels_or_its_own(reference_step):
    """No element-wise CuPy kernel for a ReLU: the two after a BatchNorm are fused into it, the
    third (after the hidden linear layer) is one kernel each way."""
    names = {e.name for e in reference_step if e.kind in LAUNCHES}
    assert not names & {"maximum", "less_equal", "where"}
    assert sum(1 for e in reference_step if e.name.startswith("relu_")) == 2


def test_no_input_gradient_for_the_images(reference_step):
    """The first convolution's input is data: its data-gradient kernel is not launched."""
    assert not [e for e in reference_step if e.name.startswith("conv2d_direct_backward_data")]


def test_bias_gradients_take_no_launch_of_their_own(reference_step):
    """The four biases' gradients come out of the weight-gradient kernels (and their reductions):
    the one CuPy sum left is the first convolution's reduction over its per-lane partial sums."""
    sums = [e for e in reference_step if e.kind in LAUNCHES and "sum" in e.name]
    assert [e.name for e in sums] == ["ndarray.sum"]


def test_no_device_copy_in_a_step(reference_step):
    """Gradients are assigned on first accumulation, losses and masks are made in place."""
    assert _count(reference_step, ("copy",)) == 0
