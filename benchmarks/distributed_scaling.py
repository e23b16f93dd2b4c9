"""Data-parallel scaling: all-reduce time against gradient bytes, images/s for 1 and 2 ranks, and the
same computed on paper for 8 GPUs with NCCL over NVLink.

    python benchmarks/distributed_scaling.py            # launches itself under mpiexec -n 1 and -n 2

Measured here: (1) the time of one in-place ``all_reduce`` (mean) of float32 buffers of 4 KiB .. 16 MiB
between 2 ranks (median of repeats); (2) training steps of the reference small CNN (MNIST-sized input,
``benchmarks/_reference.py``) under ``DistributedDataParallel``: images/s with 1 rank and with 2 ranks at
the same per-rank batch, and the share of the 2-rank step spent in the gradient all-reduce.
On paper: a ring all-reduce moves ``2 (k - 1) / k * bytes`` over each GPU's link, so
``t = latency + 2 (k - 1) / k * bytes / bus_bandwidth``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Published NVLink figures per GPU, one direction (bidirectional / 2), and NCCL's small-message latency.
NVLINK = {
    "H100 SXM (NVLink 4, 900 GB/s bidirectional)": 450e9,
    "A100 SXM (NVLink 3, 600 GB/s bidirectional)": 300e9,
}
RING_LATENCY_S = 20e-6  # assumed: a ring all-reduce of 8 GPUs costs ~20 us before bandwidth counts
H100_STEP_MS = 9.16  # the small CNN's training step at batch 64 on one H100 (benchmarks/RESULTS.md)


def worker(args) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from _reference import reference_cnn

    import gpulayers as gl
    import gpulayers.distributed as dist

    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    out: dict = {"world": world}
    if world > 1:
        sizes = [2**k for k in range(12, 25, 2)]  # bytes
        times = []
        for nbytes in sizes:
            buf = np.ones(nbytes // 4, dtype=np.float32)
            reps = []
            for _ in range(args.reps):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(buf, "mean")
                reps.append(time.perf_counter() - t0)
            times.append(float(np.median(reps)))
        out["allreduce"] = list(zip(sizes, times, strict=True))
    gl.manual_seed(0)
    model = dist.DistributedDataParallel(reference_cnn(gl.nn))
    out["grad_bytes"] = int(sum(p.size * p.dtype.itemsize for p in model.parameters()))
    out["buckets"] = len(model.gradient_buckets())
    opt = gl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = gl.nn.CrossEntropyLoss()
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=args.batch)
    comm = wait = 0.0
    sync = model.sync_gradients

    def timed_sync():  # the wait for the slower rank (a barrier), then the bucketed all-reduce itself
        nonlocal comm, wait
        t0 = time.perf_counter()
        if world > 1:
            dist.barrier()
        t1 = time.perf_counter()
        sync()
        wait += t1 - t0
        comm += time.perf_counter() - t1

    model.sync_gradients = timed_sync
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            dist.barrier()
            comm, wait, start = 0.0, 0.0, time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    dist.barrier()
    seconds = time.perf_counter() - start
    out["step_s"] = seconds / args.steps
    out["comm_s"] = comm / args.steps
    out["wait_s"] = wait / args.steps
    out["images_per_s"] = world * args.batch * args.steps / seconds
    if rank == 0:
        Path(args.out).write_text(json.dumps(out))


def launch(ranks: int, args, out: Path) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("error: no mpiexec next to the interpreter or on PATH (pip install mpi4py mpich)")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", "--out", str(out)]
    cmd += ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--reps", str(args.reps)]
    subprocess.run(cmd, check=True, env=env, timeout=600)
    return json.loads(out.read_text())


def report(one: dict, two: dict, args) -> None:
    print(f"all-reduce (mean, float32) between 2 ranks on this machine, median of {args.reps}:")
    print("| bytes | time | bandwidth |\n|---|---|---|")
    for nbytes, t in two["allreduce"]:
        print(f"| {nbytes / 2**10:,.0f} KiB | {t * 1e3:.3f} ms | {nbytes / t / 1e9:.2f} GB/s |")
    grad = two["grad_bytes"]
    print(f"\nreference small CNN: {grad / 2**20:.2f} MiB of float32 gradients in {two['buckets']} bucket(s)")
    print(
        f"per-rank batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, {args.threads} BLAS thread(s):"
    )
    print("| ranks | step | wait for the other rank | all-reduce | all-reduce share of step | images/s |")
    print("|---|---|---|---|---|---|")
    for r in (one, two):
        share = r["comm_s"] / r["step_s"]
        print(
            f"| {r['world']} | {r['step_s'] * 1e3:.1f} ms | {r['wait_s'] * 1e3:.2f} ms | {r['comm_s'] * 1e3:.2f} ms "
            f"| {share:.1%} | {r['images_per_s']:,.0f} |"
        )
    print(f"2 ranks / 1 rank images/s: {two['images_per_s'] / one['images_per_s']:.2f}x")
    k = 8
    print(
        f"\non paper, 8 GPUs, NCCL ring all-reduce of {grad / 2**20:.2f} MiB: "
        f"t = {RING_LATENCY_S * 1e6:.0f} us + 2*{k - 1}/{k} * bytes / bus bandwidth; "
        f"against the {H100_STEP_MS} ms step of one H100 at batch 64"
    )
    print("| link | bus bandwidth | all-reduce | share of step |\n|---|---|---|---|")
    for name, bw in NVLINK.items():
        t = RING_LATENCY_S + 2 * (k - 1) / k * grad / bw
        print(f"| {name} | {bw / 1e9:.0f} GB/s | {t * 1e6:.1f} us | {t / (H100_STEP_MS * 1e-3 + t):.2%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=32, help="per-rank batch (default 32)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=20, help="repeats of each all-reduce size")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per rank (default 1)")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        one = launch(1, args, Path(tmp) / "one.json")
        two = launch(2, args, Path(tmp) / "two.json")
    report(one, two, args)


if __name__ == "__main__":
    main()
