"""GPU benchmark: one training step, eager and as a CUDA graph, against PyTorch eager.

    python benchmarks/graph_step.py [--batch 64] [--repeat 50] [--models reference,resnet20] [--json out.json]

Each library trains the same model from the same weights in the same run (SGD with momentum,
cross-entropy, TF32 off): gpulayers eagerly, gpulayers through ``gl.cuda.graphed`` (one replay
per step) and PyTorch eagerly. Models: the reference CNN (batch of 1x28x28, dropout 0.5) and
ResNet-20 (3x32x32). Times are medians of CUDA-event-timed steps; host time per step (the call
itself, which returns before the GPU finishes) shows how much of an eager step is Python and
launch overhead. When the graph refuses a step, the line printed by ``graphed`` says why and
the graphed row is the eager fallback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _reference import build_models
from _timing import finish, median_ms, require_gpu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

MODELS = ("reference", "resnet20")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected some of {', '.join(MODELS)}")
    return args


def twin_models(name: str):
    """``(ours, theirs)`` on the CPU, ours loaded with PyTorch's initial weights."""
    if name == "reference":
        return build_models()
    import torch
    from torch_twins import torch_layers

    import gpulayers as gl

    torch.manual_seed(0)
    theirs = gl.models.resnet20(10, 3, layers=torch_layers)
    ours = gl.models.resnet20(10, 3)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def bench_model(name: str, args, gl, cupy, torch) -> dict:
    from gpulayers.training import train_step

    rng = np.random.default_rng(0)
    shape = (1, 28, 28) if name == "reference" else (3, 32, 32)
    x = rng.standard_normal((args.batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    results: dict = {"lines": []}
    for mode in ("eager", "graphed"):
        ours, _ = twin_models(name)
        ours.to("cuda").train()
        opt = gl.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
        step = train_step(ours, gl.nn.CrossEntropyLoss(), opt)
        xg, yg = cupy.asarray(x), cupy.asarray(y)
        if mode == "graphed":
            step = gl.cuda.graphed(step, xg, yg, optimizer=opt, model=ours, log=results["lines"].append)
        results[mode] = median_ms(lambda step=step, xg=xg, yg=yg: step(xg, yg), args.repeat, args.warmup, "cupy")
        if mode == "graphed":
            results["graph_captured"] = bool(step.captured)
            results["graph_reason"] = step.reason

    _, theirs = twin_models(name)
    theirs.to("cuda").train()
    topt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.tensor(x, device="cuda"), torch.tensor(y, device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def torch_step():
        topt.zero_grad()
        loss_fn(theirs(tx), ty).backward()
        topt.step()

    results["torch"] = median_ms(torch_step, args.repeat, args.warmup, "torch")
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    gl, cupy, torch = require_gpu("graph_step")
    print(f"device: {torch.cuda.get_device_name()}; batch {args.batch}, TF32 off")
    everything = {}
    for name in args.models:
        results = everything[name] = bench_model(name, args, gl, cupy, torch)
        print(f"{name}:")
        for line in results["lines"]:
            print(f"  {line}")
        for mode in ("eager", "graphed", "torch"):
            gpu, host = results[mode]
            ratio = gpu / results["torch"][0]
            print(f"  {mode:>8}: {gpu:7.3f} ms per step ({ratio:.2f}x torch eager), host {host:7.3f} ms")
        reason = results["graph_reason"] or "whole step in one graph"
        print(f"  graph captured: {results['graph_captured']} ({reason})")
    return finish(everything, args.json)


if __name__ == "__main__":
    sys.exit(main())
