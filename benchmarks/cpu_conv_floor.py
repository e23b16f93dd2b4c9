"""Where a stride-1 3x3 convolution's CPU time goes, and the floor its GEMMs set, against PyTorch.

    python benchmarks/cpu_conv_floor.py [--channels 32 64] [--size 14] [--batch 64] [--repeats 40]

The reference CNN's second convolution (32->64 channels at 14x14, padding 1) is the layer whose rows
in ``cpu_train_step.py`` stay nearest 1.5x PyTorch. This script says why, in one run:

1. With the libraries taking turns, PyTorch on as many threads as NumPy's BLAS: PyTorch's forward
   and backward (every gradient), gpulayers' (``nn.Conv2d``), and gpulayers' **GEMMs alone**: the
   very products the layer runs (its operands, blocks, chunks and threads) on columns already
   built. That is the layer's time if building columns, zeroing and thread hand-overs were free.
2. On one thread: the layer's calls by kind (copies of the input, column copies, zeroing of values
   that wrap around a row, GEMMs, the shifted sum that gives ``dx``), each summed over the batch,
   next to the whole pass on one thread.

Both replay the layer's own plan on its own scratch views (``gpulayers.ops.conv2d_cpu``); before
timing, the script checks that a replay of every call in the layer's order gives the layer's output
and gradients bit for bit. It covers the routes that 3x3 layers with padding 1 take when a group
has more output than input channels: the flat-run forward and the split-kernel backward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np
from cpu_train_step import alternate, blas_threads, ours_pass, torch_pass


class Replay:
    """The layer's calls, by kind, on scratch views built per thread by the layer's own plans.

    Every kind is a method ``(start, stop, k)`` that makes the layer's calls of that kind for chunk
    ``k`` of the block of samples ``start:stop`` (the copies of a block's input with its chunk 0).
    """

    FORWARD = ("input_copy", "column_copies", "wrapped_zeroing", "forward_gemms")
    BACKWARD = ("input_copies", "dy_row_copies", "x_column_copies", "weight_gemms", "input_gemms", "e_zeroing",
                "shifted_sum")  # fmt: skip

    def __init__(self, layer, x: np.ndarray, dy: np.ndarray) -> None:
        from gpulayers.ops import conv2d_cpu as cc
        from gpulayers.ops.conv2d import ConvArgs

        self.cc, self.x, self.dy = cc, x, dy
        n, _, h, w = x.shape
        weight, bias = np.ascontiguousarray(layer.weight.data), np.asarray(layer.bias.data)
        self.a = ConvArgs((1, 1), (1, 1), (0, 0), (1, 1), 1, (h, w))
        if cc._split_forward(weight.shape, True, self.a):
            sys.exit("cpu_conv_floor: these channels take the split forward, which this script does not replay")
        self.fwd = cc._FlatForward(weight, bias, self.a)
        self.bwd = cc._flat_backward(x.shape, weight.shape, weight, self.a, 4, weight_grad=True, input_grad=True)
        if not isinstance(self.bwd, cc._SplitBackward):
            sys.exit("cpu_conv_floor: these channels do not take the split-kernel backward, which this script replays")
        self.blocks = cc._blocks(x.shape, (3, 3), self.a, x.itemsize)
        self.y = np.empty((n, weight.shape[0], h * w), dtype=x.dtype)
        self.dx = np.empty((n, x.shape[1], h * w), dtype=x.dtype)
        self.parts = np.empty((len(self.blocks), *self.bwd.parts_shape), dtype=x.dtype)
        self._local = threading.local()

    def _views(self, start: int, stop: int, backward: bool):
        cache = self._local.__dict__.setdefault("views", {})
        n = stop - start
        if n not in cache:
            c, hw, dtype = self.x.shape[1], self.x.shape[2:], self.x.dtype
            fwd = self.fwd._scratch(self.cc._chunk_bounds(n, self.fwd.chunk), c, hw, dtype)
            bounds = self.cc._chunk_bounds(n, self.bwd.chunk)
            bwd = self.bwd._scratch(bounds, (n, *self.x.shape[1:]), (n, *self.dy.shape[1:]), dtype)
            cache[n] = (fwd, bwd)
        return cache[n][backward]

    # -- the forward's kinds --------------------------------------------------------------------------------

    def input_copy(self, start: int, stop: int, k: int) -> None:
        if k == 0:
            v = self._views(start, stop, False)
            np.copyto(v.interior, self.x[start:stop].reshape(v.interior.shape))

    def column_copies(self, start: int, stop: int, k: int) -> None:
        _, _, body, windows, _, _ = self._views(start, stop, False).chunks[k]
        np.copyto(body, windows)

    def wrapped_zeroing(self, start: int, stop: int, k: int) -> None:
        for view in self._views(start, stop, False).chunks[k][4]:
            view.fill(0)

    def forward_gemms(self, start: int, stop: int, k: int) -> None:
        first, last, _, _, _, cols = self._views(start, stop, False).chunks[k]
        y = self.y[start + first : start + last]
        np.matmul(self.fwd.w_mat, cols, out=y.reshape(last - first, 1, *y.shape[1:]))

    # -- the backward's kinds -------------------------------------------------------------------------------

    def input_copies(self, start: int, stop: int, k: int) -> None:
        if k == 0:
            v = self._views(start, stop, True)
            np.copyto(v.dy_in, self.dy[start:stop].reshape(v.dy_in.shape))
            np.copyto(v.x_in, self.x[start:stop].reshape(v.x_in.shape))

    def dy_row_copies(self, start: int, stop: int, k: int) -> None:
        ch = self._views(start, stop, True).chunks[k]
        np.copyto(ch.dy_cols, ch.dy_runs)

    def x_column_copies(self, start: int, stop: int, k: int) -> None:
        ch = self._views(start, stop, True).chunks[k]
        np.copyto(ch.x_cols, ch.x_runs)
        for view in ch.x_wrapped:
            view.fill(0)

    @staticmethod
    def _rows(cols: np.ndarray) -> np.ndarray:
        """A chunk's ``(1, kh*O or kw*C, pixels)`` GEMM operand, as the layer reshapes it."""
        return cols.reshape(1, cols.shape[1] * cols.shape[2], -1)

    def weight_gemms(self, start: int, stop: int, k: int) -> None:
        ch = self._views(start, stop, True).chunks[k]
        np.matmul(self._rows(ch.dy_cols), self._rows(ch.x_cols).transpose(0, 2, 1), out=ch.part)

    def input_gemms(self, start: int, stop: int, k: int) -> None:
        ch = self._views(start, stop, True).chunks[k]
        np.matmul(self.bwd.w_split, self._rows(ch.dy_cols), out=ch.e)

    def e_zeroing(self, start: int, stop: int, k: int) -> None:
        for view in self._views(start, stop, True).chunks[k].e_wrapped:
            view.fill(0)

    def shifted_sum(self, start: int, stop: int, k: int) -> None:
        ch = self._views(start, stop, True).chunks[k]
        dx = self.dx[start + ch.start : start + ch.stop]
        np.add.reduce(ch.shifted, axis=0, out=dx.reshape(ch.stop - ch.start, 1, *dx.shape[1:]))

    # -- running them ----------------------------------------------------------------------------------------

    def run(self, kinds: tuple[str, ...]) -> float:
        """Seconds to run ``kinds``, chunk by chunk, over every block through the layer's block
        scheduling and threads (each kind is all forward or all backward)."""
        backward = kinds[0] in self.BACKWARD
        calls = [getattr(self, kind) for kind in kinds]

        def block(start: int, stop: int) -> None:
            v = self._views(start, stop, backward)
            for k in range(len(v.chunks)):
                for call in calls:
                    call(start, stop, k)
            if backward and "weight_gemms" in kinds:
                self.parts[self.blocks.index((start, stop))] = v.parts.sum(axis=0)

        begin = time.perf_counter()
        self.cc._run(block, self.x.shape, (3, 3), self.a, self.x.itemsize)
        return time.perf_counter() - begin

    def check(self, layer) -> bool:
        """Whether replaying every kind in the layer's order gives its output, ``dx`` and ``dW`` bit for bit."""
        layer.zero_grad()
        y = layer(self.x)
        dx = layer.backward(self.dy)
        self.run(self.FORWARD)
        self.run(self.BACKWARD)
        dw = self.bwd.weight_layout(self.parts.sum(axis=0) if len(self.blocks) > 1 else self.parts[0])
        same = [np.array_equal(ours.reshape(theirs.shape), theirs) for ours, theirs in
                ((self.y, y), (self.dx, dx), (dw, layer.weight.grad))]  # fmt: skip
        return all(same)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, nargs=2, default=(32, 64), metavar=("IN", "OUT"))
    parser.add_argument("--size", type=int, default=14, help="height and width of the input")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per measurement (median over them)")
    args = parser.parse_args()

    import torch

    import gpulayers as gl
    from gpulayers import nn

    threads = blas_threads()
    torch.set_num_threads(threads)
    gl.set_num_threads(threads)
    (cin, cout), size, n = args.channels, args.size, args.batch
    print(f"Conv2d({cin}, {cout}, 3, padding=1) on {n}x{cin}x{size}x{size}, float32; NumPy {np.__version__}, "
          f"PyTorch {torch.__version__}, {threads} threads each")  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, cin, size, size)).astype(np.float32)
    dy = rng.standard_normal((n, cout, size, size)).astype(np.float32)
    layer, theirs = nn.Conv2d(cin, cout, 3, padding=1), torch.nn.Conv2d(cin, cout, 3, padding=1)
    tx, tdy = torch.from_numpy(x.copy()).requires_grad_(True), torch.from_numpy(dy)
    replay = Replay(layer, x, dy)
    same = replay.check(layer)
    print(f"replayed calls give the layer's output, dx and dW bit for bit: {'yes' if same else 'NO'}")
    if not same:
        return 1

    gemms = {"forward": ("forward_gemms",), "backward": ("weight_gemms", "input_gemms")}
    print(f"\n{threads} threads, median ms of {args.repeats} calls, the three taking turns")
    print(f"{'pass':9s} {'torch':>8s} {'gpulayers':>10s} {'ratio':>7s} {'its GEMMs alone':>16s} {'ratio':>7s}")
    for which in ("forward", "backward"):
        fns = {
            "torch": lambda w=which: torch_pass(w, theirs, tx, tdy),
            "ours": lambda w=which: ours_pass(w, layer, x, dy),
            "gemms": lambda w=which: replay.run(gemms[w]),
        }
        t = {k: 1e3 * statistics.median(v) for k, v in alternate(fns, args.repeats, 3, self_timed=True).items()}
        print(f"{which:9s} {t['torch']:8.3f} {t['ours']:10.3f} {t['ours'] / t['torch']:6.2f}x "
              f"{t['gemms']:16.3f} {t['gemms'] / t['torch']:6.2f}x")  # fmt: skip

    gl.set_num_threads(1)
    try:
        print("\nOne thread, median ms: each kind of call alone over the whole batch; (kinds together): the")
        print("replay of every kind in the layer's order less their sum (the cost of not finding the data in")
        print("cache); (rest of the layer): the layer's whole pass less that replay (its checks, allocation")
        print("and dB, and colder caches: in the whole pass, the other pass runs between two calls)")
        for which, kinds in (("forward", Replay.FORWARD), ("backward", Replay.BACKWARD)):
            fns = {kind: (lambda k=kind: replay.run((k,))) for kind in kinds}
            fns["in order"] = lambda k=kinds: replay.run(k)
            fns["whole pass"] = lambda w=which: ours_pass(w, layer, x, dy)
            t = {k: 1e3 * statistics.median(v) for k, v in alternate(fns, args.repeats, 3, self_timed=True).items()}
            whole, in_order = t.pop("whole pass"), t.pop("in order")
            together, rest = in_order - sum(t.values()), whole - in_order
            rows = [*t.items(), ("(kinds together)", together), ("(rest of the layer)", rest)]
            for kind, ms in rows:
                print(f"  {which:9s} {kind.replace('_', ' '):20s} {ms:8.3f}   {ms / whole:6.1%}")
            print(f"  {which:9s} {'whole pass':20s} {whole:8.3f}")
    finally:
        gl.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
