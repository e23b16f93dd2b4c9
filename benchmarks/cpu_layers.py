"""Forward + backward of single layers on the CPU: gpulayers (NumPy) against PyTorch, same run.

    python benchmarks/cpu_layers.py [--repeats 15] [--layers gelu,conv_transpose2d,...]

For each layer both libraries get the same weights and input; they take turns, one untimed
call then ``--repeats`` timed forward+backward calls each, and the medians are compared. PyTorch
runs with one thread per core NumPy's BLAS may use (as ``cpu_train_step.py``). Prints one line
per layer: our median, PyTorch's median and the ratio (ours / PyTorch).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import gpulayers as gl
from gpulayers import nn

# name: (our layer, PyTorch's layer, input shape)
LAYERS = {
    "gelu": (lambda: nn.GELU(), lambda: torch.nn.GELU(), (64, 64, 16, 16)),
    "gelu_tanh": (lambda: nn.GELU("tanh"), lambda: torch.nn.GELU("tanh"), (64, 64, 16, 16)),
    "silu": (lambda: nn.SiLU(), lambda: torch.nn.SiLU(), (64, 64, 16, 16)),
    "softmax": (lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1), (256, 1000)),
    "layer_norm": (lambda: nn.LayerNorm(256), lambda: torch.nn.LayerNorm(256), (64, 128, 256)),
    "group_norm": (lambda: nn.GroupNorm(8, 64), lambda: torch.nn.GroupNorm(8, 64), (64, 64, 16, 16)),
    "conv_transpose2d": (
        lambda: nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
        lambda: torch.nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
        (32, 64, 16, 16),
    ),
}


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, repeats: int) -> tuple[float, float]:
    make, make_ref, shape = LAYERS[name]
    ours, ref = make(), make_ref()
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    if state:
        ours.load_state_dict(state)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)

    def step_ours():
        y = ours(x)
        ours.backward(np.ones_like(y))

    def step_torch():
        xt.grad = None
        ref.zero_grad()
        y = ref(xt)
        y.backward(torch.ones_like(y))

    times: dict[str, list[float]] = {"ours": [], "torch": []}
    for _ in range(2):  # turns
        for key, fn in (("ours", step_ours), ("torch", step_torch)):
            fn()  # untimed switch-in call
            times[key] += [_time(fn) for _ in range(repeats)]
    return statistics.median(times["ours"]), statistics.median(times["torch"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated names: " + ", ".join(LAYERS))
    args = parser.parse_args()
    names = [n for n in args.layers.split(",") if n]
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        parser.error(f"unknown layer(s) {unknown}; choose from {', '.join(LAYERS)}")
    gl.manual_seed(0)
    print(f"{'layer':18s} {'ours ms':>9s} {'torch ms':>9s} {'ratio':>6s}   (float32, forward + backward, median)")
    for name in names:
        ours, theirs = bench(name, args.repeats)
        print(f"{name:18s} {ours * 1e3:9.2f} {theirs * 1e3:9.2f} {ours / theirs:6.2f}")


if __name__ == "__main__":
    main()
