"""The CPU thread pool (gl.set_num_threads): results bitwise the same for any thread count, and its settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import small_cnn

import gpulayers as gl
from gpulayers import nn, optim, threads
from gpulayers.ops import conv2d_cpu, linear


@pytest.fixture
def restore_threads():
    before = gl.get_num_threads()
    yield
    gl.set_num_threads(before)


def _train_steps(num_threads: int, steps: int = 2) -> list[np.ndarray]:
    """Parameters and input gradient after a few SGD steps of a small CNN with batch norm, on ``num_threads``."""
    gl.set_num_threads(num_threads)
    gl.manual_seed(3)
    model = small_cnn(image_size=12, width=8, hidden=16)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 1, 12, 12)).astype(np.float32)  # an odd batch: uneven blocks
    y = rng.integers(0, 10, size=37)
    dx = None
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y)
        dx = model.backward(loss_fn.backward())
        opt.step()
    return [p.data.copy() for p in model.parameters()] + [dx, model[1].running_var.copy()]


@pytest.mark.parametrize("num_threads", [2, 3])
def test_training_is_bitwise_the_same_on_one_and_several_threads(restore_threads, monkeypatch, num_threads):
    # Many blocks even at this small size: elementwise passes, convolutions and linear layers.
    monkeypatch.setattr(threads, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(conv2d_cpu, "COLUMN_BLOCK_BYTES", 8192)
    monkeypatch.setattr(linear, "BLOCK_MACS", 2048)
    one = _train_steps(1)
    several = _train_steps(num_threads)
    for a, b in zip(one, several, strict=True):
        np.testing.assert_array_equal(a, b)


def test_runs_are_bitwise_reproducible(restore_threads):
    for a, b in zip(_train_steps(2), _train_steps(2), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n,per_sample", [(64, 100352), (64, 1 << 22), (5, 8), (0, 8)])
def test_blocks_cover_the_batch_once(n, per_sample):
    blocks = threads.batch_blocks(n, per_sample)
    covered = [i for start, stop in blocks for i in range(start, stop)]
    assert covered == list(range(n))
    assert all(stop > start for start, stop in blocks)


def test_run_blocks_raises_a_worker_error(restore_threads):
    gl.set_num_threads(2)

    def fail(start, stop):
        if start > 0:
            raise ValueError("block failed")

    with pytest.raises(ValueError, match="block failed"):
        threads.run_blocks(fail, 64, threads.BLOCK_BYTES)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="set_num_threads: expected a positive int"):
        gl.set_num_threads(bad)


_INTERRUPT_STORM = """
import random, signal, numpy as np
from gpulayers import threads
threads.set_num_threads(2)
a = np.random.default_rng(0).standard_normal((64, 2000))
out = np.empty_like(a)
def block(start, stop):
    np.exp(a[start:stop], out=out[start:stop])
def interrupt(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)
rng = random.Random(0)
interrupted = 0
for _ in range(1000):
    try:
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 3e-4))
        for _ in range(20):
            threads.run_blocks(block, 64, 16000, block_bytes=64000)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except KeyboardInterrupt:
        interrupted += 1
threads.run_blocks(block, 64, 16000, block_bytes=64000)
np.testing.assert_array_equal(out, np.exp(a))
print("ok", interrupted)
"""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_interrupts_at_any_point_never_deadlock_the_pool():
    """A KeyboardInterrupt (here from a timer, at random points of a thousand parallel passes) must
    leave the pool usable and the interpreter able to exit: with concurrent.futures the interrupt
    could land inside its semaphore's ``with`` and leave the lock held, so that the next worker to
    finish blocked forever, and so did the exit."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", _INTERRUPT_STORM], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok "), out.stdout
    assert int(out.stdout.split()[1]) > 100  # the interrupts did land inside the passes


