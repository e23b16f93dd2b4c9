"""The five layers of a small CNN, one at a time, on inputs small enough to check by hand.

For each layer: the forward output, then the backward pass (the gradient w.r.t. the input and the
parameter gradients) for a given output gradient. With PyTorch installed, its results print next to
ours and the script checks that they agree.

    python examples/tutorial_layers.py            # add --no-torch to skip the comparison
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import gpulayers as gl
from gpulayers import nn

try:
    import torch
except ImportError:  # the comparison is optional
    torch = None

np.set_printoptions(precision=4, suppress=True)


def show(label: str, ours, theirs=None, expected=None) -> bool:
    """Print our array (and PyTorch's); True when it matches the expected values and PyTorch."""
    ours = gl.to_numpy(ours)
    print(f"  {label}:\n    gpulayers: {np.array2string(ours, prefix='    gpulayers: ')}")
    if expected is not None and not np.allclose(ours, expected, rtol=1e-4, atol=1e-4):
        print(f"    EXPECTED:  {np.asarray(expected)}")
        return False
    if theirs is None:
        return True
    theirs = theirs.detach().numpy()
    ok = np.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    print(f"    PyTorch:   {np.array2string(theirs, prefix='    PyTorch:   ')}  {'(same)' if ok else '(DIFFERENT)'}")
    return ok


def conv2d(use_torch: bool) -> bool:
    print("Conv2d(1, 1, kernel_size=3, bias=False): every kernel row is [1, 0, -1] (a horizontal gradient)")
    x = np.array([[[[1, 2, 3, 0], [4, 5, 6, 0], [7, 8, 9, 0]]]], np.float32)  # (N=1, C=1, H=3, W=4)
    kernel = np.array([[[[1, 0, -1]] * 3]], np.float32)  # (out=1, in=1, 3, 3)
    layer = nn.Conv2d(1, 1, 3, bias=False)
    layer.weight.data = kernel.copy()
    y = layer(x)  # [[-6, 15]]: (1-3)+(4-6)+(7-9) and (2-0)+(5-0)+(8-0)
    dy = np.ones_like(y)
    dx = layer.backward(dy)
    ref = {}
    if use_torch:
        tx = torch.tensor(x, requires_grad=True)
        tl = torch.nn.Conv2d(1, 1, 3, bias=False)
        tl.weight.data = torch.tensor(kernel)
        ty = tl(tx)
        ty.backward(torch.tensor(dy))
        ref = {"y": ty, "dx": tx.grad, "dw": tl.weight.grad}
    oks = [show("output", y, ref.get("y"), [[[[-6, 15]]]]), show("grad input (dy = 1)", dx, ref.get("dx"))]
    oks.append(show("grad weight (the two windows, summed)", layer.weight.grad, ref.get("dw")))
    return all(oks)


def batch_norm(use_torch: bool) -> bool:
    print("BatchNorm1d(3), training mode: each column (1, 4, 7), (2, 5, 8), (3, 6, 9) -> mean 0, variance 1")
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32)
    layer = nn.BatchNorm1d(3)
    y = layer(x)  # rows -1.2247, 0, 1.2247: (v - mean) / sqrt(6 + eps), the biased variance being 6
    dy = np.eye(3, dtype=np.float32)  # column j's gradient falls on sample j
    dx = layer.backward(dy)
    ref = {}
    if use_torch:
        tx = torch.tensor(x, requires_grad=True)
        tl = torch.nn.BatchNorm1d(3)
        ty = tl(tx)
        ty.backward(torch.tensor(dy))
        ref = {"y": ty, "dx": tx.grad, "dg": tl.weight.grad, "db": tl.bias.grad, "rv": tl.running_var}
    return all(
        [
            show("output", y, ref.get("y"), np.repeat([[-1.2247], [0.0], [1.2247]], 3, axis=1)),
            show("grad input (dy = identity)", dx, ref.get("dx")),
            show("grad weight (gamma)", layer.weight.grad, ref.get("dg")),
            show("grad bias (beta)", layer.bias.grad, ref.get("db")),
            show("running_var (0.9 * 1 + 0.1 * unbiased 9)", layer.running_var, ref.get("rv")),
        ]
    )


