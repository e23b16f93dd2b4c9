"""gpulayers.distributed: the process group and collectives, DistributedDataParallel, SyncBatchNorm,
DistributedSampler; several ranks under ``mpiexec -n 2`` (tests/mpi_worker.py), each run bounded by a timeout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import requires_gpu, requires_torch, torch

import gpulayers as gl
import gpulayers.distributed as dist
from gpulayers import nn
from gpulayers.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("mpi_worker.py")
TIMEOUT = 120  # seconds for one mpiexec run; a hang fails the test instead of the CI job


def _has_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


requires_mpi = pytest.mark.skipif(not _has_mpi4py(), reason="mpi4py is not installed (pip install mpi4py mpich)")


def mpiexec() -> str:
    """mpiexec next to the interpreter (pip's mpich puts it there), else on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    assert found, f"mpi4py is installed but no mpiexec next to {sys.executable} or on PATH (pip install mpich)"
    return found


def run_mpi(args: list[str], ranks: int = 2, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"  # 2 ranks on a small CI machine
    env.pop("GPULAYERS_DEVICE", None)
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)


@pytest.fixture
def group():
    """The one-process group (plain python), torn down after the test."""
    dist.init_process_group("mpi")
    yield
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# One process
# ------------------------------------------------------------------------------------------------
def test_distributed_defaults_before_init():
    assert not dist.is_initialized()
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 0)
    with pytest.raises(RuntimeError, match="all_reduce: call gpulayers.distributed.init_process_group"):
        dist.all_reduce(np.ones(2))
    with pytest.raises(RuntimeError, match="DistributedDataParallel: call .*init_process_group"):
        dist.DistributedDataParallel(nn.Linear(2, 2))


def test_distributed_world_of_one(group):
    assert dist.is_initialized() and dist.get_backend() == "mpi"
    assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
    a = np.arange(5.0)
    for op in ("sum", "mean", "max"):
        dist.all_reduce(a, op)
    dist.broadcast(a, src=0)
    dist.barrier()
    np.testing.assert_array_equal(a, np.arange(5.0))
    assert dist.all_gather_object({"x": 1}) == [{"x": 1}]
    with pytest.raises(RuntimeError, match="already initialized"):
        dist.init_process_group()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: dist.all_reduce([1.0, 2.0]), TypeError, "all_reduce: expected a NumPy or CuPy array"),
        (lambda: dist.all_reduce(np.ones(2), "min"), ValueError, "expected op 'sum', 'mean' or 'max', got 'min'"),
        (lambda: dist.all_reduce(np.ones(2, dtype=np.int64), "mean"), TypeError, "'mean' needs a floating"),
        (lambda: dist.all_reduce(np.ones(2, dtype=bool)), TypeError, "integer or floating array, got dtype bool"),
        (lambda: dist.broadcast(np.ones(2), src=1), ValueError, r"broadcast: expected src in \[0, 1\), got 1"),
    ],
)
def test_distributed_collectives_reject_bad_input(group, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_distributed_init_rejects_unknown_backend():
    with pytest.raises(ValueError, match="expected backend 'auto', 'mpi' or 'nccl', got 'gloo'"):
        dist.init_process_group("gloo")
    assert not dist.is_initialized()


def test_distributed_without_mpi4py(monkeypatch):
    from gpulayers.distributed import process_group  # noqa: PLC0415

    monkeypatch.setattr(process_group, "_import_mpi", lambda: None)
    for var in process_group._SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MPI_LOCALRANKID", "3")
    dist.init_process_group("mpi")
    try:
        assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 3)
        a = np.arange(3.0)
        dist.all_reduce(a, "mean")
        dist.broadcast(a)
        assert dist.all_gather_object(7) == [7]
        np.testing.assert_array_equal(a, np.arange(3.0))
    finally:
        dist.destroy_process_group()
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(RuntimeError, match="the launcher started 2 processes but mpi4py is not installed"):
        dist.init_process_group()
    assert not dist.is_initialized()


def test_distributed_nccl_refused_without_gpu():
    if gl.cuda_is_available():
        pytest.skip("a GPU is usable here")
    with pytest.raises(RuntimeError, match="backend 'nccl' needs a CUDA device and CuPy's NCCL"):
        dist.init_process_group("nccl")
    assert not dist.is_initialized()


def test_ddp_world_of_one_forwards_to_the_model(group):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ddp = dist.DistributedDataParallel(model)
    assert ddp.module is model and list(ddp.parameters()) == list(model.parameters())
    assert list(ddp.state_dict()) == list(model.state_dict())  # no "module." prefix
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    out = ddp(x)
    np.testing.assert_array_equal(out, model(x))
    grad_in = ddp.backward(np.ones_like(out))
    assert grad_in.shape == x.shape and model[0].weight.grad is not None
    ddp.eval()
    assert not model.training and not ddp.training
    assert ddp.load_state_dict(model.state_dict()) == ([], [])
    assert ddp.gradient_buckets() == [["2.bias", "2.weight", "1.bias", "1.weight", "0.bias", "0.weight"]]


