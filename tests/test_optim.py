"""SGD, Adam, AdamW and the LR schedulers against torch.optim, step for step."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import SGD_OPTIONS, assert_close, assert_schedules_agree, npz_round_trip, option_ids

import gpulayers as gl
from gpulayers import nn, optim
from gpulayers.nn import Parameter

torch = pytest.importorskip("torch")

SHAPES = [(3, 4), (4,), (2, 1, 3)]
STEPS = 6
TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}

ADAM_OPTIONS = [
    dict(betas=b, eps=e, weight_decay=wd, amsgrad=a)
    for b, e, wd, a in itertools.product(
        [(0.9, 0.999), (0.5, 0.9), (0.0, 0.3)], [1e-8, 1e-3], [0.0, 0.1], [False, True]
    )
]
ADAMW_OPTIONS = [
    dict(betas=b, weight_decay=wd, amsgrad=a)
    for b, wd, a in itertools.product([(0.9, 0.999), (0.6, 0.95)], [1e-2, 0.5, 0.0], [False, True])
]


def _setup(dtype, device, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    ours = [Parameter(gl.to_device(a.copy(), device)) for a in init]
    ref = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    return ours, ref, grads


def _step_both(opt, topt, ours, ref, grads):
    for p, tp, g in zip(ours, ref, grads, strict=True):
        p.grad = gl.to_device(g, gl.backend.device_of(p.data))
        tp.grad = torch.from_numpy(g.copy())
    opt.step()
    topt.step()


def _assert_params_match(ours, ref, dtype):
    for p, tp in zip(ours, ref, strict=True):
        assert p.data.dtype == dtype
        assert_close(p.data, tp, **TOL[dtype])


def _run_parity(make, tmake, dtype, device):
    ours, ref, grads = _setup(dtype, device)
    buffers = [p.data for p in ours]
    opt, topt = make(ours), tmake(ref)
    for g in grads:
        _step_both(opt, topt, ours, ref, g)
        _assert_params_match(ours, ref, dtype)
    assert all(p.data is b for p, b in zip(ours, buffers, strict=True))  # updated in place


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=option_ids(SGD_OPTIONS))
def test_sgd_matches_torch(device, dtype, options):
    _run_parity(
        lambda ps: optim.SGD(ps, lr=0.1, **options), lambda ps: torch.optim.SGD(ps, lr=0.1, **options), dtype, device
    )


ADAM_CASES = [("Adam", 0.01, o) for o in ADAM_OPTIONS] + [("AdamW", 0.02, o) for o in ADAMW_OPTIONS]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("name", "lr", "options"),
    ADAM_CASES,
    ids=[f"{n}-{i}" for n, i in zip([c[0] for c in ADAM_CASES], option_ids([c[2] for c in ADAM_CASES]), strict=True)],
)
def test_adam_and_adamw_match_torch(device, dtype, name, lr, options):
    _run_parity(
        lambda ps: getattr(optim, name)(ps, lr=lr, **options),
        lambda ps: getattr(torch.optim, name)(ps, lr=lr, **options),
        dtype,
        device,
    )


def test_defaults_match_torch():
    p = [Parameter(np.zeros(2, np.float32))]
    tp = [torch.nn.Parameter(torch.zeros(2))]
    for ours, ref in (
        (optim.Adam(p), torch.optim.Adam(tp)),
        (optim.AdamW(p), torch.optim.AdamW(tp)),
        (optim.SGD(p, lr=0.1), torch.optim.SGD(tp, lr=0.1)),
    ):
        for key, value in ours.param_groups[0].items():
            if key != "params":
                assert ref.param_groups[0][key] == value, (type(ours).__name__, key)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_param_groups_and_lr_changes_match_torch(name):
    ours, ref, grads = _setup(np.float64, "cpu")
    extra = {"lr": 0.1} if name == "SGD" else {}
    group_opts = {"momentum": 0.5} if name == "SGD" else {"betas": (0.8, 0.99)}
    opt = getattr(optim, name)([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.03, **group_opts}], **extra)
    topt = getattr(torch.optim, name)([{"params": ref[:2]}, {"params": ref[2:], "lr": 0.03, **group_opts}], **extra)
    for i, g in enumerate(grads):
        if i == 3:
            opt.lr = 0.005  # the property sets every group
            for group in topt.param_groups:
                group["lr"] = 0.005
        _step_both(opt, topt, ours, ref, g)
        _assert_params_match(ours, ref, np.float64)
    assert opt.lr == 0.005 and opt.params == ours


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps)])
def test_params_without_grad_are_skipped(make):
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2))
    opt = make([a, b])
    a.grad = np.full(3, 0.5)
    opt.step()
    np.testing.assert_array_equal(b.data, np.ones(2))
    assert b not in opt.state and a in opt.state
    assert not np.array_equal(a.data, np.ones(3))


def test_zero_grad():
    a = Parameter(np.ones(3))
    opt = optim.SGD([a], lr=0.1)
    a.grad = np.ones(3)
    g = a.grad
    opt.zero_grad(set_to_none=False)
    assert a.grad is g and not g.any()
    opt.zero_grad()
    assert a.grad is None


def test_step_closure_and_grad_shape_check():
    a = Parameter(np.ones(3))
    opt = optim.SGD([a], lr=0.1)
    assert opt.step(lambda: 4.0) == 4.0
    a.grad = np.ones(2)
    with pytest.raises(ValueError, match=r"SGD.step: gradient of shape \(2,\) for a parameter of shape \(3,\)"):
        opt.step()


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda ps: optim.SGD(ps, lr=-0.1), r"SGD: invalid learning rate lr -0.1 \(expected >= 0"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "SGD: invalid momentum -0.5"),
        (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), "SGD: invalid weight_decay -1"),
        (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "SGD: Nesterov momentum requires momentum > 0"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
        (lambda ps: optim.SGD(ps, lr=float("nan")), "SGD: invalid learning rate lr nan"),
        (lambda ps: optim.Adam(ps, lr=-1e-3), "Adam: invalid learning rate lr"),
        (
            lambda ps: optim.Adam(ps, betas=(1.0, 0.999)),
            r"Adam: invalid beta at index 0 1.0 \(expected in \[0.0, 1.0\)",
        ),
        (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), "Adam: invalid beta at index 1 -0.1"),
        (lambda ps: optim.Adam(ps, betas=0.9), "Adam: invalid betas 0.9"),
        (lambda ps: optim.Adam(ps, eps=-1e-8), "Adam: invalid epsilon eps"),
        (lambda ps: optim.Adam(ps, weight_decay=-0.1), "Adam: invalid weight_decay"),
        (lambda ps: optim.AdamW(ps, betas=(0.9, 1.5)), "AdamW: invalid beta at index 1 1.5"),
        (lambda ps: optim.AdamW(ps, lr="0.1"), "AdamW: invalid learning rate lr '0.1'"),
        (lambda ps: optim.SGD([{"params": ps, "lr": -2.0}], lr=0.1), "SGD: invalid learning rate lr -2.0"),
    ],
)
def test_invalid_arguments_raise(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make([Parameter(np.zeros(2))])


def test_invalid_parameter_lists():
    with pytest.raises(ValueError, match="SGD: got an empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Adam: expected Parameters, got ndarray at position 0"):
        optim.Adam([np.zeros(2)])
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="Adam: a parameter appears more than once"):
        optim.Adam([p, p])
    with pytest.raises(TypeError, match="SGD: expected an iterable of Parameters, got a single Parameter"):
        optim.SGD(p, lr=0.1)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="SGD: invalid learning rate"):
        opt.lr = -1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), amsgrad=True),
        lambda ps: optim.AdamW([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.001}], lr=0.01),
    ],
    ids=["sgd", "adam", "adamw-groups"],
)
def test_state_dict_round_trip_through_npz_continues_identically(device, make):
    ours, _, grads = _setup(np.float32, device)
    twin = [Parameter(p.data.copy()) for p in ours]
    opt, twin_opt = make(ours), make(twin)
    for i, g in enumerate(grads):
        for p, q, gi in zip(ours, twin, g, strict=True):
            p.grad = gl.to_device(gi, device)
            q.grad = gl.to_device(gi, device)
        opt.step()
        if i == 2:
            sched = optim.StepLR(twin_opt, step_size=1, gamma=1.0)  # adds initial_lr to the groups
            loaded = npz_round_trip(twin_opt.state_dict())
            fresh = make(twin)  # a new optimiser over the same parameters, different lr
            fresh.lr = 0.5
            fresh.load_state_dict(loaded)
            assert fresh.param_groups[0]["initial_lr"] == opt.param_groups[0]["lr"]
            assert isinstance(fresh.param_groups[0]["lr"], float)
            if "betas" in fresh.param_groups[0]:
                assert fresh.param_groups[0]["betas"] == opt.param_groups[0]["betas"]
            twin_opt = fresh
            del sched
        twin_opt.step()
        for p, q in zip(ours, twin, strict=True):
            np.testing.assert_array_equal(gl.to_numpy(p.data), gl.to_numpy(q.data))
    for st in twin_opt.state.values():
        for key, value in st.items():
            if key == "step":
                assert isinstance(value, int)
            else:
                assert gl.get_array_module(value) is gl.get_array_module(ours[0].data)
                assert value.dtype == np.float32


def test_state_dict_layout_is_flat_numbers_and_arrays():
    p = [Parameter(np.zeros((2, 2), np.float32)), Parameter(np.zeros(3, np.float32))]
    opt = optim.Adam(p)
    p[0].grad = np.ones((2, 2), np.float32)
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {
        "param_groups.0.params",
        "param_groups.0.lr",
        "param_groups.0.betas",
        "param_groups.0.eps",
        "param_groups.0.weight_decay",
        "param_groups.0.amsgrad",
        "state.0.step",
        "state.0.exp_avg",
        "state.0.exp_avg_sq",
    }
    np.testing.assert_array_equal(sd["param_groups.0.params"], [0, 1])
    assert sd["state.0.step"] == 1 and isinstance(sd["state.0.exp_avg"], np.ndarray)
    sd["state.0.exp_avg"][...] = 7  # a copy: the optimiser's state is untouched
    assert not (opt.state[p[0]]["exp_avg"] == 7).any()


def test_load_state_dict_rejects_mismatches():
    opt = optim.SGD([Parameter(np.zeros(2)), Parameter(np.zeros(3))], lr=0.1, momentum=0.9)
    for p in opt.params:
        p.grad = np.ones(p.shape)
    opt.step()
    sd = opt.state_dict()
    other = optim.SGD([Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    with pytest.raises(
        ValueError, match="SGD.load_state_dict: .*parameter group 0 holds 1 parameters, the state has 2"
    ):
        other.load_state_dict(sd)
    swapped = optim.SGD([Parameter(np.zeros(3)), Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    with pytest.raises(
        ValueError, match=r"SGD.load_state_dict: state 'momentum_buffer' of parameter 0 has shape \(2,\)"
    ):
        swapped.load_state_dict(sd)
    with pytest.raises(ValueError, match="SGD.load_state_dict: unexpected key 'bogus'"):
        opt.load_state_dict({**sd, "bogus": 1})


# ---------------------------------------------------------------------------------------------
# Schedulers
# ---------------------------------------------------------------------------------------------
SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("StepLR", dict(step_size=1, gamma=0.9)),
    ("StepLR", dict(step_size=7)),
    ("CosineAnnealingLR", dict(T_max=10)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01)),
    ("CosineAnnealingLR", dict(T_max=1, eta_min=0.001)),
]


@pytest.mark.parametrize("name,kwargs", SCHEDULERS, ids=[f"{n}-{k}" for n, k in SCHEDULERS])
def test_scheduler_matches_torch_epoch_by_epoch(name, kwargs):
    p = Parameter(np.zeros(2))
    tp = torch.nn.Parameter(torch.zeros(2))
    opt = optim.SGD([{"params": [p]}, {"params": [Parameter(np.zeros(1))], "lr": 0.3}], lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(
        [{"params": [tp]}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.3}], lr=0.1, momentum=0.9
    )
    sched = getattr(optim, name)(opt, **kwargs)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    assert sched.get_last_lr() == tsched.get_last_lr()
    for _ in range(45):
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert sched.get_last_lr() == tsched.get_last_lr()  # bit for bit
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
    assert sched.last_epoch == tsched.last_epoch == 45


def test_cosine_follows_the_closed_form():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=1.0)
    sched = optim.CosineAnnealingLR(opt, T_max=8, eta_min=0.1)
    for epoch in range(1, 20):
        sched.step()
        want = 0.1 + 0.9 * (1 + np.cos(np.pi * epoch / 8)) / 2
        assert sched.get_last_lr()[0] == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name,kwargs", [SCHEDULERS[0], SCHEDULERS[4]], ids=["step", "cosine"])
def test_scheduler_state_dict_round_trip(name, kwargs):
    make_opt = lambda: optim.SGD([Parameter(np.zeros(1))], lr=0.2)  # noqa: E731
    opt = make_opt()
    sched = getattr(optim, name)(opt, **kwargs)
    for _ in range(5):
        sched.step()
    state = npz_round_trip(sched.state_dict())
    opt2 = make_opt()
    opt2.load_state_dict(opt.state_dict())
    sched2 = getattr(optim, name)(opt2, **kwargs)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 5
    assert_schedules_agree(sched, sched2, 12)


def test_scheduler_bad_arguments():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.2)
    with pytest.raises(ValueError, match="StepLR: expected step_size >= 1, got 0"):
        optim.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="StepLR: invalid gamma -0.5"):
        optim.StepLR(opt, step_size=2, gamma=-0.5)
    with pytest.raises(ValueError, match="CosineAnnealingLR: expected T_max >= 1, got 0"):
        optim.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(TypeError, match="StepLR: expected an Optimizer, got list"):
        optim.StepLR([], step_size=2)
    with pytest.raises(ValueError, match=r"CosineAnnealingLR: resuming with last_epoch=3 needs 'initial_lr'"):
        optim.CosineAnnealingLR(optim.SGD([Parameter(np.zeros(1))], lr=0.2), T_max=5, last_epoch=3)
    sched = optim.StepLR(opt, step_size=2)
    with pytest.raises(ValueError, match="StepLR.load_state_dict: expected keys"):
        sched.load_state_dict({"last_epoch": 1})


def test_optimizer_trains_a_model_with_a_scheduler():
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    x = np.random.standard_normal((32, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    crit = nn.MSELoss()
    opt = optim.Adam(model.parameters(), lr=0.02)
    sched = optim.CosineAnnealingLR(opt, T_max=100)
    first = crit(model(x), y)
    for _ in range(100):
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        sched.step()
    assert crit(model(x), y) < 0.05 * first
    assert opt.lr == pytest.approx(0.0, abs=1e-12)


def test_load_state_dict_of_another_optimizer_type_raises():
    p = [Parameter(np.zeros(2))]
    sgd = optim.SGD(p, lr=0.1, momentum=0.9)
    p[0].grad = np.ones(2)
    sgd.step()
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: parameter group 0 of the state has the options"):
        optim.Adam(p).load_state_dict(sgd.state_dict())
    adam = optim.Adam(p)
    adam.step()
    sd = {k: v for k, v in sgd.state_dict().items() if k.startswith("state.")}
    sd.update({k: v for k, v in adam.state_dict().items() if k.startswith("param_groups.")})
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: unknown per-parameter state \['momentum_buffer'\]"):
        optim.Adam(p).load_state_dict(sd)


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=option_ids(SGD_OPTIONS))
def test_sgd_blockwise_numpy_update_matches_torch_and_the_plain_update_bitwise(monkeypatch, options):
    """Large NumPy parameters update block by block on the thread pool: the same values, bit for bit."""
    from gpulayers import threads
    from gpulayers.optim import sgd

    monkeypatch.setattr(threads, "BLOCK_BYTES", 16)  # blocks of 4 float32 values
    previous = threads.get_num_threads()
    gl.set_num_threads(2)
    try:
        runs = []
        for min_size in (1, 10**9):  # blockwise, then the whole-array update
            monkeypatch.setattr(sgd, "BLOCKWISE_MIN_SIZE", min_size)
            ours, ref, grads = _setup(np.float32, "cpu", seed=3)
            opt, topt = optim.SGD(ours, lr=0.1, **options), torch.optim.SGD(ref, lr=0.1, **options)
            for g in grads:
                _step_both(opt, topt, ours, ref, g)
                _assert_params_match(ours, ref, np.float32)
            runs.append([p.data.copy() for p in ours])
        for a, b in zip(*runs, strict=True):
            assert a.tobytes() == b.tobytes()
    finally:
        gl.set_num_threads(previous)
