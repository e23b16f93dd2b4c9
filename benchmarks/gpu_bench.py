"""GPU benchmark: gpulayers' CUDA conv2d / max_pool2d and one training step against PyTorch (cuDNN).

    python benchmarks/gpu_bench.py [--repeat 50] [--warmup 10] [--tf32] [--json out.json]

Everything is timed in the same run, with CUDA events around each call, after a warm-up
(which also compiles the kernels), alternating between the two libraries; medians are
compared. Cases:

* conv2d 3x3, padding 1, batch 128: 1->32 @28x28, 3->64 @32x32, 64->128 @16x16, 128->256 @8x8;
  forward, backward (all gradients) and both. Target: forward+backward <= 2x PyTorch.
* max_pool2d 2x2 on each conv's output; forward and backward, achieved GB/s against the
  measured device-to-device copy bandwidth. Target: forward+backward <= 1.2x PyTorch.
* one training step (forward, loss, backward, SGD momentum 0.9) of the reference small CNN
  at batch 64: Conv2d(1,32,3,p=1)-BN2d-ReLU-MaxPool2, Conv2d(32,64,3,p=1)-BN2d-ReLU-MaxPool2,
  Flatten, Linear(3136,128)-ReLU-Dropout(0.5), Linear(128,10). Target: <= 1.5x PyTorch.
  Peak GPU memory of a step: CuPy memory-pool bytes in use vs torch.cuda.max_memory_allocated.

Precision: gpulayers' GEMMs run in full float32 unless CuPy's ``CUPY_TF32=1`` is set, while
PyTorch's cuDNN convolutions default to TF32. By default PyTorch is therefore run with TF32
off (the same arithmetic), and the conv table also shows PyTorch with its defaults.
``--tf32`` turns TF32 on for both libraries instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import numpy as np
from _reference import build_models
from _timing import require_gpu

TARGETS = {"conv2d": 2.0, "max_pool2d": 1.2, "train_step": 1.5}
CONV_SHAPES = [(1, 32, 28), (3, 64, 32), (64, 128, 16), (128, 256, 8)]  # (in, out, size)
BATCH = 128
TRAIN_BATCH = 64


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="timed iterations per case (median reported)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in both libraries")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


class Timer:
    """Median milliseconds of a callable, measured with CUDA events of one library."""

    def __init__(self, library: str):
        self.library = library

    def once(self, fn) -> float:
        if self.library == "cupy":
            import cupy

            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return cupy.cuda.get_elapsed_time(start, end)
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def compare(ours, theirs, repeat: int, warmup: int) -> tuple[float, float]:
    """Median ms of ``ours`` (CuPy events) and ``theirs`` (torch events), interleaved."""
    t_ours, t_theirs = Timer("cupy"), Timer("torch")
    for _ in range(warmup):
        ours()
        theirs()
    a, b = [], []
    for _ in range(repeat):
        a.append(t_ours.once(ours))
        b.append(t_theirs.once(theirs))
    return statistics.median(a), statistics.median(b)


def bench_conv(args, results):
    """conv2d at the four shapes, ours vs PyTorch (TF32 as chosen), plus PyTorch's defaults."""
    print(f"\nconv2d 3x3 p=1, batch {BATCH} (ms, median of {args.repeat}; torch TF32 {'on' if args.tf32 else 'off'})")
    print(f"{'shape':>18} {'fwd':>14} {'bwd':>14} {'fwd+bwd':>22} {'ratio':>6} {'torch default':>14} {'max err':>9}")
    rng = np.random.default_rng(0)
    for cin, cout, size in CONV_SHAPES:
        results["conv2d"].append(conv_case(args, rng, cin, cout, size))
    results["conv2d"].append(conv_case(args, rng, 64, 128, 32, batch=256))  # the large case


