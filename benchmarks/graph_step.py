"""GPU benchmark: one training step of the reference CNN, eager and as a CUDA graph, against PyTorch.

    python benchmarks/graph_step.py [--batch 64] [--repeat 50] [--json out.json]

Each library trains the reference CNN (batch 64 of 1x28x28, SGD with momentum, cross-entropy)
in the same run: gpulayers eagerly, gpulayers through ``gl.cuda.graphed`` (one replay per
step), and PyTorch eagerly (TF32 off). Times are medians of CUDA-event-timed steps; host time
per step (``time.perf_counter`` around the call, which returns before the GPU finishes) shows
how much of an eager step is Python and launch overhead. Dropout is kept at 0.5 unless the
graph refuses it, in which case the line printed by ``graphed`` says why and the graphed
column is the eager fallback.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from _reference import build_models
from _timing import median_ms


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import gpulayers as gl

    if not gl.cuda_is_available():
        sys.exit("graph_step: no usable CUDA device, nothing to measure")
    import cupy
    import torch

    from gpulayers.training import train_step

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    results = {}
    lines: list[str] = []
    for mode in ("eager", "graphed"):
        ours, _ = build_models()
        ours.to("cuda").train()
        opt = gl.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
        step = train_step(ours, gl.nn.CrossEntropyLoss(), opt)
        xg, yg = cupy.asarray(x), cupy.asarray(y)
        if mode == "graphed":
            step = gl.cuda.graphed(step, xg, yg, optimizer=opt, model=ours, log=lines.append)
        results[mode] = median_ms(lambda step=step, xg=xg, yg=yg: step(xg, yg), args.repeat, args.warmup, "cupy")
        if mode == "graphed":
            results["graph_captured"] = bool(step.captured)
            results["graph_reason"] = step.reason

    _, theirs = build_models()
    theirs.to("cuda").train()
    topt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.tensor(x, device="cuda"), torch.tensor(y, device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def torch_step():
        topt.zero_grad()
        loss = loss_fn(theirs(tx), ty)
        loss.backward()
        topt.step()

    results["torch"] = median_ms(torch_step, args.repeat, args.warmup, "torch")
    print(f"device: {torch.cuda.get_device_name()}; reference CNN, batch {args.batch}")
    for line in lines:
        print(line)
    for mode in ("eager", "graphed", "torch"):
        gpu, host = results[mode]
        ratio = gpu / results["torch"][0]
        print(f"  {mode:>8}: {gpu:7.3f} ms per step ({ratio:.2f}x torch eager), host {host:7.3f} ms")
    print(f"  graph captured: {results['graph_captured']} ({results['graph_reason'] or 'whole step in one graph'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