def test_ddp_buckets_split_by_size_and_dtype(group):
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10).double())
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=30_000 / 2**20)
    # float64 layer first (reversed order), then the float32 weight (40 kB) alone, its bias with nothing else
    assert ddp.gradient_buckets() == [["1.bias", "1.weight"], ["0.bias"], ["0.weight"]]
    with pytest.raises(ValueError, match="bucket_cap_mb > 0"):
        dist.DistributedDataParallel(model, bucket_cap_mb=0)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 4)])
def test_sync_batchnorm_world_of_one_is_batchnorm(group, shape):
    x = np.random.default_rng(1).standard_normal(shape)
    bn = nn.BatchNorm1d(3) if len(shape) < 4 else nn.BatchNorm2d(3)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bn.double()))[0]
    assert isinstance(sync, nn.SyncBatchNorm) and sync.weight is bn.weight
    reference = (nn.BatchNorm1d(3) if len(shape) < 4 else nn.BatchNorm2d(3)).double()
    np.testing.assert_array_equal(sync(x), reference(x))
    g = np.random.default_rng(2).standard_normal(shape)
    np.testing.assert_array_equal(sync.backward(g), reference.backward(g))
    np.testing.assert_array_equal(sync.running_var, reference.running_var)


def test_sync_batchnorm_convert_rejects_a_group():
    with pytest.raises(ValueError, match="only the default process group"):
        nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(2), process_group=object())


@requires_torch
@pytest.mark.parametrize("n, replicas, drop_last", [(10, 3, False), (10, 3, True), (2, 4, False), (12, 4, True)])
def test_sampler_matches_pytorch_assignment(n, replicas, drop_last):
    from torch.utils.data import DistributedSampler as TorchSampler  # noqa: PLC0415

    for rank in range(replicas):
        ours = gl.data.DistributedSampler(range(n), replicas, rank, shuffle=False, drop_last=drop_last)
        theirs = TorchSampler(range(n), replicas, rank, shuffle=False, drop_last=drop_last)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


def test_sampler_shuffles_per_epoch_and_covers_the_data():
    shares = [gl.data.DistributedSampler(range(11), 3, r, seed=5) for r in range(3)]
    for s in shares:
        s.set_epoch(2)
    seen = np.concatenate([s.indices() for s in shares])
    assert len(seen) == 12 and set(seen.tolist()) == set(range(11))  # one index padded by wrap-around
    first = shares[0].indices()
    shares[0].set_epoch(3)
    assert not np.array_equal(first, shares[0].indices())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_replicas": 2, "rank": 2}, ValueError, r"expected rank in \[0, 2\), got 2"),
        ({"num_replicas": 0, "rank": 0}, ValueError, "expected num_replicas >= 1"),
        ({"num_replicas": 2, "rank": 1.0}, TypeError, "expected rank to be an int"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=f"DistributedSampler: {match}"):
        gl.data.DistributedSampler(range(4), **kwargs)


def test_loader_with_sampler():
    data = gl.data.ArrayDataset(np.zeros((7, 1, 2, 2), dtype=np.uint8), np.arange(7))
    sampler = gl.data.DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    loader = gl.data.DataLoader(data, 3, sampler=sampler)
    assert len(loader) == 2
    assert np.concatenate([y for _, y in loader]).tolist() == [1, 3, 5, 0]
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        gl.data.DataLoader(data, 3, shuffle=True, sampler=sampler)