def conv_case(args, rng, cin: int, cout: int, size: int, batch: int = BATCH) -> dict:
    import cupy
    import torch

    from gpulayers import functional as F

    x_np = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
    w_np = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
    b_np = rng.standard_normal(cout).astype(np.float32)
    dy_np = rng.standard_normal((batch, cout, size, size)).astype(np.float32)
    x, w, b, dy = (cupy.asarray(a) for a in (x_np, w_np, b_np, dy_np))
    xt, wt, bt = (torch.tensor(a, device="cuda", requires_grad=True) for a in (x_np, w_np, b_np))
    dyt = torch.tensor(dy_np, device="cuda")

    state = {}

    def ours_fwd():
        state["y"], state["cache"] = F.conv2d_forward(x, w, b, 1, 1, 1, 1)

    def ours_bwd():
        F.conv2d_backward(dy, state["cache"])

    def ours_both():
        ours_fwd()
        ours_bwd()

    def torch_fwd():
        state["yt"] = torch.nn.functional.conv2d(xt, wt, bt, padding=1)

    def torch_bwd():
        torch.autograd.grad(state["yt"], (xt, wt, bt), dyt, retain_graph=True)

    def torch_both():
        torch_fwd()
        torch.autograd.grad(state["yt"], (xt, wt, bt), dyt)

    ours_fwd()
    torch_fwd()
    err = float(abs(state["y"] - cupy.asarray(state["yt"].detach())).max())
    f_o, f_t = compare(ours_fwd, torch_fwd, args.repeat, args.warmup)
    torch_fwd()
    b_o, b_t = compare(ours_bwd, torch_bwd, args.repeat, args.warmup)
    a_o, a_t = compare(ours_both, torch_both, args.repeat, args.warmup)
    default_t = None
    if not args.tf32:  # PyTorch as shipped (TF32 convolutions)
        torch.backends.cudnn.allow_tf32 = True
        _, default_t = compare(ours_both, torch_both, args.repeat, args.warmup)
        torch.backends.cudnn.allow_tf32 = False
    ratio = a_o / a_t
    label = f"{cin}->{cout} @{size}x{size}" + ("" if batch == BATCH else f" n{batch}")
    default = f"{default_t:.3f} ({a_o / default_t:.2f}x)" if default_t else "-"
    print(
        f"{label:>18} {f_o:6.3f}/{f_t:6.3f} {b_o:6.3f}/{b_t:6.3f} {a_o:10.3f}/{a_t:10.3f} "
        f"{ratio:5.2f}x {default:>14} {err:9.2e}"
    )
    return {"shape": label, "ours_ms": a_o, "torch_ms": a_t, "ratio": ratio, "fwd": [f_o, f_t], "bwd": [b_o, b_t]}


