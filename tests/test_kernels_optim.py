"""The fused optimiser kernels (``cuda_kernels/optim.cu``), run on the CPU through the g++ harness.

``gpulayers.kernels.get_function`` is swapped for the harness's and the optimisers' GPU test
(:func:`gpulayers.optim.optim_cuda.can_fuse`) for the layout check alone, so that NumPy parameters
take the fused path: the real launchers run end to end, their argument types checked against
the kernels' C signatures. Each case steps a fused optimiser and a twin on the NumPy path
(which matches PyTorch step for step, ``tests/test_optim.py``) over the same gradients and
compares parameters and state after every step; every case also runs with a 3 x 4 grid to
exercise the grid-stride loop. A few cases also compare with ``torch.optim`` directly. The
AddressSanitizer/UBSan run of these launchers (modes ``optim-clean`` and ``optim-overflow``) is in
``tests/test_kernels_harness.py`` with the other kernels'.

On x86-64, g++ emits no fused multiply-adds without ``-march``, so the harness must agree with
NumPy bit for bit; elsewhere (and on the GPU, where nvcc contracts) a few roundings apart.
"""

from __future__ import annotations

import itertools
import platform

import numpy as np
import pytest
from helpers import SGD_OPTIONS, option_ids
from kernel_harness.harness import HarnessLibrary

import gpulayers as gl
from gpulayers import kernels, optim
from gpulayers.nn import Parameter
from gpulayers.optim import optim_cuda

torch = pytest.importorskip("torch")

DTYPES = [np.float32, np.float64]
SHAPES = [(5, 7), (13,), (2, 3, 4), (1,)]
STEPS = 5
EXACT = platform.machine().lower() in ("x86_64", "amd64")

ADAM_OPTIONS = [
    dict(betas=b, eps=e, weight_decay=wd, amsgrad=a)
    for b, e, wd, a in itertools.product(
        [(0.9, 0.999), (0.0, 0.3), (0.6, 0.95)], [1e-8, 1e-3], [0.0, 0.1], [False, True]
    )
]


@pytest.fixture
def harness(harness, monkeypatch) -> HarnessLibrary:
    """The shared harness fixture, with NumPy parameters routed to the fused path."""
    monkeypatch.setattr(optim_cuda, "can_fuse", optim_cuda.fusable)
    return harness


def _agree(got, want, dtype, what=""):
    """Bit for bit where the harness compiler does not contract FMAs, else within a few roundings."""
    got, want = gl.to_numpy(got), gl.to_numpy(want)
    assert got.dtype == want.dtype == dtype, what
    if EXACT:
        np.testing.assert_array_equal(got, want, err_msg=what)
    elif dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=4e-7, atol=4e-7 * float(np.abs(want).max(initial=1)), err_msg=what)


