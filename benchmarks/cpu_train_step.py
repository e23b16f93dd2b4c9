"""One CPU training step of the reference small CNN: gpulayers (NumPy) against PyTorch, same run.

    python benchmarks/cpu_train_step.py [--steps 30] [--warmup 5] [--batch 64] [--threads N]

The model (MNIST-sized input 1x28x28):
    Conv2d(1,32,3,p=1)-BN2d-ReLU-MaxPool2, Conv2d(32,64,3,p=1)-BN2d-ReLU-MaxPool2, Flatten,
    Linear(3136,128)-ReLU-Dropout(0.5), Linear(128,10); CrossEntropyLoss; SGD(lr=0.01, momentum=0.9).

Both libraries start from the same weights and see the same batch. They take turns (so that
machine noise hits both alike): each turn is one untimed switch-in step and then ``--per-turn``
timed steps of one library; after a warm-up the medians over ``--steps`` timed steps per
library are compared. PyTorch runs with as many threads as NumPy's BLAS uses.

Why turns and not strict step-by-step alternation: both thread pools busy-wait after their
work (OpenBLAS for about 0.1 s after each call, OpenMP after each parallel region), so a step
that directly follows the other library's step runs against its spinning threads. Measured on
the 2-core box, strict alternation inflated PyTorch's step from ~30 ms to ~65 ms (and ours by
~20%), which flatters the ratio; the untimed switch-in step absorbs that.

The layer table times conv2d and max_pool2d alone the same way, each call being one forward
and its backward with one of the two timed: a backward always follows its own forward, as in
training, rather than reusing one graph (PyTorch) or a cache kept dozens of forwards earlier.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial

import numpy as np
from _reference import build_models

TARGET_RATIO = 1.5


def blas_threads() -> int:
    """Threads of NumPy's BLAS (threadpoolctl when installed, else the CPU count)."""
    try:
        from threadpoolctl import threadpool_info

        counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
        if counts:
            return int(max(counts))
    except ImportError:
        pass
    return os.cpu_count() or 1


def make_batch(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    return x, y


def step_functions(batch: int):
    """``(ours_step, torch_step)``: each runs one full training step and returns the loss."""
    import torch

    from gpulayers import nn, optim

    ours, theirs = build_models()
    ours.needs_input_grad = False  # the images need no gradient, as in PyTorch (x.requires_grad is False)
    x, y = make_batch(batch)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    crit_ours, crit_torch = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    opt_ours = optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    opt_torch = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)

    def ours_step() -> float:
        opt_ours.zero_grad()
        loss = crit_ours(ours(x), y)
        ours.backward(crit_ours.backward())
        opt_ours.step()
        return loss

    def torch_step() -> float:
        opt_torch.zero_grad()
        loss = crit_torch(theirs(tx), ty)
        loss.backward()
        opt_torch.step()
        return float(loss.detach())

    return ours_step, torch_step


