"""Every example script runs end to end with short settings (in a subprocess, with a timeout)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name, *args, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPULAYERS_DEVICE": ""}
    cmd = [sys.executable, str(EXAMPLES / name), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def write_mnist(folder: Path, n_train=64, n_test=32):
    rng = np.random.default_rng(0)
    specs = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in specs.items():
        header = b"\0\0\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (folder / name).write_bytes(gzip.compress(header + arr.tobytes()))


def write_cifar(root: Path, n=16):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        batch[b"labels"] = [int(v) for v in batch[b"labels"]]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))


@pytest.mark.parametrize("flags", [[], ["--no-torch"]])
def test_tutorial_layers(flags):
    proc = run_example("tutorial_layers.py", *flags)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "[[[[-6. 15.]]]]" in out  # the tutorial's convolution
    assert "[[[[5. 6.]\n" in out and "[8. 9.]]]]" in out  # its max pool
    assert "-1.2247" in out and "1.2247" in out  # its batch norm
    assert ("all layers agree with PyTorch" in out) if not flags else ("done" in out)
    assert "DIFFERENT" not in out and "MISMATCH" not in out


def test_custom_layer():
    proc = run_example("custom_layer.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gradcheck SiLU(): ok" in proc.stdout and "gradcheck ChannelScale(3): ok" in proc.stdout
    assert "gradcheck of the whole model: ok" in proc.stdout
    assert "gradcheck of GatedResidual: ok" in proc.stdout


def test_train_digits_short(tmp_path):
    ck = tmp_path / "ck.npz"
    proc = run_example(
        "train_digits.py",
        "--epochs",
        "1",
        "--limit",
        "256",
        "--device",
        "cpu",
        "--no-progress",
        "--checkpoint",
        str(ck),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "device: cpu" in proc.stdout and "Total params:" in proc.stdout
    assert "test accuracy" in proc.stdout and ck.is_file()


@pytest.mark.parametrize(
    "script, write, extra, expected",
    [
        ("train_mnist.py", write_mnist, ["--limit", "64"], "mnist test accuracy:"),
        ("train_cifar10.py", write_cifar, ["--limit", "48", "--width", "4"], "CIFAR-10 test accuracy:"),
    ],
    ids=["mnist", "cifar10"],
)
def test_train_example_short_run(tmp_path, script, write, extra, expected):
    write(tmp_path / "data")
    args = ["--data-dir", str(tmp_path / "data"), "--epochs", "1", *extra, "--device", "cpu", "--no-progress"]
    proc = run_example(script, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expected in proc.stdout


def test_train_mnist_missing_files(tmp_path):
    proc = run_example("train_mnist.py", "--data-dir", str(tmp_path), "--fashion")
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte" in proc.stderr and str(tmp_path) in proc.stderr and "Traceback" not in proc.stderr


def test_train_cifar10_missing_files(tmp_path):
    proc = run_example("train_cifar10.py", "--data-dir", str(tmp_path / "nothing"))
    assert proc.returncode == 2
    assert "cifar-10-python.tar.gz" in proc.stderr and "Traceback" not in proc.stderr


def test_train_resnet_cifar10_smoke():
    proc = run_example("train_resnet_cifar10.py", "--smoke", "--device", "cpu", "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model: ResNet-20, 272,474 parameters; 16 train / 8 test images" in proc.stdout
    assert "CIFAR-10 test accuracy:" in proc.stdout


def test_train_resnet_cifar10_on_cifar_batches(tmp_path):
    write_cifar(tmp_path)
    args = ["--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "8", "--limit", "8"]
    proc = run_example("train_resnet_cifar10.py", *args, "--device", "cpu", "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 train / 8 test images" in proc.stdout and "CIFAR-10 test accuracy:" in proc.stdout
    proc = run_example("train_resnet_cifar10.py", "--data-dir", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "cifar-10-python.tar.gz" in proc.stderr and "Traceback" not in proc.stderr