def _params(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return [Parameter(a.copy()) for a in init], [Parameter(a.copy()) for a in init]


def _grads(dtype, steps=STEPS, seed=1, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def _fused_vs_numpy(harness, make, dtype, grads=None, seed=0, shapes=SHAPES, after_step=None):
    """Step a fused optimiser and a NumPy-path twin; compare parameters and state every step.

    ``after_step(optimizer, t)``, if given, is applied to both after step ``t`` (0-based).
    """
    fused_params, numpy_params = _params(dtype, seed, shapes)
    fused, reference = make(fused_params), make(numpy_params)
    reference_step = reference.step
    grads = _grads(dtype, shapes=shapes) if grads is None else grads
    for t, step_grads in enumerate(grads):
        for p, q, g in zip(fused_params, numpy_params, step_grads, strict=True):
            p.grad, q.grad = g.copy(), g.copy()
        before = len(harness.launches)
        fused.step()
        launches = _launches_per_step(fused, len(shapes))
        assert len(harness.launches) - before == launches
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(optim_cuda, "can_fuse", lambda *a: False)
            reference_step()
        assert len(harness.launches) - before == launches
        for i, (p, q) in enumerate(zip(fused_params, numpy_params, strict=True)):
            _agree(p.data, q.data, dtype, f"step {t + 1}, parameter {i}")
            assert fused.state[p].keys() == reference.state[q].keys()
            for key, value in reference.state[q].items():
                if key == "step":
                    assert fused.state[p][key] == value
                else:
                    _agree(fused.state[p][key], value, dtype, f"step {t + 1}, parameter {i}, {key}")
        if after_step is not None:
            after_step(fused, t)
            after_step(reference, t)
    return fused, fused_params


# ----------------------------------------------------------------------------------------------
# Fused path == NumPy path, every option
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=option_ids(SGD_OPTIONS))
def test_sgd_fused_matches_numpy_path(harness, dtype, options):
    _fused_vs_numpy(harness, lambda ps: optim.SGD(ps, lr=0.1, **options), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=option_ids(ADAM_OPTIONS))
def test_adam_fused_matches_numpy_path(harness, dtype, options):
    _fused_vs_numpy(harness, lambda ps: optim.Adam(ps, lr=0.01, **options), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=option_ids(ADAM_OPTIONS))
def test_adamw_fused_matches_numpy_path(harness, dtype, options):
    options = dict(options, weight_decay=options["weight_decay"] * 5)  # 0 or 0.5
    _fused_vs_numpy(harness, lambda ps: optim.AdamW(ps, lr=0.02, **options), dtype)


RMSPROP_OPTIONS = [
    dict(alpha=a, eps=e, weight_decay=wd, momentum=m, centered=c)
    for a, e, wd, m, c in itertools.product([0.99, 0.3], [1e-8, 1e-2], [0.0, 0.1], [0.0, 0.9], [False, True])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", RMSPROP_OPTIONS, ids=option_ids(RMSPROP_OPTIONS))
def test_rmsprop_fused_matches_numpy_path(harness, dtype, options):
    _fused_vs_numpy(harness, lambda ps: optim.RMSprop(ps, lr=0.01, **options), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_param_groups_and_lr_changes(harness, dtype):
    """Per-group options, and an lr changed between steps (a scheduler's way), reach the kernels."""

    def halve_lr(opt, t):
        for group in opt.param_groups:
            group["lr"] *= 0.5 if t % 2 == 0 else 1.0

    _fused_vs_numpy(
        harness,
        lambda ps: optim.SGD(
            [{"params": ps[:2], "nesterov": True}, {"params": ps[2:], "lr": 0.3}], lr=0.1, momentum=0.8
        ),
        dtype,
        after_step=halve_lr,
    )
    _fused_vs_numpy(
        harness,
        lambda ps: optim.AdamW([{"params": ps[:1], "amsgrad": True}, {"params": ps[1:], "weight_decay": 0.0}], lr=0.05),
        dtype,
        after_step=halve_lr,
    )


@pytest.mark.parametrize("make", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_as_on_the_numpy_path(harness, make, dtype):
    factories = {
        "sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
        "adam": lambda ps: optim.Adam(ps, weight_decay=0.1, amsgrad=True),
        "adamw": lambda ps: optim.AdamW(ps, amsgrad=True),
        "rmsprop": lambda ps: optim.RMSprop(ps, weight_decay=0.1, momentum=0.9, centered=True),
    }
    grads = _grads(dtype, steps=3)
    grads[1][0][0, :3] = [np.nan, np.inf, -np.inf]
    grads[2][1][4] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        _fused_vs_numpy(harness, factories[make], dtype, grads=grads)


# ----------------------------------------------------------------------------------------------
# Against PyTorch directly
# ----------------------------------------------------------------------------------------------
TORCH_CASES = {
    "sgd_nesterov_wd": (
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True),
    ),
    "sgd_dampening": (
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5, dampening=0.3),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5, dampening=0.3),
    ),
    "adam_amsgrad_wd": (
        lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
        lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
    ),
    "adamw": (
        lambda ps: optim.AdamW(ps, lr=0.02, betas=(0.6, 0.95), weight_decay=0.5),
        lambda ps: torch.optim.AdamW(ps, lr=0.02, betas=(0.6, 0.95), weight_decay=0.5),
    ),
    "rmsprop_centered_momentum": (
        lambda ps: optim.RMSprop(ps, lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5, centered=True),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5, centered=True),
    ),
}
TORCH_TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_fused_matches_torch(harness, case, dtype):
    make, tmake = TORCH_CASES[case]
    ours, _ = _params(dtype)
    ref = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in ours]
    opt, topt = make(ours), tmake(ref)
    for step_grads in _grads(dtype):
        for p, tp, g in zip(ours, ref, step_grads, strict=True):
            p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        for p, tp in zip(ours, ref, strict=True):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), **TORCH_TOL[dtype])
    assert len(harness.launches) == STEPS * _launches_per_step(opt, len(SHAPES))


