"""Kernel launches, cuBLAS calls, copies, transfers and host syncs of one GPU training step, counted on the CPU.

The library's GPU code path runs on a NumPy stand-in for CuPy (``tests/cupy_standin.py``), its
custom kernels on the g++ host harness (``tests/kernel_harness``; ``--no-harness`` counts them
without running them). One step is forward, loss, backward and an SGD step with momentum
(``zero_grad`` first), after one warm-up step so that the optimiser state exists. Printed per
phase for the reference CNN (and ResNet-20 when ``gpulayers.models`` has it):

    PYTHONPATH=$PWD python benchmarks/gpu_launches.py [--batch 64] [--names] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

from _reference import reference_cnn  # noqa: E402
from cupy_standin import COUNTER, LAUNCHES, install  # noqa: E402

import gpulayers as gl  # noqa: E402

PHASES = ("forward", "loss", "backward", "optimizer")
COLUMNS = (
    ("launches", LAUNCHES),
    ("custom", ("kernel",)),
    ("cupy", ("launch",)),
    ("cublas", ("cublas",)),
    ("copies", ("copy",)),
    ("h2d", ("h2d",)),
    ("d2h", ("d2h",)),
    ("syncs", ("sync",)),
)


def models() -> dict:
    found = {"reference CNN": (lambda: reference_cnn(gl.nn), (1, 28, 28), 10)}
    resnet = getattr(gl.models, "resnet20", None)
    if resnet is not None:
        found["ResNet-20"] = (resnet, (3, 32, 32), 10)
    return found


def train_step(model, criterion, optimizer, x, y) -> None:
    """One step, each phase under its name in the counter."""
    with COUNTER.in_phase("optimizer"):
        optimizer.zero_grad()
    with COUNTER.in_phase("forward"):
        out = model(x)
    with COUNTER.in_phase("loss"):
        criterion(out, y)
    with COUNTER.in_phase("backward"):
        model.backward(criterion.backward())
    with COUNTER.in_phase("optimizer"):
        optimizer.step()


def count_step(build, image_shape, classes: int, batch: int, harness=None, monkeypatch=None) -> list:
    """The counter's events for one steady-state step of ``build()`` (a fresh model) at ``batch``."""
    with install(harness, monkeypatch) as cp:
        gl.manual_seed(0)
        model = build().to("cuda")
        model.train()
        model.needs_input_grad = False  # the images need no gradient (PyTorch's input data)
        rng = np.random.default_rng(0)
        x = cp.asarray(rng.standard_normal((batch, *image_shape)).astype(np.float32))
        y = cp.asarray(rng.integers(0, classes, batch).astype(np.int64))
        criterion = gl.nn.CrossEntropyLoss()
        optimizer = gl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        train_step(model, criterion, optimizer, x, y)  # warm-up: optimiser state, caches
        COUNTER.reset()
        train_step(model, criterion, optimizer, x, y)
        return list(COUNTER.events)


def table(events: list) -> list[dict]:
    rows = []
    for phase in (*PHASES, "total"):
        picked = [e for e in events if phase == "total" or e.phase == phase]
        row = {"phase": phase}
        for column, kinds in COLUMNS:
            row[column] = sum(1 for e in picked if e.kind in kinds)
        rows.append(row)
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    header = f"{'phase':<10}" + "".join(f"{c:>10}" for c, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['phase']:<10}" + "".join(f"{row[c]:>10}" for c, _ in COLUMNS))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--names", action="store_true", help="list the launches of each phase by name")
    parser.add_argument("--no-harness", action="store_true", help="count custom kernels without running them")
    parser.add_argument("--json", help="also write the tables to this JSON file")
    args = parser.parse_args(argv)
    harness = None
    if not args.no_harness:
        from kernel_harness import HarnessLibrary  # noqa: PLC0415

        harness = HarnessLibrary(Path(tempfile.gettempdir()) / "gpulayers_kernel_harness")
    results = {}
    for title, (build, shape, classes) in models().items():
        events = count_step(build, shape, classes, args.batch, harness)
        rows = table(events)
        results[title] = rows
        print_table(f"{title}, batch {args.batch}: one training step (SGD momentum)", rows)
        if args.names:
            for phase in PHASES:
                picked = [e for e in events if e.phase == phase and e.kind in (*LAUNCHES, "sync")]
                tally: dict[str, int] = {}
                for e in picked:
                    key = f"{e.kind}:{e.name}"
                    tally[key] = tally.get(key, 0) + 1
                print(f"  {phase}: " + ", ".join(f"{k} x{v}" for k, v in sorted(tally.items())))
    if args.json:
        Path(args.json).write_text(json.dumps({"batch": args.batch, "tables": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