# ------------------------------------------------------------------------------------------------
# Two ranks under mpiexec
# ------------------------------------------------------------------------------------------------
@requires_mpi
def test_mpi_two_ranks_equal_one_process(tmp_path):
    result = run_mpi([str(WORKER), "equivalence", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    sys.path.insert(0, str(WORKER.parent))
    try:
        import mpi_worker  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for batch_norm in (False, True):
        ref = mpi_worker.reference(batch_norm)
        for key, value in ref.items():
            name = f"{'sync' if batch_norm else 'plain'}/{key}"
            np.testing.assert_allclose(ranks[0][name], value, rtol=0, atol=1e-10, err_msg=name)
    for key in ranks[0].files:  # bitwise-identical models and collective results on both ranks
        if key != "seen":
            np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
    assert int(ranks[0]["buckets_0"]) > 1  # the small cap split the gradients
    assert ranks[0]["fit_loss"] > 0 and ranks[0]["fit_loss"] == ranks[1]["fit_loss"]  # over both ranks' examples
    np.testing.assert_array_equal(ranks[0]["sum"], 2 * np.arange(6.0).reshape(2, 3) + 1)
    np.testing.assert_array_equal(ranks[0]["mean"], np.arange(6.0, dtype=np.float32).reshape(3, 2).T + 0.5)
    np.testing.assert_array_equal(ranks[0]["max"], [1, 0])
    np.testing.assert_array_equal(ranks[0]["bcast"], np.ones((2, 2)))
    seen = np.concatenate([ranks[0]["seen"], ranks[1]["seen"]])
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 5 and sorted(seen.tolist()) == list(range(10))


@requires_mpi
def test_mpi_raising_rank_ends_the_job(tmp_path):
    result = run_mpi([str(WORKER), "fault", str(tmp_path)])
    assert result.returncode != 0
    assert "rank 1 of 2 failed with ValueError: boom on rank 1; aborting every rank" in result.stderr
    assert not (tmp_path / "rank0_passed").exists()


@requires_mpi
def test_mpi_mismatched_models_detected_at_construction(tmp_path):
    result = run_mpi([str(WORKER), "mismatch", str(tmp_path)])
    assert result.returncode != 0
    assert (
        "DistributedDataParallel: the models differ across ranks: rank 0 has parameter '0.weight' of shape (2, 4)"
        " (float32), rank 1 has parameter '0.weight' of shape (2, 5)" in result.stderr
    )
    assert not list(tmp_path.glob("*_passed"))


@requires_mpi
def test_mpi_cli_trains_digits_then_resumes(tmp_path):
    common = ["-m", "gpulayers.train", "--distributed", "--no-progress", "--device", "cpu"]
    common += ["--checkpoint", str(tmp_path / "ck" / "run.npz"), "--metrics-json", str(tmp_path / "m.json")]
    first = run_mpi([*common, "--epochs", "3"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert out.count("distributed: 2 rank(s), mpi backend; batch 32 per rank, 64 per step in all") == 1
    assert out.count("final test accuracy") == 1 and out.count("epoch 3/3") == 1  # rank 0 alone prints
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["run.npz"]  # one checkpoint, no leftovers
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["test_accuracy"] >= 0.9  # 3 epochs of digits with a global batch of 64
    assert metrics["history"][-1]["train_accuracy"] >= 0.85  # over both ranks' examples
    state = load_checkpoint(tmp_path / "ck" / "run.npz")
    assert state["epoch"] == 3

    resumed = run_mpi([*common, "--epochs", "4", "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("resumed from") == 1 and "after epoch 3" in resumed.stdout
    assert "epoch 1/4" not in resumed.stdout and resumed.stdout.count("epoch 4/4") == 1
    history = json.loads((tmp_path / "m.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and history[:3] == metrics["history"]
    assert history[3]["test_accuracy"] >= 0.9


@requires_mpi
def test_mpi_cli_error_on_every_rank_exits_2(tmp_path):
    result = run_mpi(["-m", "gpulayers.train", "--distributed", "--data", "mnist", "--data-dir", str(tmp_path)])
    assert result.returncode == 2
    assert "error: MNIST:" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------
# NCCL (a lent GPU: one rank is still a real NCCL communicator)
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_gpu
def test_nccl_world_of_one():
    if not dist.is_nccl_available():
        pytest.skip("CuPy has no NCCL here (pip install nvidia-nccl-cu13)")
    import cupy as cp  # noqa: PLC0415

    dist.init_process_group("nccl")
    try:
        assert dist.get_backend() == "nccl"
        a = cp.arange(6, dtype=cp.float32).reshape(2, 3)
        for op in ("sum", "mean", "max"):
            dist.all_reduce(a, op)
        dist.all_reduce(a.T, "sum")  # non-contiguous
        b = cp.arange(4, dtype=cp.int64)
        dist.broadcast(b, src=0)
        dist.barrier()
        np.testing.assert_array_equal(a.get(), np.arange(6, dtype=np.float32).reshape(2, 3))
        np.testing.assert_array_equal(b.get(), np.arange(4))
        model = nn.Sequential(nn.Linear(3, 2)).to("cuda")
        ddp = dist.DistributedDataParallel(model)
        out = ddp(cp.ones((4, 3), dtype=cp.float32))
        ddp.backward(cp.ones_like(out))
        ddp.sync_gradients()
        assert model[0].weight.grad.shape == (2, 3)
    finally:
        dist.destroy_process_group()


def test_torch_oracle_present_for_sampler_tests():
    assert torch is None or hasattr(torch.utils.data, "DistributedSampler")
