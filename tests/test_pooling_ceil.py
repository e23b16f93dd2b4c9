"""Pooling output geometry against PyTorch over a seeded grid, ``ceil_mode`` windows included.

With ``ceil_mode=True`` PyTorch accepts a window larger than the padded input, and windows that
run past it, as long as the last window starts inside the input or its left padding; the
average pool's divisor then counts the window clipped to the padded input (or, without
``count_include_pad``, the real pixels). Every configuration that PyTorch accepts must give its
output and input gradient; every one it refuses must be refused with a message naming the layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpulayers import nn

torch = pytest.importorskip("torch")


def _grid(seed: int, count: int, dilation: bool) -> list:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        k = tuple(int(v) for v in rng.integers(1, 5, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = tuple(int(rng.integers(0, ki // 2 + 1)) for ki in k)
        d = tuple(int(v) for v in rng.integers(1, 3, 2)) if dilation else (1, 1)
        hw = tuple(int(v) for v in rng.integers(1, 7, 2))
        cases.append((hw, k, s, p, d, bool(rng.integers(0, 2)), bool(rng.integers(0, 2))))
    # Always the cases that were once refused: a window wider than the whole (padded) input.
    cases += [
        ((1, 1), (2, 2), (2, 2), (0, 0), (1, 1), True, True),
        ((1, 3), (2, 4), (2, 3), (1, 2), (1, 1), True, False),
    ]
    return cases


def _id(case) -> str:
    hw, k, s, p, d, ceil, cip = case
    return f"in{hw}-k{k}-s{s}-p{p}-d{d}-ceil{int(ceil)}-cip{int(cip)}".replace(" ", "")


def _has_empty_window(hw, k, s, p, d, out_hw) -> bool:
    """Whether a dilated window has no tap inside the input (its output is -inf)."""
    for size, ki, si, pi, di, oi in zip(hw, k, s, p, d, out_hw, strict=True):
        taps = np.arange(oi)[:, None] * si - pi + np.arange(ki)[None, :] * di
        if not ((taps >= 0) & (taps < size)).any(axis=1).all():
            return True
    return False


def _max_pool_grad_reference(x, dy, k, s, p, d) -> np.ndarray:
    """Each window's gradient to its first maximum among the taps inside the input; none if no tap is."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, s, p, d
    dx = np.zeros_like(x)
    for n, c, i, j in np.ndindex(*dy.shape):
        taps = [
            (r, q)
            for r in range(i * sh - ph, i * sh - ph + kh * dh, dh)
            for q in range(j * sw - pw, j * sw - pw + kw * dw, dw)
            if 0 <= r < x.shape[2] and 0 <= q < x.shape[3]
        ]
        if taps:
            r, q = max(taps, key=lambda t: (x[n, c, t[0], t[1]], -taps.index(t)))
            dx[n, c, r, q] += dy[n, c, i, j]
    return dx


def _torch_run(fn, x, dy_seed, empty_window=None):
    xt = torch.tensor(x, requires_grad=True)
    try:
        yt = fn(xt)
    except RuntimeError:
        return None
    dy = np.random.default_rng(dy_seed).standard_normal(tuple(yt.shape))
    if empty_window is not None and empty_window(yt.shape[2:]):
        # PyTorch's CPU backward sends such a window's gradient to an index past the input
        # plane (into the next plane, or out of the tensor): the gradient there is 0 instead.
        return yt.detach().numpy(), None, dy
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy(), dy


MAX_CASES = _grid(1, 150, dilation=True)
AVG_CASES = _grid(2, 150, dilation=False)


def _check(layer, x, ref, grad_reference=None):
    if ref is None:
        with pytest.raises(ValueError, match=rf"{type(layer).__name__}: the window .* is larger than the padded input"):
            layer(x)
        return
    y_ref, dx_ref, dy = ref
    y = layer(x)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dx = layer.backward(dy)
    if dx_ref is None:
        dx_ref = grad_reference(x, dy)
    elif grad_reference is not None:  # the reference itself agrees with PyTorch where both apply
        np.testing.assert_allclose(grad_reference(x, dy), dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", MAX_CASES, ids=_id)
def test_max_pool2d_geometry_matches_torch(case):
    hw, k, s, p, d, ceil, _ = case
    x = np.random.default_rng(3).standard_normal((2, 2) + hw)
    ref = _torch_run(
        lambda t: torch.nn.functional.max_pool2d(t, k, s, p, d, ceil_mode=ceil),
        x,
        4,
        lambda out_hw: _has_empty_window(hw, k, s, p, d, out_hw),
    )
    reference = lambda x, dy: _max_pool_grad_reference(x, dy, k, s, p, d)  # noqa: E731
    _check(nn.MaxPool2d(k, s, p, d, ceil_mode=ceil), x, ref, reference)


@pytest.mark.parametrize("case", AVG_CASES, ids=_id)
def test_avg_pool2d_geometry_and_divisor_match_torch(case):
    hw, k, s, p, _, ceil, cip = case
    x = np.random.default_rng(5).standard_normal((2, 2) + hw)
    ref = _torch_run(lambda t: torch.nn.functional.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=cip), x, 6)
    _check(nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip), x, ref)


def test_grid_covers_windows_past_the_padded_input():
    """The grid really holds accepted ceil-mode windows that run past the padded input."""

    def past(case):
        hw, k, s, p, d, ceil, _ = case
        if not ceil:
            return False
        for size, ki, si, pi, di in zip(hw, k, s, p, d, strict=True):
            span, num = di * (ki - 1) + 1, size + 2 * pi - di * (ki - 1) - 1
            out = -(-num // si) + 1
            if out >= 1 and (out - 1) * si >= size + pi:
                out -= 1
            if out >= 1 and (out - 1) * si + span > size + 2 * pi:
                return True
        return False

    assert sum(map(past, MAX_CASES)) >= 10 and sum(map(past, AVG_CASES)) >= 10


@pytest.mark.parametrize("cls", [nn.MaxPool2d, nn.AvgPool2d])
def test_ceil_mode_window_larger_than_a_one_pixel_input(cls):
    x = np.full((1, 1, 1, 1), 3.0, np.float32)
    y = cls(2, ceil_mode=True)(x)
    assert y.shape == (1, 1, 1, 1)
    want = getattr(torch.nn, cls.__name__)(2, ceil_mode=True)(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(y, want)
