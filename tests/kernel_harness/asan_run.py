"""Runs the real launchers on AddressSanitizer/UBSan builds of the kernels (in a subprocess).

Usage: ``python asan_run.py BUILD_DIR MODE`` (``tests/kernel_harness/fixtures.py`` runs it). The process must
preload the sanitizer runtimes (``LD_PRELOAD``) and use ``PYTHONMALLOC=malloc``; every array
is at least 16 KB so that NumPy takes it from malloc, where ASan places redzones.

* ``clean`` drives every kernel through ``gpulayers.ops.conv2d_cuda`` / ``max_pool2d_cuda`` over
  many shapes (and again with a 3 x 4 grid) and prints ``ASAN_CLEAN_RUN_OK`` at the end.
* ``overflow-write`` / ``overflow-read`` launch a kernel with a deliberately wrong size, so a
  correct sanitizer build must abort the process (the negative controls).
* ``optim-clean`` / ``optim-overflow``: the fused optimiser steps through ``gpulayers.optim`` (both grids),
  and an update kernel told of more elements than its arrays hold.
* ``dropout-clean`` / ``dropout-overflow``: the fused dropout kernel with its state in an array
  (both grids, sizes not multiples of four), and a launch told of more elements than it has.
* ``shared-overflow`` runs ``coop_controls.cu`` in the mode where one thread writes past its
  ``__shared__`` array: the cooperative harness's shared memory must be guarded too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpulayers import kernels, optim  # noqa: E402
from gpulayers.nn import Parameter  # noqa: E402
from gpulayers.ops import conv2d_cuda, conv2d_igemm_cuda, max_pool2d_cuda  # noqa: E402
from gpulayers.optim import optim_cuda  # noqa: E402
from kernel_harness.harness import HarnessKernel, HarnessLibrary, build, parse_kernels  # noqa: E402

MIN_BYTES = 16 * 1024

CONV_CASES = [
    # (N, C, H, W), (out, kh, kw), stride, padding, dilation, groups
    ((2, 8, 20, 20), (8, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 8, 21, 19), (12, 3, 2), (2, 1), (2, 0), (1, 2), 4),
    ((2, 16, 18, 18), (16, 5, 5), (2, 2), (2, 2), (1, 1), 16),
    ((4, 1, 33, 33), (6, 3, 3), (1, 2), (0, 1), (2, 1), 1),
    ((2, 8, 16, 16), (4, 16, 16), (1, 1), (0, 0), (1, 1), 2),
    ((2, 4, 24, 24), (6, 2, 2), (3, 3), (0, 0), (1, 1), 1),
]

POOL_CASES = [
    # (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
    ((2, 4, 24, 24), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 4, 25, 23), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((2, 6, 22, 21), (3, 2), (1, 2), (1, 0), (2, 3), True),
    ((64, 16, 2, 2), (2, 2), (1, 1), (1, 1), (3, 3), False),  # windows holding no input element
    ((3, 8, 13, 17), (4, 5), (3, 4), (2, 2), (1, 1), True),
    # ceil_mode windows larger than the input, or running past its padding.
    ((1024, 16, 1, 1), (2, 2), (2, 2), (0, 0), (1, 1), True),
    ((256, 16, 3, 2), (4, 3), (3, 2), (1, 1), (1, 1), True),
    ((256, 16, 2, 3), (2, 2), (3, 3), (0, 1), (2, 3), True),
]


def _pooled(size, k, s, p, d, ceil_mode):
    num = size + 2 * p - (d * (k - 1) + 1)
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _big(rng, shape, dtype):
    """A random input of at least MIN_BYTES, so that ASan guards it."""
    a = rng.standard_normal(shape).astype(dtype)
    assert a.nbytes >= MIN_BYTES, f"{shape} {np.dtype(dtype)}: {a.nbytes} bytes"
    return a


def run_clean(build_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for grid in (None, (3, 4)):
        library = HarnessLibrary(build_dir, sanitize=True, grid_override=grid)
        kernels.get_function = library.get_function
        for dtype in (np.float32, np.float64):
            for shape, (oc, kh, kw), stride, padding, dilation, groups in CONV_CASES:
                x = _big(rng, shape, dtype)
                w = rng.standard_normal((oc, shape[1] // groups, kh, kw)).astype(dtype)
                b = rng.standard_normal(oc).astype(dtype)
                for algorithm in ("implicit_gemm", "im2col", "direct"):
                    y, cache = conv2d_cuda.conv2d_forward(
                        x, w, b, stride, padding, dilation, groups, algorithm=algorithm
                    )
                    dx, dw, db = conv2d_cuda.conv2d_backward(rng.standard_normal(y.shape).astype(dtype), cache)
                    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
                    assert np.isfinite(y).all() and np.isfinite(dx).all() and np.isfinite(dw).all()
            for shape, k, s, p, d, ceil_mode in POOL_CASES:
                x = _big(rng, shape, dtype)
                out = tuple(_pooled(shape[2 + i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(2))
                y, cache = max_pool2d_cuda.max_pool2d_forward(x, k, s, p, d, out)
                dx = max_pool2d_cuda.max_pool2d_backward(rng.standard_normal(y.shape).astype(dtype), cache)
                assert dx.shape == x.shape
            for shape, (oc, kh, kw), stride, padding, dilation, groups in CONV_CASES[:4]:
                x = _big(rng, shape, dtype)
                w = rng.standard_normal((oc, shape[1] // groups, kh, kw)).astype(dtype)
                b = rng.standard_normal(oc).astype(dtype)
                y = conv2d_igemm_cuda.conv2d_forward(x, w, b, stride, padding, dilation, groups)
                dy = rng.standard_normal(y.shape).astype(dtype)
                dx = conv2d_igemm_cuda.conv2d_backward_data(dy, w, x.shape, stride, padding, dilation, groups)
                dw = conv2d_igemm_cuda.conv2d_backward_weight(x, dy, w.shape, stride, padding, dilation, groups)
                assert np.isfinite(y).all() and np.isfinite(dx).all() and np.isfinite(dw).all()
        print(f"grid {grid}: {len(library.launches)} launches", flush=True)
    print("ASAN_CLEAN_RUN_OK", flush=True)


def run_overflow(build_dir: Path, kind: str) -> None:
    library = HarnessLibrary(build_dir, sanitize=True)
    i32 = np.int32
    if kind == "overflow-write":
        # im2col over 8 channels into a column buffer sized for 7: the last rows land past its end.
        n, c, h, w = 2, 8, 16, 16
        x = np.ones((n, c, h, w))
        col = np.zeros((7 * 9, n * h * w))
        total = c * n * h * w
        args = (x, col, np.int64(total), i32(n), i32(c), i32(h), i32(w), i32(3), i32(3), i32(1), i32(1))
        args += (i32(1), i32(1), i32(1), i32(1), i32(h), i32(w))
        library.kernel("conv2d.cu", "im2col_kernel", np.float64)((64,), (256,), args)
    else:
        # max-pool forward told the plane is 40 rows high while x holds 32.
        x = np.ones((1, 4, 32, 32))
        y = np.zeros((1, 4, 20, 32))
        argmax = np.zeros((1, 4, 20, 32), dtype=np.int32)
        geometry = (40, 32, 20, 32, 2, 1, 2, 1, 0, 0, 1, 1)
        args = (x, y, argmax, np.int64(y.size)) + tuple(i32(v) for v in geometry)
        library.kernel("max_pool2d.cu", "max_pool2d_forward_kernel", np.float64)((16,), (256,), args)
    print("OVERFLOW_NOT_DETECTED", flush=True)


def run_optim_clean(build_dir: Path) -> None:
    optim_cuda.can_fuse = optim_cuda.fusable  # NumPy parameters take the fused path
    rng = np.random.default_rng(0)
    for grid in (None, (3, 4)):
        kernels.get_function = HarnessLibrary(build_dir, sanitize=True, grid_override=grid).get_function
        for dtype in (np.float32, np.float64):
            for make in (
                lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
                lambda ps: optim.SGD(ps, lr=0.1),
                lambda ps: optim.Adam(ps, weight_decay=0.1, amsgrad=True),
                lambda ps: optim.AdamW(ps),
                lambda ps: optim.RMSprop(ps, weight_decay=0.1, momentum=0.9, centered=True),
            ):
                params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in ((64, 70), (4099,))]
                opt = make(params)
                for _ in range(2):
                    for p in params:
                        p.grad = rng.standard_normal(p.shape).astype(dtype)
                    opt.step()
                assert all(np.isfinite(p.data).all() for p in params)
    print("ASAN_CLEAN_RUN_OK", flush=True)


def run_optim_overflow(build_dir: Path) -> None:
    """An SGD update whose table claims more elements than the arrays hold."""
    kernels.get_function = HarnessLibrary(build_dir, sanitize=True).get_function
    p, g, buf = np.zeros(4096), np.ones(4096), np.zeros(4096)
    batch = optim_cuda.sgd_batch(
        [(p, g, buf)], lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=False, first_step=False
    )
    table = np.zeros(8, np.int64)
    optim_cuda._fill(table, batch, np.dtype(np.float64))
    table[4] = 4096 + 8  # the end offset of the only tensor
    args = (table, np.int32(1), np.int64(4096 + 8), *batch.args)
    kernels.launch("optim.cu", "sgd_multi_update_kernel", np.float64, 4096 + 8, args)
    print("OVERFLOW_NOT_DETECTED", flush=True)


def _dropout_args(x, n, base, increment):
    state = np.zeros(2048, np.int64)  # [seed, base] at the front; 16 KB so that ASan guards it
    state[:2] = (12345, base)
    t = x.dtype.type
    return (np.int64(n), state, np.int64(increment), t(0.3), t(1 / 0.7))


def run_dropout_clean(build_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for grid in (None, (3, 4)):
        kernels.get_function = HarnessLibrary(build_dir, sanitize=True, grid_override=grid).get_function
        for dtype, n in ((np.float32, 4099), (np.float64, 2051), (np.float32, 8192)):
            x = _big(rng, (n,), dtype)
            tail = _dropout_args(x, n, 7, 3)
            y, dx, mask = np.empty_like(x), np.empty_like(x), np.empty_like(x)
            kernels.launch("dropout.cu", "dropout_apply_kernel", dtype, (n + 3) // 4, (x, y, *tail))
            kernels.launch("dropout.cu", "dropout_mask_kernel", dtype, (n + 3) // 4, (mask, *tail))
            kernels.launch("dropout.cu", "dropout_apply_kernel", dtype, (n + 3) // 4, (x, dx, *tail))
            assert set(np.unique(mask)) <= {dtype(0), dtype(1 / 0.7)}
            assert np.array_equal(y, x * mask) and np.array_equal(dx, y)
    print("ASAN_CLEAN_RUN_OK", flush=True)


def run_dropout_overflow(build_dir: Path) -> None:
    """The dropout kernel told of eight more elements than its arrays hold."""
    kernels.get_function = HarnessLibrary(build_dir, sanitize=True).get_function
    x = np.ones(4096)
    args = (x, np.empty_like(x), *_dropout_args(x, 4096 + 8, 0, 0))
    kernels.launch("dropout.cu", "dropout_apply_kernel", np.float64, (4096 + 8 + 3) // 4, args)
    print("OVERFLOW_NOT_DETECTED", flush=True)


CONTROLS = Path(__file__).resolve().parent / "coop_controls.cu"


def run_control(build_dir: Path, mode: int, sanitize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Launch ``coop_controls.cu``'s kernel (2 blocks of 64 threads) in ``mode``; returns (x, y).

    Modes: 0 correct, 1 barrier missing, 2 a thread returns before the barrier, 3 a thread
    writes past the ``__shared__`` array.
    """
    import ctypes

    lib = ctypes.CDLL(str(build(CONTROLS, build_dir, sanitize=sanitize)))
    sig = parse_kernels(CONTROLS.read_text())[0]
    assert sig.cooperative, "the control kernel must run on the cooperative path"

    class _Launches:
        launches: list = []

    kernel = HarnessKernel(_Launches(), sig, "double", lib.gl_launch_reverse_kernel_double)
    x = np.arange(2048, dtype=np.float64)  # 16 KB: malloc'd, so ASan guards it
    y = np.zeros_like(x)
    kernel((2,), (64,), (x, y, np.int32(128), np.int32(mode)))
    return x, y


if __name__ == "__main__":
    directory, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "clean":
        run_clean(directory)
    elif mode == "optim-clean":
        run_optim_clean(directory)
    elif mode == "optim-overflow":
        run_optim_overflow(directory)
    elif mode == "dropout-clean":
        run_dropout_clean(directory)
    elif mode == "dropout-overflow":
        run_dropout_overflow(directory)
    elif mode == "shared-overflow":
        run_control(directory, 3, sanitize=True)
        print("OVERFLOW_NOT_DETECTED", flush=True)
    else:
        run_overflow(directory, mode)
