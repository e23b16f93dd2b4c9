"""GPU benchmark: conv2d forward+backward by implicit GEMM, by im2col + cuBLAS, and by cuDNN.

    python benchmarks/conv_algorithms.py [--repeat 30] [--warmup 5] [--json out.json]

For each shape, the three are timed in the same run with CUDA events (median ms of forward +
all gradients), PyTorch with TF32 off so that every library does full float32 arithmetic.
The table also shows each algorithm's peak memory in use during one forward+backward against
PyTorch's, and the largest difference from cuDNN's gradients. Shapes: the reference small
CNN's two convolutions at batch 64, the ResNet-20 stage shapes at batch 128, and the issue's
batch 256, 64->128 at 32x32.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _timing import finish, median_ms, require_gpu

# (batch, in, out, size, kernel, stride)
SHAPES = [
    (64, 1, 32, 28, 3, 1),
    (64, 32, 64, 14, 3, 1),
    (128, 16, 16, 32, 3, 1),
    (128, 32, 32, 16, 3, 1),
    (128, 64, 64, 8, 3, 1),
    (128, 16, 32, 32, 1, 2),
    (256, 64, 128, 32, 3, 1),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def _median_ms(fn, repeat: int, warmup: int, library: str) -> float:
    return median_ms(fn, repeat, warmup, library)[0]


def measure(shape, args, conv2d_cuda, cupy, torch) -> dict:
    """One shape: the three libraries' median ms, peak memory, and the largest difference."""
    batch, cin, cout, size, k, stride = shape
    pool = cupy.get_default_memory_pool()
    rng = np.random.default_rng(0)
    pad = k // 2
    x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
    w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    xg, wg, bg = cupy.asarray(x), cupy.asarray(w), cupy.asarray(b)
    osize = (size + 2 * pad - k) // stride + 1
    dy_host = rng.standard_normal((batch, cout, osize, osize)).astype(np.float32)
    dy = cupy.asarray(dy_host)
    opts = ((stride, stride), (pad, pad), (1, 1), 1)
    row = {"shape": list(shape)}
    grads = {}
    for algorithm in ("implicit_gemm", "im2col"):

        def step(algorithm=algorithm):
            _, cache = conv2d_cuda.conv2d_forward(xg, wg, bg, *opts, algorithm=algorithm)
            return conv2d_cuda.conv2d_backward(dy, cache)

        row[algorithm] = _median_ms(step, args.repeat, args.warmup, "cupy")
        cupy.cuda.Device().synchronize()
        pool.free_all_blocks()
        base = pool.used_bytes()
        y, cache = conv2d_cuda.conv2d_forward(xg, wg, bg, *opts, algorithm=algorithm)
        peak = pool.used_bytes() - base  # CuPy keeps no peak counter: sample after each phase
        out = conv2d_cuda.conv2d_backward(dy, cache)
        peak = max(peak, pool.used_bytes() - base)
        row[f"mem_{algorithm}"] = peak / 2**20
        grads[algorithm] = [cupy.asnumpy(a) for a in (y, *out)]
        del y, cache, out

    from gpulayers.ops import conv2d_igemm_cuda as igemm  # the three kernels one by one

    phases = {
        "fwd": lambda: igemm.conv2d_forward(xg, wg, bg, *opts),
        "dgrad": lambda: igemm.conv2d_backward_data(dy, wg, xg.shape, *opts),
        "wgrad": lambda: igemm.conv2d_backward_weight(xg, dy, wg.shape, *opts),
    }
    for phase, fn in phases.items():
        row[f"igemm_{phase}"] = _median_ms(fn, args.repeat, args.warmup, "cupy")

    xt = torch.tensor(x, device="cuda", requires_grad=True)
    wt = torch.tensor(w, device="cuda", requires_grad=True)
    bt = torch.tensor(b, device="cuda", requires_grad=True)
    dyt = torch.tensor(dy_host, device="cuda")

    def torch_step():
        xt.grad = wt.grad = bt.grad = None
        yt = torch.nn.functional.conv2d(xt, wt, bt, stride, pad)
        yt.backward(dyt)
        return yt

    row["cudnn"] = _median_ms(torch_step, args.repeat, args.warmup, "torch")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    yt = torch_step()
    torch.cuda.synchronize()
    row["mem_torch"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    ref = [t.detach().cpu().numpy() for t in (yt, xt.grad, wt.grad, bt.grad)]
    row["max_err"] = max(
        float(np.max(np.abs(a - r)) / max(1.0, float(np.max(np.abs(r)))))
        for alg in grads
        for a, r in zip(grads[alg], ref, strict=True)
    )
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    gl, cupy, torch = require_gpu("conv_algorithms")
    from gpulayers.ops import conv2d_cuda

    results = []
    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    print("conv2d forward+backward, float32 (ms, median); memory = peak in use during one fwd+bwd")
    header = f"{'shape':>28} {'implicit':>9} {'im2col':>8} {'cuDNN':>8} {'igemm/cuDNN':>11} {'im2col/cuDNN':>12}"
    print(header + f" {'mem igemm/im2col/torch (MiB)':>30} {'max err':>9}")
    for shape in SHAPES:
        row = measure(shape, args, conv2d_cuda, cupy, torch)
        results.append(row)
        batch, cin, cout, size, k, stride = shape
        label = f"{batch}x{cin}->{cout} @{size} k{k} s{stride}"
        print(
            f"{label:>28} {row['implicit_gemm']:9.3f} {row['im2col']:8.3f} {row['cudnn']:8.3f} "
            f"{row['implicit_gemm'] / row['cudnn']:10.2f}x {row['im2col'] / row['cudnn']:11.2f}x "
            f"{row['mem_implicit_gemm']:9.1f}/{row['mem_im2col']:7.1f}/{row['mem_torch']:7.1f}   {row['max_err']:9.2e}"
            f"   igemm fwd/dgrad/wgrad {row['igemm_fwd']:.3f}/{row['igemm_dgrad']:.3f}/{row['igemm_wgrad']:.3f}"
        )
        cupy.get_default_memory_pool().free_all_blocks()
    gm = lambda key: float(np.exp(np.mean([np.log(r[key] / r["cudnn"]) for r in results])))  # noqa: E731
    print(f"geometric mean vs cuDNN: implicit_gemm {gm('implicit_gemm'):.2f}x, im2col {gm('im2col'):.2f}x")
    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
