"""``benchmarks/cpu_conv_floor.py``: its replay of a convolution's calls must be the layer's own.

The script's figures (the GEMMs alone against PyTorch, the one-thread breakdown) mean something only
if the calls it replays are the layer's, on the layer's operands. Its own check (the replay in the
layer's order gives the output, ``dx`` and ``dW`` bit for bit) must pass, and must fail when the
replay is off.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpulayers import nn

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
from cpu_conv_floor import Replay  # noqa: E402

# (in, out, size, batch): several blocks and several chunks per block, and one block of one chunk
SHAPES = [(4, 8, 6, 8), (8, 16, 10, 40), (2, 4, 5, 1)]


def _replay(cin: int, cout: int, size: int, batch: int) -> tuple[Replay, nn.Conv2d]:
    rng = np.random.default_rng(cin * 100 + size)
    x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
    dy = rng.standard_normal((batch, cout, size, size)).astype(np.float32)
    layer = nn.Conv2d(cin, cout, 3, padding=1)
    return Replay(layer, x, dy), layer


@pytest.mark.parametrize("shape", SHAPES)
def test_replay_is_the_layer_bit_for_bit(shape):
    replay, layer = _replay(*shape)
    assert replay.check(layer)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda r: r.fwd.w_mat.__setitem__((0, 0, 0), r.fwd.w_mat[0, 0, 0] + 1),  # another forward operand
        lambda r: r.bwd.w_split.__setitem__((0, 0, 0), r.bwd.w_split[0, 0, 0] + 1),  # another dx operand
        lambda r: setattr(r, "FORWARD", r.FORWARD[:2] + r.FORWARD[3:]),  # the wrapped values not zeroed
        lambda r: setattr(r, "BACKWARD", r.BACKWARD[:1] + r.BACKWARD[2:]),  # dy's shifted copies left out
    ],
)
def test_replay_check_fails_when_the_replay_is_off(spoil):
    replay, layer = _replay(8, 16, 10, 40)
    spoil(replay)
    assert not replay.check(layer)


def test_script_runs_and_reports_its_check():
    pytest.importorskip("torch")
    args = ["--channels", "4", "8", "--size", "6", "--batch", "8", "--repeats", "2"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "cpu_conv_floor.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "bit for bit: yes" in done.stdout
    for row in ("forward", "backward", "forward gemms", "weight gemms", "shifted sum", "whole pass"):
        assert row in done.stdout


def test_script_refuses_shapes_it_does_not_replay():
    pytest.importorskip("torch")
    # 64 -> 32 channels take the split forward
    args = ["--channels", "64", "32", "--size", "6", "--batch", "2", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "cpu_conv_floor.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "split forward" in done.stderr
    assert "Traceback" not in done.stderr
