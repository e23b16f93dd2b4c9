"""Check a module's backward against central finite differences (in float64).

The scalar that is differentiated is ``L = sum(module(*inputs) * g)`` for a fixed random ``g``,
so ``dL/dx`` is exactly what ``module.backward(g)`` must return (a tuple with one gradient per
input for a module of several inputs) and ``dL/dparam`` what it must add into ``param.grad``.
Randomness (dropout masks) is replayed identically for every evaluation, the finite-difference
forwards run under ``no_grad``, and the module's state (parameters, running statistics,
gradients, saved forwards) is restored afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend
from ._checks import check_real
from .grad_mode import no_grad
from .nn.module import Module

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with the numerical one."""


def _numeric_grad(fn, arr, eps: float, xp) -> Any:
    """Central differences of the scalar ``fn()`` w.r.t. every element of ``arr`` (in place)."""
    if not arr.flags.c_contiguous:
        raise ValueError("gradcheck: arrays must be C-contiguous to be perturbed in place")
    grad = xp.zeros(arr.shape, dtype=np.float64)
    flat = arr.reshape(-1)  # a view: arr is C-contiguous
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i].item()
        flat[i] = orig + eps
        plus = fn()
        flat[i] = orig - eps
        minus = fn()
        flat[i] = orig
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def _compare(what: str, analytic, numeric, atol: float, rtol: float, xp) -> str | None:
    if analytic is None:
        analytic = xp.zeros_like(numeric)
    a = backend.to_numpy(analytic).astype(np.float64)
    n = backend.to_numpy(numeric)
    if a.shape != n.shape:
        return f"{what}: analytic gradient has shape {a.shape}, numerical {n.shape}"
    bad = ~np.isclose(a, n, atol=atol, rtol=rtol)
    if bad.any():
        idx = np.unravel_index(int(np.argmax(bad)), a.shape)
        return (
            f"{what}: {int(bad.sum())} of {a.size} entries differ; first at {idx}: "
            f"analytic {a[idx]:.8g} vs numerical {n[idx]:.8g} (max abs diff {np.abs(a - n).max():.3g})"
        )
    return None


def gradcheck(
    module: Module,
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    check_params: bool = True,
    raise_exception: bool = True,
) -> bool:
    """Compare ``module.backward`` with central differences.

    Args:
        module: the layer (or model) to check; its parameters must be float64.
        *inputs: the float64 input arrays (NumPy or CuPy), one per argument of ``forward``; with
            several, ``module.backward`` must return a tuple of their gradients, in order.
        eps: finite-difference step. Defaults to 1e-6.
        atol: absolute tolerance. Defaults to 1e-5.
        rtol: relative tolerance. Defaults to 1e-3.
        check_params: also check every parameter's gradient. Defaults to True.
        raise_exception: raise :class:`GradcheckError` on a mismatch instead of returning False.

    Returns:
        True when every gradient agrees.
    """
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck: expected a Module, got {type(module).__name__}")
    check_real("gradcheck", "eps", eps, above=0.0)
    check_real("gradcheck", "atol", atol, minimum=0.0)
    check_real("gradcheck", "rtol", rtol, minimum=0.0)
    name = type(module).__name__
    if not inputs:
        raise TypeError("gradcheck: expected at least one input array, e.g. gl.gradcheck(layer, x)")
    for i, x in enumerate(inputs):
        if not hasattr(x, "dtype") or np.dtype(x.dtype) != np.float64:
            raise TypeError(
                f"gradcheck: expected float64 input arrays, got {getattr(x, 'dtype', type(x).__name__)} for "
                f"input {i} (finite differences need float64)"
            )
    for pname, p in module.named_parameters():
        if np.dtype(p.dtype) != np.float64:
            raise TypeError(f"gradcheck: parameter {pname!r} of {name} is {p.dtype}; call module.double() first")
    xp = backend.get_array_module(inputs[0])
    xs = [xp.array(x, copy=True) for x in inputs]
    saved_state = module.state_dict()
    saved_grads = {n: (None if p.grad is None else p.grad.copy()) for n, p in module.named_parameters()}
    saved_forwards = [(m, list(m._saved), m._backward_ran) for m in module.modules()]
    rng_state = backend.get_rng_state()

    def forward():
        backend.set_rng_state(rng_state)  # the same dropout mask on every evaluation
        return module(*xs)

    try:
        with no_grad():
            y = forward()
        g = xp.asarray(np.random.default_rng(1234).standard_normal(y.shape))

        @no_grad()
        def loss() -> float:
            return float((forward() * g).sum())

        for p in module.parameters():
            p.grad = None
        forward()
        dx = module.backward(g.copy())
        dxs = dx if isinstance(dx, (tuple, list)) else (dx,)
        if len(dxs) != len(xs):
            raise GradcheckError(
                f"gradcheck: {name}.backward returned {len(dxs)} input gradient(s) for {len(xs)} input(s)"
            )
        analytic_params = {n: (None if p.grad is None else p.grad.copy()) for n, p in module.named_parameters()}

        problems = []
        for i, (x, d) in enumerate(zip(xs, dxs, strict=True)):
            what = f"{name} input" if len(xs) == 1 else f"{name} input {i}"
            msg = _compare(what, d, _numeric_grad(loss, x, eps, xp), atol, rtol, xp)
            if msg:
                problems.append(msg)
        if check_params:
            for pname, p in module.named_parameters():
                num = _numeric_grad(loss, p.data, eps, xp)
                msg = _compare(f"{name} parameter {pname!r}", analytic_params[pname], num, atol, rtol, xp)
                if msg:
                    problems.append(msg)
    finally:
        module.load_state_dict(saved_state)
        for pname, p in module.named_parameters():
            p.grad = saved_grads[pname]
        for m, stack, ran in saved_forwards:
            m._saved[:] = stack
            object.__setattr__(m, "_backward_ran", ran)
        backend.set_rng_state(rng_state)

    if problems:
        if raise_exception:
            raise GradcheckError("gradcheck failed:\n  " + "\n  ".join(problems))
        return False
    return True