def _launches_per_step(optimizer, params: int) -> int:
    """One multi-tensor launch per parameter group (the parameters of a group share a step count)."""
    return len(optimizer.param_groups)


# ----------------------------------------------------------------------------------------------
# Launch details, dispatch and state
# ----------------------------------------------------------------------------------------------
def test_grid_stride_loop_covers_more_than_the_grid(harness_libraries, monkeypatch):
    library = harness_libraries["launcher"]
    library.launches.clear()
    monkeypatch.setattr(kernels, "get_function", library.get_function)
    monkeypatch.setattr(kernels, "MAX_GRID", 2)  # 2 blocks of 256 threads for 3000 elements
    shapes = [(3000,)]
    for make in (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.AdamW(ps, amsgrad=True)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(optim_cuda, "can_fuse", optim_cuda.fusable)
            fused_params, numpy_params = _params(np.float32, shapes=shapes)
            fused, reference = make(fused_params), make(numpy_params)
            for step_grads in _grads(np.float32, steps=2, shapes=shapes):
                fused_params[0].grad = numpy_params[0].grad = step_grads[0]
                fused.step()
                mp.setattr(optim_cuda, "can_fuse", lambda *a: False)
                reference.step()
                mp.setattr(optim_cuda, "can_fuse", optim_cuda.fusable)
            _agree(fused_params[0].data, numpy_params[0].data, np.float32)
    assert [grid for _, grid, _ in library.launches] == [(2, 1, 1)] * 4


@pytest.mark.parametrize(
    ("make", "kernel"),
    [
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), "sgd"),
        (lambda ps: optim.Adam(ps, amsgrad=True), "adam"),
        (lambda ps: optim.AdamW(ps), "adam"),
        (lambda ps: optim.RMSprop(ps, momentum=0.5, centered=True), "rmsprop"),
    ],
    ids=["sgd", "adam", "adamw", "rmsprop"],
)
def test_one_fused_launch_per_step(harness, make, kernel):
    params, _ = _params(np.float32, shapes=SHAPES * 9)  # 36 parameters
    opt = make(params)
    for step_grads in _grads(np.float32, steps=3, shapes=SHAPES * 9):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g
        opt.step()
    names = [name for name, _, _ in harness.launches]
    assert names == [f"{kernel}_multi_update_kernel<float>"] * 3


def test_numpy_parameters_take_the_numpy_path(harness_libraries, monkeypatch):
    """Without a GPU array nothing is launched (can_fuse is the real one here)."""
    library = harness_libraries["launcher"]
    library.launches.clear()
    monkeypatch.setattr(kernels, "get_function", library.get_function)
    p = Parameter(np.ones(4, np.float32))
    p.grad = np.ones(4, np.float32)
    opt = optim.SGD([p], lr=0.5, momentum=0.9)
    opt.step()
    assert library.launches == []
    assert not optim_cuda.can_fuse(p.data, p.grad)
    np.testing.assert_array_equal(p.data, np.full(4, 0.5, np.float32))


