"""The command line: every bad value is an argparse ``error:`` line and exit status 2 before any
training; output paths checked first; resuming with another --epochs; --augment per data set;
Ctrl-C; the plain "no GPU" message; ``info --no-compile``."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpulayers import backend, cli, data, info, train

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ["--checkpoint", "--metrics-json", "--plot"]
TINY = ["--epochs", "1", "--limit", "64", "--width", "2", "--no-progress", "--device", "cpu"]


def run_main(argv, capsys):
    rc = train.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc, out, err, message):
    assert rc == 2, (out, err)
    assert "error:" in err and message in err, err
    assert "Traceback" not in err and "epoch 1/" not in out and "device:" not in out


# ------------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lr", "nan"], "argument --lr: expected a finite number > 0, got 'nan'"),
        (["--lr", "inf"], "argument --lr: expected a finite number > 0"),
        (["--lr", "-inf"], "argument --lr"),
        (["--lr", "0"], "argument --lr"),
        (["--lr", "abc"], "argument --lr"),
        (["--width", "0"], "argument --width: expected an integer in 1..1024"),
        (["--width", "-3"], "argument --width"),
        (["--width", "100000"], "argument --width"),
        (["--dropout", "1.5"], "argument --dropout: expected a probability in [0, 1)"),
        (["--dropout", "1"], "argument --dropout"),
        (["--dropout", "-0.1"], "argument --dropout"),
        (["--dropout", "nan"], "argument --dropout"),
        (["--momentum", "-1"], "argument --momentum: expected a finite number >= 0"),
        (["--momentum", "nan"], "argument --momentum"),
        (["--weight-decay", "-1"], "argument --weight-decay: expected a finite number >= 0"),
        (["--weight-decay", "inf"], "argument --weight-decay"),
        (["--seed", "-1"], "argument --seed: expected an integer in 0..4294967295"),
        (["--seed", str(2**40)], "argument --seed"),
        (["--seed", "1.5"], "argument --seed"),
        (["--limit", "0"], "argument --limit: expected an integer >= 1"),
        (["--limit", "-5"], "argument --limit"),
        (["--num-threads", "0"], "argument --num-threads: expected an integer >= 1"),
        (["--epochs", "0"], "argument --epochs: expected an integer in 1..1000000"),
        (["--epochs", "2.5"], "argument --epochs"),
        (["--epochs", "1000001"], "argument --epochs: expected an integer in 1..1000000"),
        (["--batch-size", "0"], "argument --batch-size"),
        (["--device", "gpu"], "argument --device: expected auto, cpu, cuda or cuda:N"),
        (["--device", "cuda:-1"], "argument --device"),
        (["--data", "imagenet"], "argument --data: invalid choice"),
        (["--resume"], "--resume needs --checkpoint PATH"),
        (["--data-dir", "/tmp"], "--data-dir is for mnist, fashion-mnist and cifar10"),
        (["--optimizer", "adam", "--momentum", "0.5"], "--momentum is for --optimizer sgd, not adam"),
    ],
)
def test_bad_values_are_argparse_errors(argv, message, capsys):
    assert_refused(*run_main(argv, capsys), message)


def test_help_returns_zero(capsys):
    rc, out, _ = run_main(["--help"], capsys)
    assert rc == 0 and "--checkpoint" in out


# ------------------------------------------------------------------------------------------------ output paths
@pytest.mark.parametrize("option", OUTPUTS)
def test_output_path_is_a_folder(option, tmp_path, capsys):
    assert_refused(*run_main([option, tmp_path], capsys), f"{option} {tmp_path}: is a folder")


@pytest.mark.parametrize("option", OUTPUTS)
def test_output_path_under_a_file(option, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "sub" / "out.png"
    assert_refused(*run_main([option, target], capsys), f"{blocker} is a file, not a folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a read-only /proc")
@pytest.mark.parametrize("option", OUTPUTS)
def test_output_path_unwritable(option, capsys):
    assert_refused(*run_main([option, "/proc/gpulayers-out.png"], capsys), "cannot write in /proc")


def test_two_outputs_on_one_file(tmp_path, capsys):
    same = tmp_path / "out.json"
    assert_refused(
        *run_main(["--metrics-json", same, "--plot", same], capsys), "--metrics-json and --plot name the same file"
    )


def test_missing_parent_folders_are_created(tmp_path, capsys):
    metrics, ck = tmp_path / "a" / "b" / "m.json", tmp_path / "c" / "ck.npz"
    rc, out, err = run_main([*TINY, "--metrics-json", metrics, "--checkpoint", ck], capsys)
    assert rc == 0, err
    assert json.loads(metrics.read_text())["history"] and ck.is_file()


# ------------------------------------------------------------------------------------------------ resume
def test_resume_with_more_epochs_stretches_the_cosine_schedule(tmp_path, capsys):
    ck, metrics = tmp_path / "ck.npz", tmp_path / "m.json"
    base = [*TINY[2:], "--checkpoint", ck, "--metrics-json", metrics]
    assert run_main([*base, "--epochs", "1"], capsys)[0] == 0
    rc, out, err = run_main([*base, "--epochs", "3", "--resume"], capsys)
    assert rc == 0, err
    assert "fitted to 3 epochs (the checkpoint was written for 1)" in out
    lrs = [r["lr"] for r in json.loads(metrics.read_text())["history"]]
    # Epoch 1 ran at the peak; epochs 2 and 3 follow a cosine over 3 epochs, not the old one (lr 0).
    expected = [0.05 * (1 + math.cos(math.pi * t / 3)) / 2 for t in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-12) and lrs[1] > 0


def test_resume_with_more_epochs_step_schedule(tmp_path, capsys):
    ck, metrics = tmp_path / "ck.npz", tmp_path / "m.json"
    base = [*TINY[2:], "--checkpoint", ck, "--metrics-json", metrics, "--scheduler", "step"]
    assert run_main([*base, "--epochs", "3"], capsys)[0] == 0  # step size 1: 0.05, 0.005, 0.0005
    assert run_main([*base, "--epochs", "6", "--resume"], capsys)[0] == 0  # step size 2 from now on
    lrs = [r["lr"] for r in json.loads(metrics.read_text())["history"]]
    assert lrs == pytest.approx([0.05, 0.005, 0.0005, 0.005, 0.0005, 0.0005], rel=1e-9)


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    assert run_main([*TINY[2:], "--epochs", "2", "--checkpoint", ck], capsys)[0] == 0
    rc, out, err = run_main([*TINY[2:], "--epochs", "1", "--checkpoint", ck, "--resume"], capsys)
    assert_refused(rc, out, err, f"cannot resume from {ck}: it holds 2 epochs, more than --epochs 1")


def test_resume_with_other_options_is_refused_before_training(tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    assert run_main([*TINY, "--checkpoint", ck], capsys)[0] == 0
    rc, out, err = run_main([*TINY, "--checkpoint", ck, "--resume", "--optimizer", "adam"], capsys)
    assert_refused(rc, out, err, f"cannot resume from {ck}: it was written with other options")
    rc, out, err = run_main([*TINY[:4], "--width", "3", *TINY[6:], "--checkpoint", ck, "--resume"], capsys)
    assert_refused(rc, out, err, "shape mismatch")


def test_existing_checkpoint_without_resume_is_announced(tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    assert run_main([*TINY, "--checkpoint", ck], capsys)[0] == 0
    rc, out, _ = run_main([*TINY, "--checkpoint", ck], capsys)
    assert rc == 0 and f"note: {ck} exists and will be replaced after epoch 1" in out


def test_resume_from_a_folder_is_refused(tmp_path, capsys):
    assert_refused(*run_main([*TINY, "--checkpoint", tmp_path, "--resume"], capsys), "is a folder")


# ------------------------------------------------------------------------------------------------ augment
def test_augment_per_data_set():
    digits = cli.augment_for("digits", 8)
    assert isinstance(digits, data.RandomCrop) and (digits.size, digits.padding) == (8, 1)
    mnist = cli.augment_for("mnist", 28)
    assert isinstance(mnist, data.RandomCrop) and mnist.padding == 3
    cifar = cli.augment_for("cifar10", 32)
    assert [type(t) for t in cifar.transforms] == [data.RandomCrop, data.RandomHorizontalFlip]
    assert cifar.transforms[0].padding == 4


def test_augment_on_digits_still_learns(tmp_path, capsys):
    metrics = tmp_path / "m.json"
    argv = ["--augment", "--epochs", "4", "--width", "8", "--no-progress", "--device", "cpu"]
    rc, out, err = run_main([*argv, "--metrics-json", metrics], capsys)
    assert rc == 0, err
    assert json.loads(metrics.read_text())["test_accuracy"] >= 0.8  # the flip recipe stayed near 10 %


# ------------------------------------------------------------------------------------------------ devices
def test_no_gpu_message_is_plain(monkeypatch, capsys):
    detail = "CuPy found no usable CUDA device (CUDARuntimeError: cudaErrorInsufficientDriver: CUDA driver version)"
    monkeypatch.setattr(backend, "cuda_is_available", lambda: False)
    monkeypatch.setattr(backend, "cuda_unavailable_reason", lambda: detail)
    monkeypatch.delenv("GPULAYERS_DEVICE", raising=False)
    device, why = cli.choose_device("auto")
    assert device == "cpu" and "no NVIDIA driver or GPU found" in why and "insufficient" not in why
    rc, out, err = run_main(["--device", "cuda", *TINY[:6]], capsys)
    assert_refused(rc, out, err, "--device cuda: CUDA is not usable: no NVIDIA driver or GPU found")
    assert "InsufficientDriver" not in err
    assert "InsufficientDriver" in info.collect(compile_kernels=False)["cuda available"]  # detail kept for info


def test_info_no_compile_does_not_compile(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("compiled")

    monkeypatch.setattr(info, "_compile_kernels", boom)
    monkeypatch.setattr(info, "_compile_kernels_offline", boom)
    assert info.collect(compile_kernels=False)["kernels compile"] == "not checked (--no-compile)"
    assert info.main(["--no-compile"]) == 0


# ------------------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_ends_cleanly_and_keeps_the_checkpoint(tmp_path):
    ck = tmp_path / "ck.npz"
    argv = [*TINY[2:], "--epochs", "100000", "--checkpoint", str(ck)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPULAYERS_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpulayers.train", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ck.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ck.is_file(), "no checkpoint was written"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and f"last checkpoint is kept in {ck}" in err
    assert train.load_checkpoint(ck, restore_rng=False)["epoch"] >= 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temporary file left behind


# ------------------------------------------------------------------------------------------------ random
_BAD = {
    "--lr": ["nan", "inf", "-1", "0", "", "1e999", "x"],
    "--width": ["0", "-1", "1e3", "4097", "two"],
    "--dropout": ["1", "1.01", "-1e-9", "nan"],
    "--momentum": ["-0.1", "inf", "nan"],
    "--weight-decay": ["-1", "nan", "-inf"],
    "--seed": ["-1", "4294967296", "0x10", "1.0"],
    "--limit": ["0", "-5", "1.5"],
    "--num-threads": ["0", "-2"],
    "--epochs": ["0", "-1", "NaN"],
    "--batch-size": ["0", "-64", "3.2"],
    "--device": ["gpu", "cuda:x", "tpu", ""],
    "--data": ["imagenet", "DIGITS", ""],
    "--optimizer": ["rmsprop"],
    "--scheduler": ["linear"],
}
_GOOD = {"--lr": "0.01", "--width": "2", "--seed": "3", "--limit": "32", "--epochs": "1", "--batch-size": "16"}


@pytest.mark.parametrize("case", range(40))
def test_random_bad_command_lines(case, capsys):
    rng = random.Random(1000 + case)
    argv = []
    for option in rng.sample(sorted(_GOOD), rng.randint(0, 3)):
        argv += [option, _GOOD[option]]
    bad = rng.choice(sorted(_BAD))
    argv += [bad, rng.choice(_BAD[bad])]
    rng.shuffle(pairs := [argv[i : i + 2] for i in range(0, len(argv), 2)])
    argv = [x for pair in pairs for x in pair]
    rc, out, err = run_main(argv, capsys)
    assert rc == 2, (argv, out, err)
    assert "error:" in err and "Traceback" not in err and "epoch 1/" not in out, (argv, err)


def test_bad_data_dir_files_are_errors(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(np.zeros(3, np.uint8).tobytes())
    rc, out, err = run_main(["--data", "mnist", "--data-dir", tmp_path], capsys)
    assert_refused(rc, out, err, "not found in")
