"""Programs that tests/test_distributed.py runs under ``mpiexec -n K`` (one per rank).

    python tests/mpi_worker.py SCENARIO OUTDIR

Each rank writes ``OUTDIR/rank<r>.npz``; the test compares the ranks with each other and with a
one-process reference computed by the same functions here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import gpulayers as gl
import gpulayers.distributed as dist
from gpulayers import nn, optim
from gpulayers.training import fit

BATCH, STEPS = 16, 4


def make_model(batch_norm: bool = False) -> nn.Sequential:
    """A small float64 CNN (no dropout, so ranks draw nothing at random)."""
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)]
    return nn.Sequential(*layers).double()


def batches(steps: int = STEPS, batch: int = BATCH):
    rng = np.random.default_rng(123)
    for _ in range(steps):
        yield rng.standard_normal((batch, 1, 8, 8)), rng.integers(0, 10, size=batch)


def train(model, rank: int, world: int, steps: int = STEPS) -> None:
    """SGD steps where rank r sees rows r::world of every global batch (mean loss per rank)."""
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for xb, yb in batches(steps):
        opt.zero_grad()
        out = model(xb[rank::world])
        loss_fn(out, yb[rank::world])
        model.backward(loss_fn.backward())
        opt.step()


def reference(batch_norm: bool) -> dict[str, np.ndarray]:
    """One process, whole batches: what every rank of ``equivalence`` must end with."""
    gl.manual_seed(0)
    model = make_model(batch_norm)
    train(model, 0, 1)
    return model.state_dict()


def scenario_equivalence(out: Path) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, np.ndarray] = {}
    for batch_norm in (False, True):
        gl.manual_seed(0 if rank == 0 else 100 + rank)  # other ranks start elsewhere: the broadcast must fix it
        model = make_model(batch_norm)
        if batch_norm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.001)  # several buckets
        train(ddp, rank, world)
        for key, value in ddp.state_dict().items():
            results[f"{'sync' if batch_norm else 'plain'}/{key}"] = value
        results[f"buckets_{int(batch_norm)}"] = np.array(len(ddp.gradient_buckets()))
    # collectives
    a = np.arange(6, dtype=np.float64).reshape(2, 3) + rank
    dist.all_reduce(a, "sum")
    m = np.arange(6, dtype=np.float32).reshape(3, 2).T + rank  # not contiguous
    dist.all_reduce(m, "mean")
    x = np.array([rank, -rank], dtype=np.int64)
    dist.all_reduce(x, "max")
    b = np.full((2, 2), rank, dtype=np.float32)
    dist.broadcast(b, src=world - 1)
    results.update({"sum": a, "mean": m, "max": x, "bcast": b})
    # sampler and loader: this rank's examples of epoch 1
    data = gl.data.ArrayDataset(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10))
    loader = gl.data.DataLoader(data, 2, sampler=gl.data.DistributedSampler(data, seed=3))
    loader.set_epoch(1)
    results["seen"] = np.concatenate([yb for _, yb in loader])
    # fit's training loss counts every rank's examples: the same history on every rank
    model = dist.DistributedDataParallel(make_model())
    images = gl.data.ArrayDataset(np.random.default_rng(rank).integers(0, 255, (12, 1, 8, 8), dtype=np.uint8),
                                  np.arange(12) % 10)  # fmt: skip
    loader = gl.data.DataLoader(images, 4, sampler=gl.data.DistributedSampler(images), dtype=np.float64)
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, loader, None, nn.CrossEntropyLoss(), optimizer, 1, progress=False, log=None)
    results["fit_loss"] = np.array(history[0]["train_loss"])
    dist.barrier()
    np.savez(out / f"rank{rank}.npz", **results)


def scenario_fault(out: Path) -> None:
    if dist.get_rank() == 1:
        raise ValueError("boom on rank 1")
    dist.all_reduce(np.ones(3), "sum")  # rank 1 never arrives
    (out / "rank0_passed").write_text("must not happen")


def scenario_mismatch(out: Path) -> None:
    model = nn.Sequential(nn.Linear(4 + dist.get_rank(), 2))
    dist.DistributedDataParallel(model)
    (out / f"rank{dist.get_rank()}_passed").write_text("must not happen")


if __name__ == "__main__":
    dist.init_process_group("mpi")
    {"equivalence": scenario_equivalence, "fault": scenario_fault, "mismatch": scenario_mismatch}[sys.argv[1]](
        Path(sys.argv[2])
    )
