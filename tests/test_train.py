"""fit/evaluate, checkpoints (atomic, pickle-free, bit-identical resume), the CLI and the info command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import data, models, nn, optim, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    tr, te = data.load_digits()
    return tr.subset(320), te.subset(96)


def build(digits, device="cpu", seed=0, epochs=4):
    """A fresh model, loaders, loss, optimiser and scheduler, as a new process would build them."""
    tr, te = digits
    gl.manual_seed(seed)
    model = models.small_cnn(1, 10, 8, width=8, hidden=32, dropout=0.3).to(device)
    stats = (tr.mean, tr.std)
    loader = data.DataLoader(tr, 32, shuffle=True, seed=seed + 11, device=device, normalize=stats)
    test_loader = data.DataLoader(te, 64, device=device, normalize=stats)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = optim.CosineAnnealingLR(opt, T_max=epochs)
    return model, loader, test_loader, nn.CrossEntropyLoss(), opt, sched


def run_fit(parts, epochs, **kwargs):
    model, loader, test_loader, crit, opt, sched = parts
    return train.fit(model, loader, test_loader, crit, opt, epochs, scheduler=sched, progress=False, log=None, **kwargs)


# ------------------------------------------------------------------------------------------------ fit
def test_fit_learns_and_history_shape(digits, device):
    parts = build(digits, device)
    history = run_fit(parts, 3)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert history[0]["lr"] == pytest.approx(0.1)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.5  # chance is 0.1
    assert parts[0].training  # fit leaves the model in training mode


def test_evaluate_matches_manual_count_and_restores_modes(digits):
    model, _, test_loader, crit, *_ = build(digits)
    model[11].eval()  # one module in eval mode: evaluate must restore exactly this
    result = train.evaluate(model, test_loader, crit)
    model.eval()
    x, y = data.DataLoader(digits[1], 1000, normalize=(digits[0].mean, digits[0].std)).__iter__().__next__()
    logits = model(x)
    assert result["accuracy"] == np.mean(logits.argmax(1) == y)
    assert result["count"] == 96
    assert result["loss"] == pytest.approx(crit(logits, y), rel=1e-5)
    model.train()
    model[11].eval()
    train.evaluate(model, test_loader)
    assert model.training and model[0].training and not model[11].training


@pytest.mark.parametrize("tqdm_present", [True, False])
def test_fit_with_progress_bar_or_without_tqdm(digits, monkeypatch, capsys, tqdm_present):
    if not tqdm_present:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    model, loader, test_loader, crit, opt, _ = build(digits)
    lines = []
    history = train.fit(model, loader, test_loader, crit, opt, 1, progress=True, log=lines.append)
    assert len(history) == 1 and lines[0].startswith("epoch 1/1  train loss") and "img/s" in lines[0]


# ------------------------------------------------------------------------------------------------ checkpoints
class FakeState:
    """An object with a nested state dict of numbers and arrays (as an optimiser might hold)."""

    def __init__(self, state=None):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def assert_same(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def test_checkpoint_roundtrip_nested_state_without_pickle(tmp_path):
    gl.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    nested = {
        "state": {0: {"step": np.int64(7), "exp_avg": np.arange(6.0).reshape(2, 3)}, 1: {"m": np.float32(0.5)}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1], "nesterov": False, "x": None}],
        "nan": float("nan"),
        "name": "adam",
    }
    path = tmp_path / "ck.npz"
    loader = data.DataLoader((np.zeros((4, 1, 1, 1), np.float32), np.zeros(4, int)), seed=5)
    loader.epoch = 3
    train.save_checkpoint(
        path,
        model,
        FakeState(nested),
        FakeState({"last_epoch": 2}),
        epoch=2,
        loader=loader,
        history=[{"epoch": 1, "test_accuracy": 0.25}],
        extra={"note": "hi"},
    )
    next_draw = gl.backend.cpu_rng().random()  # what the restored generator must produce first
    with np.load(path, allow_pickle=False) as f:  # every entry loads with pickle disabled
        assert all(f[k].dtype != object for k in f.files)
    fresh = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt, sched = FakeState(), FakeState()
    loader2 = data.DataLoader((np.zeros((4, 1, 1, 1), np.float32), np.zeros(4, int)), seed=9)
    gl.manual_seed(99)
    state = train.load_checkpoint(path, fresh, opt, sched, loader2)
    assert gl.backend.cpu_rng().random() == next_draw
    assert_same(opt.state, nested)
    assert sched.state == {"last_epoch": 2}
    assert (state["epoch"], state["extra"], state["history"][0]["test_accuracy"]) == (2, {"note": "hi"}, 0.25)
    assert loader2.state_dict() == {"seed": 5, "epoch": 3}
    for k, v in model.state_dict().items():
        assert np.array_equal(fresh.state_dict()[k], v)
    gl.manual_seed(99)
    train.load_checkpoint(path, restore_rng=False)
    assert gl.backend.cpu_rng().random() != next_draw


def test_checkpoint_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    path = tmp_path / "ck.npz"
    train.save_checkpoint(path, model, epoch=1)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(path, model, epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(tmp_path / "new.npz", model, epoch=2)
    assert not (tmp_path / "new.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_checkpoint_refuses_objects(tmp_path):
    with pytest.raises(TypeError, match="cannot store a set in optimizer state"):
        train.save_checkpoint(tmp_path / "ck.npz", nn.Linear(1, 1), FakeState({"a": {1, 2}}))
    assert list(tmp_path.iterdir()) == []


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        train.load_checkpoint(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a gpulayers checkpoint"):
        train.load_checkpoint(tmp_path / "other.npz")
    train.save_checkpoint(tmp_path / "ck.npz", nn.Linear(2, 3))
    with pytest.raises(RuntimeError, match="shape mismatch for key 'weight'"):
        train.load_checkpoint(tmp_path / "ck.npz", nn.Linear(3, 3))


def test_resume_is_bit_identical(digits, tmp_path):
    straight = build(digits, seed=0)
    history_straight = run_fit(straight, 4)

    ck = tmp_path / "run" / "ck.npz"
    first = build(digits, seed=0)
    run_fit(first, 2, checkpoint=ck)
    del first
    resumed = build(digits, seed=1234)  # a new process: other initial weights, other RNG state
    history_resumed = run_fit(resumed, 4, checkpoint=ck, resume=True)

    assert history_resumed == history_straight
    for (ka, a), (kb, b) in zip(straight[0].state_dict().items(), resumed[0].state_dict().items(), strict=True):
        assert ka == kb and a.dtype == b.dtype and np.array_equal(a, b), ka
    assert_same(straight[4].state_dict(), resumed[4].state_dict())
    assert_same(straight[5].state_dict(), resumed[5].state_dict())
    assert train.load_checkpoint(ck, restore_rng=False)["epoch"] == 4


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_tiny_run_writes_metrics_plot_and_resumes(tmp_path, capsys):
    metrics, plot, ck = tmp_path / "m.json", tmp_path / "curves.png", tmp_path / "ck.npz"
    argv = ["--epochs", "1", "--limit", "160", "--width", "4", "--no-progress", "--device", "cpu"]
    rc = train.main([*argv, "--metrics-json", str(metrics), "--plot", str(plot), "--checkpoint", str(ck)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "device: cpu (asked for)" in out and "final test accuracy:" in out
    m = json.loads(metrics.read_text())
    assert len(m["history"]) == 1 and 0.0 <= m["test_accuracy"] <= 1.0
    assert m["test_accuracy"] == m["history"][-1]["test_accuracy"] and m["device"] == "cpu"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ck.is_file()
    rc = train.main([*argv[2:], "--epochs", "2", "--checkpoint", str(ck), "--resume"])
    out = capsys.readouterr().out
    assert rc == 0 and "resumed from" in out and "epoch 2/2" in out and "epoch 1/2" not in out
    rc = train.main([*argv[2:], "--epochs", "3", "--checkpoint", str(ck), "--resume", "--optimizer", "adam"])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot resume from {ck}: it was written with other options (Adam.load_state_dict" in err


@pytest.mark.skipif(gl.cuda_is_available(), reason="checks the message on a machine without a GPU")
def test_cli_auto_device_says_why_cpu(capsys):
    assert train.choose_device("auto")[1].startswith("CUDA not usable: ")
    rc = train.main(["--device", "cuda", "--epochs", "1", "--limit", "64"])
    assert rc == 2 and "--device cuda: CUDA is not usable:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--data", "mnist"], "train-images-idx3-ubyte"),
        (["--data", "cifar10", "--data-dir", "/nonexistent"], "cifar-10-python.tar.gz"),
        (["--epochs", "0"], "argument --epochs: expected an integer in 1..1000000"),
    ],
)
def test_cli_bad_input_exit_code_2(argv, message, capsys):
    assert train.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_plot_without_matplotlib(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert train.main(["--plot", "x.png", "--epochs", "1"]) == 2
    assert 'pip install "gpulayers[train]"' in capsys.readouterr().err


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_cli_module_entry_point(tmp_path):
    proc = _run(
        "-m",
        "gpulayers.train",
        "--epochs",
        "1",
        "--limit",
        "96",
        "--width",
        "2",
        "--no-progress",
        "--metrics-json",
        str(tmp_path / "m.json"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout and json.loads((tmp_path / "m.json").read_text())["history"]


def test_info_command():
    proc = _run("-m", "gpulayers.info")
    assert proc.returncode == 0, proc.stderr
    for label in ("gpulayers:", "numpy:", "python:", "cupy:", "backend:", "gpu:", "kernels compile:"):
        assert label in proc.stdout
    if not gl.cuda_is_available():
        from gpulayers.nvrtc import load_nvrtc

        # Without a GPU the kernels are compiled offline with NVRTC when it is installed.
        expected = "kernels compile: yes, offline with NVRTC" if load_nvrtc() else "kernels compile: not checked"
        assert expected in proc.stdout


@pytest.mark.slow
def test_default_digits_run_reaches_97_percent(tmp_path):
    proc = _run(
        "-m",
        "gpulayers.train",
        "--no-progress",
        "--device",
        "cpu",
        "--metrics-json",
        str(tmp_path / "m.json"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "m.json").read_text())["test_accuracy"] >= 0.97