def test_cached_scratch_is_kept_per_key_within_a_byte_budget(monkeypatch):
    monkeypatch.setattr(threads, "CACHE_BYTES", 100)
    threads.clear_workspace()
    built = []

    def entry(name, nbytes):
        def build():
            built.append(name)
            return SimpleNamespace(nbytes=nbytes)

        return build

    a = threads.cached(("test", 1), entry("a", 40))
    assert threads.cached(("test", 1), entry("a again", 40)) is a
    b = threads.cached(("test", 2), entry("b", 40))
    threads.cached(("test", 1), entry("a again", 40))  # a is now the most recently used
    threads.cached(("test", 3), entry("c", 40))  # 120 bytes > 100: the least recently used (b) goes
    assert threads.cached(("test", 1), entry("a again", 40)) is a
    assert threads.cached(("test", 2), entry("b again", 40)) is not b
    big = threads.cached(("test", 4), entry("big", 500))  # over the budget on its own: not kept
    assert threads.cached(("test", 4), entry("big again", 500)) is not big
    assert threads.cached(("test", 1), entry("a still", 40)) is a  # and the others were left alone
    threads.clear_workspace()
    threads.cached(("test", 1), entry("after clear", 40))
    assert built == ["a", "b", "c", "b again", "big", "big again", "after clear"]


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"GPULAYERS_NUM_THREADS": "3"}, "3"),
        ({"GPULAYERS_NUM_THREADS": "", "OPENBLAS_NUM_THREADS": "1"}, "1"),
    ],
)
def test_thread_count_from_the_environment(env, expected):
    code = "import gpulayers as gl; print(gl.get_num_threads())"
    base = {k: v for k, v in __import__("os").environ.items() if not k.endswith("NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected


def test_bad_thread_count_in_the_environment_is_named():
    code = "import gpulayers as gl; gl.get_num_threads()"
    env = {**__import__("os").environ, "GPULAYERS_NUM_THREADS": "many"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "GPULAYERS_NUM_THREADS: expected a positive integer, got 'many'" in out.stderr


def test_workspace_is_reused_per_key_and_never_returned_by_an_op():
    a = threads.workspace("test.scratch", (3, 4), np.float32)
    assert np.shares_memory(threads.workspace("test.scratch", (3, 4), np.float32), a)
    assert not np.shares_memory(threads.workspace("test.scratch", (3, 4), np.float64), a)
    assert np.shares_memory(threads.workspace("test.scratch", (2, 2), np.float32), a)  # a smaller view
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    conv = nn.Conv2d(3, 4, 3)  # no padding: the column gradient's image is the input's own shape
    conv(x)
    dx1 = conv.backward(np.ones((2, 4, 3, 3), np.float32))
    keep = dx1.copy()
    conv(x)
    conv.backward(np.full((2, 4, 3, 3), 2.0, np.float32))
    np.testing.assert_array_equal(dx1, keep)  # the second backward did not write into the first's result


@pytest.mark.parametrize(
    "env,expected",
    [({"GPULAYERS_MALLOC_TUNING": "0"}, "False"), ({"MALLOC_ARENA_MAX": "2"}, "False")],
    ids=["turned-off", "user-tunes-glibc"],
)
def test_allocator_tuning_can_be_turned_off(env, expected):
    code = "import gpulayers.threads as t; print(t.tune_allocator())"
    base = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MALLOC_", "GPULAYERS_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected


def test_blocks_are_even_and_depend_only_on_the_sizes():
    sizes = [stop - start for start, stop in threads.batch_blocks(64, 100, 1000)]  # at most 10 samples a block
    assert sizes == [9, 9, 9, 9, 9, 9, 10]
    assert [stop - start for start, stop in threads.batch_blocks(10, 1, 4)] == [3, 3, 4]
    assert threads.batch_blocks(3, 10**9, 1) == [(0, 1), (1, 2), (2, 3)]  # at least one sample per block


def test_default_blocks_are_capped_in_bytes_and_at_least_min_blocks():
    per_block = threads.BLOCK_BYTES // 1000
    assert per_block * threads.MIN_BLOCKS < 10 * per_block  # the byte cap decides for a large batch
    sizes = [stop - start for start, stop in threads.batch_blocks(10 * per_block, 1000)]
    assert max(sizes) <= per_block and len(sizes) == 10
    # a small batch is still cut into MIN_BLOCKS blocks (one sample each at least)
    assert len(threads.batch_blocks(64, 8)) == threads.MIN_BLOCKS
    assert len(threads.batch_blocks(threads.MIN_BLOCKS - 1, 8)) == threads.MIN_BLOCKS - 1
    assert len(threads.batch_blocks(64, 8, 1 << 20)) == 1  # an explicit size is taken as it is


def test_blas_runs_single_threaded_inside_blocks_and_is_restored(restore_threads):
    controls = threads._blas_controls()
    if controls is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS with per-thread thread counts")
    _, get = controls
    before = get()
    gl.set_num_threads(2)
    seen = []
    threads.run_blocks(lambda start, stop: seen.append(get()), 8, 1, 2)  # four blocks over two threads
    assert seen == [1, 1, 1, 1]
    assert get() == before
    threads.run_blocks(lambda start, stop: seen.append(get()), 1, 1, 2)  # one block: BLAS as it is
    assert seen[-1] == before


def test_default_thread_count_is_read_before_blas_goes_single_threaded():
    """The default count comes from BLAS's pool: reading it inside a pass (BLAS at one thread) would give 1."""
    code = (
        "import threading, time, gpulayers.threads as t; names = set()\n"
        "t.run_blocks(lambda a, b: names.add(threading.current_thread().name) or time.sleep(0.05), 4, 1, 1)\n"
        "print(t.get_num_threads(), len(names))"
    )
    base = {k: v for k, v in __import__("os").environ.items() if not k.endswith("NUM_THREADS")}
    env = {**base, "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "2 2"
