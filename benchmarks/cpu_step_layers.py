"""Per-layer CPU cost of one training step of the reference CNN, on one thread, both libraries.

    python benchmarks/cpu_step_layers.py [--repeats 20] [--batch 64]

Every layer of the reference CNN (see ``_reference.py``) runs forward on the activations the
previous layer produced, then backward on a fixed random gradient, in both libraries. Each call
is timed by the CPU time of the calling thread (``time.thread_time``), with NumPy's BLAS and
PyTorch both limited to one thread: the figures are the work each layer costs, and they stay
comparable when other processes load the machine (wall-clock step times do not). The two
libraries take turns layer by layer; medians of ``--repeats`` calls are printed with the ratio.
A timed gpulayers forward drops what it saved for backward (``Module.discard_saved``), as
PyTorch frees the graph of an output nobody keeps: repeated forwards of one layer in training
mode would otherwise pile up their saved arrays, which is not what a training step does.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy and PyTorch load their thread pools

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from _reference import build_models  # noqa: E402


def cpu_ms(fn, repeats: int, setup=None) -> float:
    """Median thread-CPU milliseconds of ``fn()`` over ``repeats`` calls (after one untimed call).

    ``setup()``, when given, runs untimed before every call.
    """
    if setup is not None:
        setup()
    fn()
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.thread_time_ns()
        fn()
        times.append((time.thread_time_ns() - start) / 1e6)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per layer and pass")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    ours, theirs = build_models()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    print(f"NumPy {np.__version__}, PyTorch {torch.__version__}, one thread each, batch {args.batch}, "
          f"median thread-CPU ms of {args.repeats} calls")  # fmt: skip
    print(f"{'layer':34s} {'pass':9s} {'gpulayers':>10s} {'torch':>10s} {'ratio':>7s}")
    totals = {"gpulayers": 0.0, "torch": 0.0}
    for index, (mine, twin) in enumerate(zip(list(ours), list(theirs), strict=True)):
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        y = mine(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        tdy = torch.from_numpy(dy)
        inputs = [tx, *twin.parameters()]

        def torch_forward(twin=twin, tx=tx):
            return twin(tx)

        def torch_backward(twin=twin, tx=tx, tdy=tdy, inputs=inputs):
            return torch.autograd.grad(twin(tx), inputs, tdy)

        def ours_forward(mine=mine, x=x):
            y = mine(x)
            mine.discard_saved()  # as PyTorch frees the graph of an output nobody keeps
            return y

        def ours_backward(mine=mine, x=x, dy=dy):
            mine.zero_grad()
            return mine.backward(dy)

        name = f"{index:2d} {twin!r}"[:34]
        for which, ours_fn, torch_fn in (
            ("forward", ours_forward, torch_forward),
            ("backward", ours_backward, torch_backward),
        ):
            # Each timed backward consumes the forward run (untimed) just before it.
            o = cpu_ms(ours_fn, args.repeats, setup=(lambda mine=mine, x=x: mine(x)) if which == "backward" else None)
            p = cpu_ms(torch_fn, args.repeats)
            if which == "backward":
                p -= cpu_ms(torch_forward, args.repeats)  # PyTorch's backward re-runs its forward
            totals["gpulayers"] += o
            totals["torch"] += p
            print(f"{name:34s} {which:9s} {o:10.3f} {p:10.3f} {o / max(p, 1e-6):6.2f}x")
        x = y
    o, p = totals["gpulayers"], totals["torch"]
    print(f"{'sum of the layers':34s} {'':9s} {o:10.3f} {p:10.3f} {o / p:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