def copy_bandwidth(args) -> float:
    """Device-to-device copy bandwidth (GB/s, bytes read + written) of a 1 GiB buffer."""
    import cupy

    src = cupy.ones(2**28, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    timer = Timer("cupy")
    for _ in range(3):
        cupy.copyto(dst, src)
    ms = statistics.median(timer.once(lambda: cupy.copyto(dst, src)) for _ in range(max(5, args.repeat // 5)))
    return 2 * 2**30 / (ms * 1e-3) / 1e9


def bench_max_pool(args, results):
    """2x2 max-pool of each conv shape's output, with achieved bandwidth."""
    bandwidth = copy_bandwidth(args)
    print(f"\nmax_pool2d 2x2, batch {BATCH} (ms; device-to-device copy: {bandwidth:.0f} GB/s)")
    print(f"{'input':>20} {'fwd':>14} {'bwd':>14} {'fwd+bwd':>16} {'ratio':>6} {'fwd GB/s':>14} {'bwd GB/s':>14}")
    rng = np.random.default_rng(1)
    for _, channels, size in CONV_SHAPES:
        results["max_pool2d"].append(pool_case(args, rng, channels, size, bandwidth))


def pool_case(args, rng, channels: int, size: int, bandwidth: float) -> dict:
    import cupy
    import torch

    from gpulayers import functional as F

    x_np = rng.standard_normal((BATCH, channels, size, size)).astype(np.float32)
    dy_np = rng.standard_normal((BATCH, channels, size // 2, size // 2)).astype(np.float32)
    x, dy = cupy.asarray(x_np), cupy.asarray(dy_np)
    xt = torch.tensor(x_np, device="cuda", requires_grad=True)
    dyt = torch.tensor(dy_np, device="cuda")
    state = {}

    def ours_fwd():
        state["y"], state["cache"] = F.max_pool2d_forward(x, 2)

    def ours_bwd():
        F.max_pool2d_backward(dy, state["cache"])

    def ours_both():
        ours_fwd()
        ours_bwd()

    def torch_fwd():
        state["yt"] = torch.nn.functional.max_pool2d(xt, 2)

    def torch_bwd():
        torch.autograd.grad(state["yt"], xt, dyt, retain_graph=True)

    def torch_both():
        torch_fwd()
        torch.autograd.grad(state["yt"], xt, dyt)

    ours_fwd()
    torch_fwd()
    assert bool((state["y"] == cupy.asarray(state["yt"].detach())).all()), "max_pool2d outputs differ"
    f_o, f_t = compare(ours_fwd, torch_fwd, args.repeat, args.warmup)
    torch_fwd()
    b_o, b_t = compare(ours_bwd, torch_bwd, args.repeat, args.warmup)
    a_o, a_t = compare(ours_both, torch_both, args.repeat, args.warmup)
    out_bytes = dy.nbytes
    fwd_bytes = x.nbytes + out_bytes + out_bytes  # read x; write y and the int32 argmax
    bwd_bytes = out_bytes + out_bytes + x.nbytes  # read dy and argmax; write dx
    fwd_gbs, bwd_gbs = fwd_bytes / (f_o * 1e-3) / 1e9, bwd_bytes / (b_o * 1e-3) / 1e9
    label = f"{channels}x{size}x{size}"
    print(
        f"{label:>20} {f_o:6.3f}/{f_t:6.3f} {b_o:6.3f}/{b_t:6.3f} {a_o:7.3f}/{a_t:7.3f} {a_o / a_t:5.2f}x "
        f"{fwd_gbs:6.0f} ({fwd_gbs / bandwidth:4.0%}) {bwd_gbs:6.0f} ({bwd_gbs / bandwidth:4.0%})"
    )
    return {
        "shape": label,
        "ours_ms": a_o,
        "torch_ms": a_t,
        "ratio": a_o / a_t,
        "fwd_gbs": fwd_gbs,
        "bwd_gbs": bwd_gbs,
        "copy_gbs": bandwidth,
    }


class PeakMemory:
    """Peak bytes in use in CuPy's memory pool while active (a CuPy memory hook)."""

    def __init__(self):
        import cupy

        class Hook(cupy.cuda.MemoryHook):
            name = "gpulayers_peak"

            def __init__(self, start: int):
                self.used = self.peak = start

            def malloc_postprocess(self, **kwargs):
                self.used += kwargs["mem_size"]
                self.peak = max(self.peak, self.used)

            def free_postprocess(self, **kwargs):
                self.used -= kwargs["mem_size"]

        self.hook = Hook(cupy.get_default_memory_pool().used_bytes())

    def __enter__(self):
        self.hook.__enter__()
        return self

    def __exit__(self, *exc):
        return self.hook.__exit__(*exc)

    @property
    def peak(self) -> int:
        return self.hook.peak


def bench_train_step(args, results):
    import cupy
    import torch

    from gpulayers import nn, optim

    ours, theirs = build_models()
    ours, theirs = ours.to("cuda"), theirs.cuda()
    rng = np.random.default_rng(2)
    x_np = rng.standard_normal((TRAIN_BATCH, 1, 28, 28)).astype(np.float32)
    y_np = rng.integers(0, 10, TRAIN_BATCH).astype(np.int64)
    x, y = cupy.asarray(x_np), cupy.asarray(y_np)
    xt, yt = torch.tensor(x_np, device="cuda"), torch.tensor(y_np, device="cuda")
    opt = optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    criterion, criterion_t = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    def ours_step():
        opt.zero_grad()
        loss = criterion(ours(x), y)  # a 0-d array on the device: no host sync in the step
        ours.backward(criterion.backward())
        opt.step()
        return loss

    def torch_step():
        opt_t.zero_grad()
        loss = criterion_t(theirs(xt), yt)
        loss.backward()
        opt_t.step()
        return loss  # no sync either

    first = float(ours_step()), torch_step().item()
    ms_o, ms_t = compare(ours_step, torch_step, args.repeat, args.warmup)

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base_t = torch.cuda.memory_allocated()
    with PeakMemory() as peak:
        ours_step()
        cupy.cuda.Device().synchronize()
    torch_step()
    torch.cuda.synchronize()
    mem_o, mem_t = peak.peak, torch.cuda.max_memory_allocated()
    host_ms, gpu_ms = host_and_gpu_ms(ours_step, args.repeat)
    print(f"\ntraining step, reference small CNN, batch {TRAIN_BATCH} (first losses {first[0]:.4f} / {first[1]:.4f})")
    print(f"  time: {ms_o:.3f} ms vs torch {ms_t:.3f} ms -> {ms_o / ms_t:.2f}x")
    print(f"  ours per step: host (CPU) {host_ms:.3f} ms, GPU {gpu_ms:.3f} ms (host > GPU: launch-bound)")
    print(
        f"  peak GPU memory: {mem_o / 2**20:.1f} MiB (CuPy pool, in use) vs torch {mem_t / 2**20:.1f} MiB "
        f"(max_memory_allocated; {base_t / 2**20:.1f} MiB before the step)"
    )
    results["train_step"].append(
        {
            "ours_ms": ms_o,
            "torch_ms": ms_t,
            "ratio": ms_o / ms_t,
            "ours_host_ms": host_ms,
            "ours_gpu_ms": gpu_ms,
            "ours_peak_bytes": mem_o,
            "torch_peak_bytes": mem_t,
        }
    )


def host_and_gpu_ms(fn, repeat: int) -> tuple[float, float]:
    """Mean host (CPU) and GPU milliseconds per call of ``fn`` (``cupyx.profiler.benchmark``)."""
    from cupyx.profiler import benchmark

    result = benchmark(fn, n_repeat=repeat, n_warmup=3)
    return float(np.mean(result.cpu_times)) * 1e3, float(np.mean(result.gpu_times)) * 1e3


def summary(results) -> None:
    print("\ntargets (gpulayers / PyTorch, fwd+bwd or step time):")
    for key, limit in TARGETS.items():
        ratios = [r["ratio"] for r in results[key]]
        worst = max(ratios)
        verdict = "met" if worst <= limit else "MISSED"
        mean = float(np.exp(np.mean(np.log(ratios))))
        print(f"  {key:>10}: worst {worst:.2f}x, geometric mean {mean:.2f}x (target <= {limit}x): {verdict}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read by CuPy when it sets up cuBLAS
    _, cupy, torch = require_gpu("gpu_bench", bool(args.tf32))
    torch.backends.cudnn.benchmark = True
    print(f"device: {cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)['name'].decode()}")
    print(f"CuPy {cupy.__version__}, PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    results = {key: [] for key in TARGETS}
    bench_conv(args, results)
    bench_max_pool(args, results)
    bench_train_step(args, results)
    summary(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
