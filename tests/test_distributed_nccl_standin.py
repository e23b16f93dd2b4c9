"""The NCCL path of gpulayers.distributed on the CPU: CuPy is tests/cupy_standin.py (NumPy underneath,
real host pointers) and NCCL a recording communicator that reads and writes those pointers as NCCL
would, so the pointers, element counts, data types, reduction codes and the copy back of
non-contiguous arrays are all checked without a GPU."""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest
from cupy_standin import Device, install

import gpulayers.distributed as dist
from gpulayers import nn

_TYPES = {1: np.int8, 2: np.uint8, 3: np.int32, 4: np.uint32, 5: np.int64, 6: np.uint64, 7: np.float16,
          8: np.float32, 9: np.float64}  # fmt: skip


def _memory(ptr: int, count: int, code: int) -> np.ndarray:
    dtype = np.dtype(_TYPES[code])
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype)


class FakeCommunicator:
    """Another rank that holds ones (sum adds 1, max takes max(x, 1)) and broadcasts zeros."""

    calls: list = []

    def __init__(self, ndev, uid, rank):
        assert (ndev, uid, rank) == (1, "unique-id", 0)

    def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802 - NCCL's name
        FakeCommunicator.calls.append(("allReduce", count, dtype, op))
        assert send == recv and stream == 1234
        buf = _memory(recv, count, dtype)
        buf[...] = buf + 1 if op == 0 else np.maximum(buf, 1)

    def broadcast(self, send, recv, count, dtype, root, stream):
        FakeCommunicator.calls.append(("broadcast", count, dtype, root))
        _memory(recv, count, dtype)[...] = 0

    def destroy(self):
        FakeCommunicator.calls.append(("destroy",))


@pytest.fixture
def cp(monkeypatch):
    with install(None, monkeypatch) as module:
        nccl = types.SimpleNamespace(
            available=True, get_unique_id=lambda: "unique-id", NcclCommunicator=FakeCommunicator
        )
        for code, dtype in _TYPES.items():
            setattr(nccl, f"NCCL_{np.dtype(dtype).name.upper()}", code)
        nccl.NCCL_SUM, nccl.NCCL_MAX = 0, 2
        monkeypatch.setattr(module.cuda, "nccl", nccl, raising=False)
        monkeypatch.setattr(
            module.cuda, "get_current_stream", lambda: types.SimpleNamespace(ptr=1234, synchronize=lambda: None)
        )
        monkeypatch.setattr(Device, "use", lambda self: None, raising=False)
        monkeypatch.setitem(sys.modules, "cupy.cuda", module.cuda)
        FakeCommunicator.calls = []
        dist.init_process_group("nccl")
        yield module
        dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.float16])
def test_nccl_all_reduce_passes_pointer_count_and_type(cp, dtype):
    host = np.arange(12).reshape(3, 4).astype(dtype)
    a = cp.asarray(host)
    dist.all_reduce(a, "sum")
    np.testing.assert_array_equal(a.get(), host + 1)
    dist.all_reduce(a, "max")
    np.testing.assert_array_equal(a.get(), np.maximum(host + 1, 1))
    assert [c[:2] for c in FakeCommunicator.calls] == [("allReduce", 12)] * 2
    assert [c[3] for c in FakeCommunicator.calls] == [0, 2]
    assert _TYPES[FakeCommunicator.calls[0][2]] == dtype


def test_nccl_mean_divides_and_non_contiguous_is_copied_back(cp):
    host = np.arange(12.0).reshape(3, 4)
    a = cp.asarray(host)
    dist.all_reduce(a.T, "mean")  # a world of 1: the sum with the fake's ones, divided by 1
    np.testing.assert_array_equal(a.get(), host + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_nccl_broadcast_sends_every_byte(cp, dtype):
    a = cp.asarray(np.arange(1, 7).reshape(2, 3).astype(dtype))
    dist.broadcast(a, src=0)
    np.testing.assert_array_equal(a.get(), np.zeros((2, 3)))
    assert FakeCommunicator.calls == [("broadcast", 6 * np.dtype(dtype).itemsize, 2, 0)]


def test_nccl_group_runs_ddp(cp):
    assert dist.get_backend() == "nccl"
    model = nn.Sequential(nn.Linear(3, 2)).to("cuda")
    ddp = dist.DistributedDataParallel(model)
    out = ddp(cp.ones((4, 3), dtype=np.float32))
    ddp.backward(cp.ones_like(out))
    grads = [p.grad.get().copy() for p in model.parameters()]
    ddp.sync_gradients()  # world of 1: DDP skips the collective
    for p, g in zip(model.parameters(), grads, strict=True):
        np.testing.assert_array_equal(p.grad.get(), g)