def alternate(
    fns: dict, steps: int, warmup: int, per_turn: int = 3, self_timed: bool = False
) -> dict[str, list[float]]:
    """Seconds of ``steps`` timed calls per callable, the callables taking turns.

    Each callable first runs ``warmup`` untimed calls; then every turn is one untimed call (the
    switch-in, while the previous library's threads may still spin) and ``per_turn`` timed ones.
    With ``self_timed`` each call returns the seconds of the part it times itself.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    while min(len(t) for t in times.values()) < steps:
        for name, fn in fns.items():
            fn()
            for _ in range(min(per_turn, steps - len(times[name]))):
                start = time.perf_counter()
                seconds = fn()
                times[name].append(seconds if self_timed else time.perf_counter() - start)
    return times


def ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


# Each call is a forward and its backward, timing one of them: every backward gets a fresh forward,
# as in training (a module's forward keeps what its backward needs until then). Both return seconds.


def torch_pass(timed: str, layer, tx, tdy) -> float:
    """PyTorch: ``layer(tx)`` and the gradients of its input and parameters for ``tdy``."""
    import torch

    inputs = [tx, *layer.parameters()]
    start = time.perf_counter()
    with torch.enable_grad():
        ty = layer(tx)
    middle = time.perf_counter()
    torch.autograd.grad(ty, inputs, tdy)
    return middle - start if timed == "forward" else time.perf_counter() - middle


def ours_pass(timed: str, layer, x, dy) -> float:
    """gpulayers: ``layer(x)`` and ``layer.backward(dy)``."""
    layer.zero_grad()
    start = time.perf_counter()
    layer(x)
    middle = time.perf_counter()
    layer.backward(dy)
    return middle - start if timed == "forward" else time.perf_counter() - middle


def layer_functions(batch: int) -> list[tuple[str, dict]]:
    """conv2d and max_pool2d alone at the model's shapes; every gradient is computed in both."""
    import torch

    import gpulayers as gl
    from gpulayers import nn

    rng = np.random.default_rng(1)
    cases = []
    for name, ours_layer, torch_layer, shape in (
        ("conv2d 1->32 @28x28", nn.Conv2d(1, 32, 3, padding=1), torch.nn.Conv2d(1, 32, 3, padding=1), (1, 28)),
        ("conv2d 32->64 @14x14", nn.Conv2d(32, 64, 3, padding=1), torch.nn.Conv2d(32, 64, 3, padding=1), (32, 14)),
        ("max_pool2d 2 (32ch @28x28)", nn.MaxPool2d(2), torch.nn.MaxPool2d(2), (32, 28)),
        ("max_pool2d 2 (64ch @14x14)", nn.MaxPool2d(2), torch.nn.MaxPool2d(2), (64, 14)),
    ):
        channels, size = shape
        x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        with gl.no_grad():  # the output's shape, keeping nothing for a backward
            y = ours_layer(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        tdy = torch.from_numpy(dy)

        passes = {
            which: (partial(ours_pass, which, ours_layer, x, dy), partial(torch_pass, which, torch_layer, tx, tdy))
            for which in ("forward", "backward")
        }
        cases.append((name, passes))
    return cases


def memory_probe(library: str, batch: int) -> dict:
    """Peak RSS growth of one training step, in this (fresh) process.

    Models, optimiser and batch are built first; then the kernel's high-water mark is reset
    (``/proc/self/clear_refs``) and one step runs (the first, so it includes allocating the
    gradients and the momentum buffers, as a real first step does). Reported: VmHWM after the
    step minus VmRSS before it. For gpulayers, tracemalloc's peak of NumPy's allocations during
    the same step is given as a cross-check.

    Both probes import both libraries and build both models (so both run under the same glibc
    allocator settings, which ``import gpulayers`` tunes) and differ only in which step runs.
    """
    import torch

    torch.set_num_threads(blas_threads())
    ours_step, torch_step = step_functions(batch)
    fn = ours_step if library == "gpulayers" else torch_step
    gc.collect()

    def status(field: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/self/status")

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status("VmRSS")
    traced = None
    if library == "gpulayers":
        import tracemalloc

        tracemalloc.start()
        fn()
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        fn()
    return {"rss_growth": status("VmHWM") - before, "tracemalloc_peak": traced}


def measure_memory(batch: int) -> dict[str, dict] | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    out = {}
    for library in ("gpulayers", "torch"):
        cmd = [sys.executable, __file__, "--memory-probe", library, "--batch", str(batch)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[library] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per library (median over them)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: NumPy's BLAS threads)")
    parser.add_argument("--per-turn", type=int, default=3, help="timed steps per turn (after one untimed step)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-probe", choices=["gpulayers", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.batch)))
        return 0

    import torch

    threads = args.threads or blas_threads()
    torch.set_num_threads(threads)
    print(
        f"NumPy {np.__version__} (BLAS threads {blas_threads()}), PyTorch {torch.__version__} "
        f"(threads {torch.get_num_threads()}), batch {args.batch}, {args.steps} timed steps after "
        f"{args.warmup} warm-up, libraries taking turns of 1 untimed + {args.per_turn} timed steps"
    )
    tuning = {
        k: os.environ[k]
        for k in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        if k in os.environ
    }
    print(f"thread environment: {tuning or 'defaults'}")  # fmt: skip

    ours_step, torch_step = step_functions(args.batch)
    times = alternate({"gpulayers": ours_step, "torch": torch_step}, args.steps, args.warmup, args.per_turn)
    ours_ms, torch_ms = ms(times["gpulayers"]), ms(times["torch"])
    ratio = ours_ms / torch_ms
    print("\nTraining step (forward + backward + SGD), median ms")
    print(f"{'':12s} {'gpulayers':>10s} {'torch':>10s} {'ratio':>7s}")
    print(f"{'step':12s} {ours_ms:10.2f} {torch_ms:10.2f} {ratio:6.2f}x   (target <= {TARGET_RATIO:.1f}x: "
          f"{'met' if ratio <= TARGET_RATIO else 'MISSED'})")  # fmt: skip
    print(f"{'(min)':12s} {1e3 * min(times['gpulayers']):10.2f} {1e3 * min(times['torch']):10.2f}")

    print(f"\nLayers alone at the model's shapes (batch {args.batch}), median ms (same turns);")
    print("backward computes dx, dW, db in both")
    print(f"{'layer':28s} {'pass':9s} {'gpulayers':>10s} {'torch':>10s} {'ratio':>7s}")
    for name, passes in layer_functions(args.batch):
        for which, (ours_fn, torch_fn) in passes.items():
            t = alternate({"ours": ours_fn, "torch": torch_fn}, max(args.steps, 20), 3, args.per_turn, self_timed=True)
            o, p = ms(t["ours"]), ms(t["torch"])
            print(f"{name:28s} {which:9s} {o:10.3f} {p:10.3f} {o / p:6.2f}x")

    if not args.skip_memory:
        mem = measure_memory(args.batch)
        if mem is None:
            print("\nPeak memory: skipped (/proc/self/clear_refs is not available on this system)")
        else:
            print("\nPeak memory of one (the first) training step, fresh subprocess per library:")
            print("  method: VmHWM after the step minus VmRSS before it (high-water mark reset just before)")
            for library, res in mem.items():
                line = f"  {library:10s} {res['rss_growth'] / 2**20:8.1f} MiB RSS growth"
                if res["tracemalloc_peak"] is not None:
                    line += f"   (tracemalloc peak of NumPy allocations: {res['tracemalloc_peak'] / 2**20:.1f} MiB)"
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
