"""RMSprop, clip_grad_norm_, LinearLR and OneCycleLR against torch, step for step."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers import assert_schedules_agree, npz_round_trip

import gpulayers as gl
from gpulayers import nn, optim
from gpulayers.nn import Parameter

torch = pytest.importorskip("torch")

SHAPES = [(3, 4), (4,), (2, 1, 3)]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}

RMSPROP_OPTIONS = [
    dict(alpha=a, eps=e, weight_decay=wd, momentum=m, centered=c)
    for a, e, wd, m, c in itertools.product([0.99, 0.3], [1e-8, 1e-2], [0.0, 0.1], [0.0, 0.9], [False, True])
]


def _params(dtype, device, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [Parameter(gl.to_device(a.copy(), device)) for a in init]
    ref = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    return ours, ref, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", RMSPROP_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_rmsprop_matches_torch_step_for_step(device, dtype, options):
    ours, ref, rng = _params(dtype, device)
    opt, topt = optim.RMSprop(ours, lr=0.01, **options), torch.optim.RMSprop(ref, lr=0.01, **options)
    buffers = [p.data for p in ours]
    for _ in range(6):
        for p, tp in zip(ours, ref, strict=True):
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad, tp.grad = gl.to_device(g, device), torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        for p, tp in zip(ours, ref, strict=True):
            np.testing.assert_allclose(gl.to_numpy(p.data), tp.detach().numpy(), **TOL[dtype])
    assert all(p.data is b for p, b in zip(ours, buffers, strict=True))  # updated in place
    t_state = topt.state_dict()["state"][0]
    assert {k for k in opt.state[ours[0]]} == set(t_state)
    np.testing.assert_allclose(gl.to_numpy(opt.state[ours[0]]["square_avg"]), t_state["square_avg"], **TOL[dtype])


def test_rmsprop_defaults_and_state_dict_round_trip():
    params = [Parameter(np.ones(3))]
    opt = optim.RMSprop(params, momentum=0.5, centered=True)
    t_defaults = torch.optim.RMSprop([torch.nn.Parameter(torch.ones(1))]).defaults
    assert all(opt.defaults[k] == t_defaults[k] or k in ("momentum", "centered") for k in opt.defaults)
    for _ in range(3):
        params[0].grad = np.arange(3.0)
        opt.step()
    state = npz_round_trip(opt.state_dict())
    params2 = [Parameter(params[0].data.copy())]
    opt2 = optim.RMSprop(params2, momentum=0.5, centered=True)
    opt2.load_state_dict(state)
    for p in (params[0], params2[0]):
        p.grad = np.ones(3)
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(params2[0].data, params[0].data)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(lr=-1), "RMSprop: invalid learning rate lr -1"),
        (dict(alpha=-0.1), "RMSprop: invalid alpha value -0.1"),
        (dict(eps=-1e-8), "RMSprop: invalid epsilon value eps"),
        (dict(momentum=-0.5), "RMSprop: invalid momentum value -0.5"),
        (dict(weight_decay="a"), "RMSprop: invalid weight_decay value 'a'"),
    ],
)
def test_rmsprop_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.RMSprop([Parameter(np.zeros(1))], **kwargs)


# -- clip_grad_norm_ ---------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf, "inf", 0.5])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(device, norm_type, max_norm, dtype):
    ours, ref, rng = _params(dtype, device)
    for p, tp in zip(ours, ref, strict=True):
        g = rng.standard_normal(p.shape).astype(dtype)
        p.grad, tp.grad = gl.to_device(g, device), torch.from_numpy(g.copy())
    ours.append(Parameter(np.zeros(2, dtype)))  # no gradient: skipped
    total = nn.utils.clip_grad_norm_(ours, max_norm, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type)
    np.testing.assert_allclose(float(total), float(t_total), **TOL[dtype])
    for p, tp in zip(ours, ref, strict=False):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(gl.to_numpy(p.grad), tp.grad.numpy(), **TOL[dtype])


def test_clip_grad_norm_takes_one_parameter_and_no_gradients():
    p = Parameter(np.array([3.0, 4.0]))
    p.grad = np.array([3.0, 4.0])
    assert float(nn.utils.clip_grad_norm_(p, 1.0)) == 5.0
    np.testing.assert_allclose(p.grad, [0.6, 0.8], rtol=1e-6)
    assert float(nn.utils.clip_grad_norm_([Parameter(np.zeros(2))], 1.0)) == 0.0


def test_clip_grad_norm_non_finite():
    p = Parameter(np.zeros(2))
    p.grad = np.array([np.inf, 1.0])
    with pytest.raises(RuntimeError, match="clip_grad_norm_: the total norm of order 2.0 .* is non-finite"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    tp = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    tp.grad = torch.tensor([math.inf, 1.0], dtype=torch.float64)
    total = nn.utils.clip_grad_norm_([p], 1.0)
    t_total = torch.nn.utils.clip_grad_norm_([tp], 1.0)
    assert float(total) == float(t_total) == math.inf
    np.testing.assert_array_equal(p.grad, tp.grad.numpy())  # NaN where torch gives NaN


@pytest.mark.parametrize(
    ("call", "err", "pattern"),
    [
        (lambda p: nn.utils.clip_grad_norm_(p, "1"), ValueError, "clip_grad_norm_: expected max_norm to be a number"),
        (lambda p: nn.utils.clip_grad_norm_(p, 1.0, "two"), ValueError, "expected norm_type to be a number or 'inf'"),
        (lambda p: nn.utils.clip_grad_norm_([np.zeros(2)], 1.0), TypeError, "expected Parameters, got ndarray"),
    ],
)
def test_clip_grad_norm_bad_arguments(call, err, pattern):
    with pytest.raises(err, match=pattern):
        call([Parameter(np.zeros(2))])


# -- LinearLR and OneCycleLR ----------------------------------------------------------------------


def _optimizers(kind):
    """The same two-group optimiser in both libraries."""
    p, tp = Parameter(np.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    q, tq = Parameter(np.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    if kind == "sgd":
        return (
            optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.3}], lr=0.1, momentum=0.9),
            torch.optim.SGD([{"params": [tp]}, {"params": [tq], "lr": 0.3}], lr=0.1, momentum=0.9),
        )
    return (
        optim.Adam([{"params": [p]}, {"params": [q], "lr": 0.3}], lr=0.1),
        torch.optim.Adam([{"params": [tp]}, {"params": [tq], "lr": 0.3}], lr=0.1),
    )


SCHEDULES = [
    ("LinearLR", {}, 12),
    ("LinearLR", dict(start_factor=0.1, end_factor=0.9, total_iters=4), 12),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.0, total_iters=7), 12),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=20), 20),
    ("OneCycleLR", dict(max_lr=[0.5, 2.0], epochs=3, steps_per_epoch=7, anneal_strategy="linear"), 21),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=25, three_phase=True, pct_start=0.25), 25),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=10, cycle_momentum=False, div_factor=5.0), 10),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=15, base_momentum=[0.8, 0.7], max_momentum=0.9), 15),
]


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize(("name", "kwargs", "steps"), SCHEDULES, ids=[f"{n}-{k}" for n, k, _ in SCHEDULES])
def test_scheduler_matches_torch_step_for_step(kind, name, kwargs, steps):
    opt, topt = _optimizers(kind)
    sched = getattr(optim.lr_scheduler, name)(opt, **kwargs)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)

    def momentum(groups):
        return [g["betas"][0] if kind == "adam" else g["momentum"] for g in groups]

    for _ in range(steps):
        assert sched.get_last_lr() == tsched.get_last_lr()  # bit for bit
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
        assert momentum(opt.param_groups) == momentum(topt.param_groups)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
    assert sched.get_last_lr() == tsched.get_last_lr()
    assert sched.last_epoch == tsched.last_epoch == steps


def test_one_cycle_refuses_to_step_past_the_cycle_like_torch():
    opt, _ = _optimizers("sgd")
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="OneCycleLR: tried to step 4 times, but the cycle has total_steps=3"):
        sched.step()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("LinearLR", dict(start_factor=0.2, total_iters=4)), ("OneCycleLR", dict(max_lr=0.5, total_steps=12))],
)
def test_scheduler_state_dict_round_trip(name, kwargs):
    opt, _ = _optimizers("adam")
    sched = getattr(optim.lr_scheduler, name)(opt, **kwargs)
    for _ in range(5):
        opt.step()
        sched.step()
    state = npz_round_trip(sched.state_dict())
    opt2, _ = _optimizers("adam")
    sched2 = getattr(optim.lr_scheduler, name)(opt2, **kwargs)  # PyTorch's order: scheduler, then the states
    opt2.load_state_dict(opt.state_dict())  # the groups carry the scheduler's entries
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 5

    def same_betas():
        assert [g["betas"] for g in opt2.param_groups] == [g["betas"] for g in opt.param_groups]

    assert_schedules_agree(sched, sched2, 6, also=same_betas)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda o: optim.LinearLR(o, start_factor=0), r"LinearLR: expected start_factor in \(0, 1\], got 0"),
        (lambda o: optim.LinearLR(o, start_factor=1.5), r"LinearLR: expected start_factor in \(0, 1\]"),
        (lambda o: optim.LinearLR(o, end_factor=2), r"LinearLR: invalid end_factor 2 \(expected in \[0.0, 1.0\]\)"),
        (lambda o: optim.LinearLR(o, total_iters=0), "LinearLR: expected total_iters >= 1"),
        (lambda o: optim.OneCycleLR(o, 0.1), "OneCycleLR: give either total_steps, or epochs and steps_per_epoch"),
        (lambda o: optim.OneCycleLR(o, 0.1, total_steps=0), "OneCycleLR: expected total_steps >= 1"),
        (lambda o: optim.OneCycleLR(o, 0.1, 5, pct_start=1.5), r"OneCycleLR: invalid pct_start 1.5"),
        (lambda o: optim.OneCycleLR(o, 0.1, 5, anneal_strategy="exp"), "OneCycleLR: expected anneal_strategy"),
        (lambda o: optim.OneCycleLR(o, [0.1], 5), r"OneCycleLR: expected 2 values for max_lr \(one per parameter"),
    ],
)
def test_scheduler_bad_arguments(make, pattern):
    opt, _ = _optimizers("sgd")
    with pytest.raises(ValueError, match=pattern):
        make(opt)


def test_one_cycle_needs_momentum_to_cycle():
    opt = optim.RMSprop([Parameter(np.zeros(1))])  # has momentum: cycles it, as torch does
    optim.OneCycleLR(opt, 0.1, 5)
    assert opt.param_groups[0]["momentum"] == 0.95

    class Plain(optim.SGD):
        def __init__(self, params):
            super().__init__(params, lr=0.1)
            del self.defaults["momentum"]

    with pytest.raises(ValueError, match="OneCycleLR: cycle_momentum needs an optimizer with momentum or betas"):
        optim.OneCycleLR(Plain([Parameter(np.zeros(1))]), 0.1, 5)
