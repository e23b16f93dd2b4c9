"""``Sequential`` runs BatchNorm followed by ReLU as one: the ReLU inside the BatchNorm's kernels or CPU blocks.

On NumPy the fused pair must give bitwise the results of the two layers run one by one (finite
and non-finite gradients, eval mode, modules reused within a step).

On the CuPy stand-in (custom kernels on the host harness, both grids) the fused pair must give
the NumPy path's outputs, input gradients, parameter gradients and running statistics, with two
launches forward and two backward, also when modules are reused within a step; and the op's
``relu`` flag must give ReLU's results on the generic (NumPy) path too.
"""

from __future__ import annotations

import numpy as np
import pytest
from cupy_standin import COUNTER
from helpers import fused_and_unfused

import gpulayers as gl
from gpulayers.ops import normalization


def _run(model, x, dy, to_device=None):
    """Output, input gradient, parameter gradients and buffers of one forward/backward."""
    if to_device is not None:
        model.to("cuda")
        x, dy = to_device(x), to_device(dy)
    y = model(x)
    dx = model.backward(dy)
    grads = {name: gl.to_numpy(p.grad) for name, p in model.named_parameters()}
    buffers = {name: gl.to_numpy(b) for name, b in model.named_buffers()}
    return gl.to_numpy(y), gl.to_numpy(dx), grads, buffers


def _compare(got, want, tol):
    for g, w in zip(got[:2], want[:2], strict=True):
        np.testing.assert_allclose(g, w, **tol)
    for part in (2, 3):
        assert got[part].keys() == want[part].keys()
        for key in want[part]:
            np.testing.assert_allclose(got[part][key], want[part][key], **tol, err_msg=key)


def _models():
    """(name, build, input shape): a plain pair, a pair whose modules are used twice, a shared ReLU."""

    def reused():
        bn, relu = gl.nn.BatchNorm2d(3), gl.nn.ReLU()
        return gl.nn.Sequential(bn, relu, gl.nn.Conv2d(3, 3, 1), bn, relu)

    def shared_relu():
        relu = gl.nn.ReLU()
        return gl.nn.Sequential(gl.nn.BatchNorm1d(6), relu, gl.nn.Linear(6, 6), relu, gl.nn.BatchNorm1d(6), relu)

    return [
        ("pair", lambda: gl.nn.Sequential(gl.nn.BatchNorm2d(3), gl.nn.ReLU()), (6, 3, 5, 5)),
        ("reused", reused, (6, 3, 5, 5)),
        ("shared_relu", shared_relu, (10, 6)),
    ]


@pytest.mark.parametrize(("name", "build", "shape"), _models(), ids=[m[0] for m in _models()])
def test_fused_pair_matches_the_cpu_layers(cp, name, build, shape):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gl.manual_seed(0)
    want = _run(build(), x, dy)
    gl.manual_seed(0)
    got = _run(build(), x, dy, cp.asarray)
    _compare(got, want, {"rtol": 1e-4, "atol": 1e-5})


def test_fused_pair_launches_two_kernels_each_way(cp):
    model = gl.nn.Sequential(gl.nn.BatchNorm2d(4), gl.nn.ReLU()).to("cuda")
    x = cp.asarray(np.random.default_rng(0).standard_normal((8, 4, 6, 6)).astype(np.float32))
    COUNTER.reset()
    y = model(x)
    assert COUNTER.names() == {"batch_norm_stats_kernel<float>": 1, "batch_norm_apply_kernel<float>": 1}
    dy = cp.ones_like(y)
    COUNTER.reset()
    model.backward(dy)
    assert COUNTER.names() == {
        "batch_norm_backward_reduce_kernel<float>": 1,
        "batch_norm_backward_apply_kernel<float>": 1,
    }
    assert COUNTER.syncs() == 0


def test_fused_pair_is_bitwise_the_two_layers(cp):
    """The same kernels' arithmetic, so the same bits as BatchNorm then ReLU run one by one."""
    rng = np.random.default_rng(3)
    x = cp.asarray(rng.standard_normal((8, 5, 7, 7)).astype(np.float32))
    dy = cp.asarray(rng.standard_normal((8, 5, 7, 7)).astype(np.float32))
    fused = gl.nn.Sequential(gl.nn.BatchNorm2d(5), gl.nn.ReLU()).to("cuda")
    bn, relu = gl.nn.BatchNorm2d(5).to("cuda"), gl.nn.ReLU()
    y1 = fused(x)
    dx1 = fused.backward(dy)
    y2 = relu(bn(x))
    dx2 = bn.backward(relu.backward(dy))
    assert np.array_equal(y1.get(), y2.get()) and np.array_equal(dx1.get(), dx2.get())
    assert np.array_equal(fused[0].weight.grad.get(), bn.weight.grad.get())


def test_eval_mode_and_wrapped_forwards_are_not_fused_but_agree(cp):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    cpu = gl.nn.Sequential(gl.nn.BatchNorm2d(3), gl.nn.ReLU())
    cpu.eval()
    gpu = gl.nn.Sequential(gl.nn.BatchNorm2d(3), gl.nn.ReLU()).to("cuda")
    gpu.eval()
    np.testing.assert_allclose(gpu(cp.asarray(x)).get(), cpu(x), rtol=1e-6, atol=1e-6)
    gpu.train()
    calls = []
    inner = gpu[1].forward
    object.__setattr__(gpu[1], "forward", lambda t: calls.append(1) or inner(t))  # as summary() wraps
    gpu(cp.asarray(x))
    assert calls == [1]


@pytest.mark.parametrize("running", [True, False])
def test_op_relu_flag_on_the_generic_path(running):
    """NumPy input: ``relu=True`` gives ReLU's output and masks the gradient before the reductions."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 4, 3)).astype(np.float64)
    dy = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    rm, rv = (np.zeros(4), np.ones(4)) if running else (None, None)
    y, cache = normalization.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5, relu=True)
    plain, plain_cache = normalization.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)
    np.testing.assert_array_equal(y, np.maximum(plain, 0))
    got = normalization.batch_norm_backward(dy, cache)
    want = normalization.batch_norm_backward(np.where(y <= 0, 0.0, dy), plain_cache)
    for g, w_ in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w_)


@pytest.mark.parametrize(("name", "build", "shape"), _models(), ids=[m[0] for m in _models()])
@pytest.mark.parametrize("grad", ["finite", "non-finite"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NaN gradients reach the reductions
def test_fused_pair_on_numpy_is_bitwise_the_two_layers(name, build, shape, grad, training):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    if grad == "non-finite":
        dy.flat[::7] = np.inf  # inf * 0 would be NaN: the masked positions must still get 0
        dy.flat[3::11] = np.nan
    fused, plain = fused_and_unfused(build, training)
    if not training and name != "pair":  # in eval mode a reused module keeps only its latest forward
        np.testing.assert_array_equal(fused(x), plain(x))
        return
    got, want = _run(fused, x, dy), _run(plain, x, dy)
    for g, w in zip(got[:2], want[:2], strict=True):
        np.testing.assert_array_equal(g, w)
    for part in (2, 3):
        for key in want[part]:
            np.testing.assert_array_equal(got[part][key], want[part][key], err_msg=key)