def max_pool(use_torch: bool) -> bool:
    print("MaxPool2d(2): the largest value of each 2x2 window; backward routes the gradient to it")
    x = np.array([[[[1, 2, 3, 0], [4, 5, 6, 1], [7, 8, 9, 2], [3, 2, 1, 0]]]], np.float32)
    layer = nn.MaxPool2d(2)
    y = layer(x)  # [[5, 6], [8, 9]]
    dx = layer.backward(np.ones_like(y))
    ref = {}
    if use_torch:
        tx = torch.tensor(x, requires_grad=True)
        ty = torch.nn.MaxPool2d(2)(tx)
        ty.backward(torch.ones_like(ty))
        ref = {"y": ty, "dx": tx.grad}
    expected_dx = [[[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]]]
    return all(
        [
            show("output", y, ref.get("y"), [[[[5, 6], [8, 9]]]]),
            show("grad input (dy = 1)", dx, ref.get("dx"), expected_dx),
        ]
    )


def linear(use_torch: bool) -> bool:
    print("Linear(3, 2): y = x W^T + b")
    x = np.array([[1, 2, 3]], np.float32)
    w = np.array([[0.1, 0.2, 0.3], [-0.1, 0.0, 0.1]], np.float32)
    b = np.array([0.5, -0.5], np.float32)
    layer = nn.Linear(3, 2)
    layer.weight.data, layer.bias.data = w.copy(), b.copy()
    y = layer(x)  # [1.9, -0.3]
    dx = layer.backward(np.ones_like(y))  # W^T 1 = [0, 0.2, 0.4]
    ref = {}
    if use_torch:
        tx = torch.tensor(x, requires_grad=True)
        tl = torch.nn.Linear(3, 2)
        tl.weight.data, tl.bias.data = torch.tensor(w), torch.tensor(b)
        ty = tl(tx)
        ty.backward(torch.ones_like(ty))
        ref = {"y": ty, "dx": tx.grad, "dw": tl.weight.grad, "db": tl.bias.grad}
    return all(
        [
            show("output", y, ref.get("y"), [[1.9, -0.3]]),
            show("grad input (dy = 1)", dx, ref.get("dx"), [[0.0, 0.2, 0.4]]),
            show("grad weight (dy^T x)", layer.weight.grad, ref.get("dw")),
            show("grad bias (sum of dy)", layer.bias.grad, ref.get("db")),
        ]
    )


def dropout(use_torch: bool) -> bool:
    print("Dropout(0.5), training mode: zero each value with probability 0.5, scale the others by 2")
    gl.manual_seed(0)
    x = np.ones((2, 4), np.float32)
    layer = nn.Dropout(0.5)
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    show("output (a random mask; every value is 0 or 2)", y)
    show("grad input (the same mask and scale)", dx)
    ok = bool(np.isin(gl.to_numpy(y), [0.0, 2.0]).all() and np.array_equal(gl.to_numpy(dx), gl.to_numpy(y)))
    layer.eval()
    ok &= show("eval mode: identity", layer(x), expected=x)
    if use_torch:
        torch.manual_seed(0)
        tx = torch.ones(2, 4, requires_grad=True)
        ty = torch.nn.Dropout(0.5)(tx)
        ty.backward(torch.ones_like(ty))
        mask = np.array2string(ty.detach().numpy(), prefix=" " * 36)
        print(f"    PyTorch (its own random mask):  {mask}")
        ok &= bool(torch.isin(ty, torch.tensor([0.0, 2.0])).all()) and bool(torch.equal(tx.grad, ty.detach()))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch")
    args = parser.parse_args(argv)
    use_torch = torch is not None and not args.no_torch
    if not use_torch:
        print("(PyTorch not used: showing gpulayers' results only)\n")
    results = {}
    for step in (conv2d, batch_norm, max_pool, linear, dropout):
        results[step.__name__] = step(use_torch)
        print()
    bad = [name for name, ok in results.items() if not ok]
    print("all layers agree with PyTorch" if use_torch and not bad else "done" if not bad else f"MISMATCH: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