@pytest.mark.parametrize(
    "case", ["float16", "strided_param", "strided_grad", "float64_grad", "state_of_other_dtype", "strided_state"]
)
def test_layouts_the_kernels_cannot_take_fall_back_to_the_numpy_path(harness, case):
    rng = np.random.default_rng(3)
    data = rng.standard_normal((6, 8))
    grad = rng.standard_normal((6, 8))
    dtype = np.float16 if case == "float16" else np.float32
    p = Parameter(data.astype(dtype))
    q = Parameter(data.astype(dtype))
    if case == "strided_param":
        p.data = np.ascontiguousarray(p.data.T).T
        assert not p.data.flags.c_contiguous
    p.grad = grad.astype(np.float64 if case == "float64_grad" else dtype)
    if case == "strided_grad":
        p.grad = np.asfortranarray(p.grad)
    q.grad = p.grad.copy()
    opt, reference = optim.Adam([p], amsgrad=True), optim.Adam([q], amsgrad=True)
    if case in ("state_of_other_dtype", "strided_state"):
        opt.step()
        reference.step()
        harness.launches.clear()
        state = opt.state[p]
        if case == "state_of_other_dtype":
            state["exp_avg"] = state["exp_avg"].astype(np.float64)
            reference.state[q]["exp_avg"] = reference.state[q]["exp_avg"].astype(np.float64)
        else:
            state["exp_avg_sq"] = np.asfortranarray(state["exp_avg_sq"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optim_cuda, "can_fuse", lambda *a: False)
        reference.step()
    opt.step()
    assert harness.launches == []
    np.testing.assert_array_equal(p.data, q.data)


def test_empty_parameter_launches_nothing_and_keeps_state(harness):
    p = Parameter(np.zeros((0, 3), np.float32))
    p.grad = np.zeros((0, 3), np.float32)
    sgd, adam = optim.SGD([p], lr=0.1, momentum=0.9), optim.Adam([p], amsgrad=True)
    sgd.step()
    adam.step()
    assert harness.launches == []
    assert sgd.state[p]["momentum_buffer"].shape == (0, 3)
    assert adam.state[p]["step"] == 1 and adam.state[p]["max_exp_avg_sq"].shape == (0, 3)


@pytest.mark.parametrize("make", ["sgd", "adamw"])
def test_state_dict_is_the_same_on_both_paths_and_resumes(harness, make):
    factory = {
        "sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        "adamw": lambda ps: optim.AdamW(ps, amsgrad=True),
    }[make]
    grads = _grads(np.float64, steps=4)
    fused, fused_params = _fused_vs_numpy(harness, factory, np.float64, grads=grads[:2])
    _, numpy_params = _params(np.float64)
    reference = factory(numpy_params)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optim_cuda, "can_fuse", lambda *a: False)
        for step_grads in grads[:2]:
            for q, g in zip(numpy_params, step_grads, strict=True):
                q.grad = g.copy()
            reference.step()
    sd, ref_sd = fused.state_dict(), reference.state_dict()
    assert sd.keys() == ref_sd.keys()
    for key in sd:
        np.testing.assert_array_equal(np.asarray(sd[key]), np.asarray(ref_sd[key]), err_msg=key)
    # A fresh fused optimiser resumes from the NumPy path's state and continues identically.
    resumed_params = [Parameter(q.data.copy()) for q in numpy_params]
    resumed = factory(resumed_params)
    resumed.load_state_dict(ref_sd)
    for step_grads in grads[2:]:
        for p, r, g in zip(fused_params, resumed_params, step_grads, strict=True):
            p.grad, r.grad = g.copy(), g.copy()
        fused.step()
        resumed.step()
        for p, r in zip(fused_params, resumed_params, strict=True):
            np.testing.assert_array_equal(p.data, r.data)


def test_launcher_needs_a_buffer_for_momentum():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="momentum buffer"):
        optim_cuda.sgd_batch(
            [(p, p, None)], lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=False, first_step=True
        )
