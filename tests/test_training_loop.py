"""Training-loop features: on_epoch_end may stop training (False or StopTraining), the per-epoch
CSV log, --early-stop on the test loss, the metrics history and the plot's content."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import gpulayers as gl
from gpulayers import data, models, nn, optim, train
from gpulayers._cli_log import EpochLog, best_epoch
from gpulayers.training import StopTraining

TINY = ["--limit", "64", "--width", "2", "--no-progress", "--device", "cpu"]


def parts():
    tr, te = data.load_digits()
    tr, te = tr.subset(64), te.subset(32)
    gl.manual_seed(0)
    model = models.small_cnn(1, 10, 8, width=2, hidden=8)
    opt = optim.SGD(model.parameters(), lr=0.05)
    loader = data.DataLoader(tr, 32, shuffle=True, seed=1)
    return model, loader, data.DataLoader(te, 32), nn.CrossEntropyLoss(), opt


@pytest.mark.parametrize("how", ["false", "raise"])
def test_on_epoch_end_stops_training_and_keeps_history(how, tmp_path):
    model, loader, test_loader, crit, opt = parts()
    seen = []

    def hook(record, _seconds):
        seen.append(record["epoch"])
        if record["epoch"] == 2:
            if how == "raise":
                raise StopTraining("enough")
            return False
        return None

    ck = tmp_path / "ck.npz"
    history = train.fit(
        model, loader, test_loader, crit, opt, 5, progress=False, log=None, on_epoch_end=hook, checkpoint=ck
    )
    assert [r["epoch"] for r in history] == [1, 2] == seen
    assert train.load_checkpoint(ck, restore_rng=False)["epoch"] == 2


def test_best_epoch_and_early_stop_unit():
    rows = [{"epoch": i + 1, "test_loss": v, "train_loss": 1.0} for i, v in enumerate([1.0, 0.5, 0.7, 0.5, 0.9])]
    assert best_epoch(rows) == 2  # the earliest of a tie
    assert best_epoch([]) is None
    log = EpochLog(patience=2)
    log(rows[0], 0.1)
    log(rows[1], 0.1)
    log(rows[2], 0.1)
    with pytest.raises(StopTraining, match="no better test loss for 2 epochs"):
        log(rows[3], 0.1)
    assert log.stopped_early


def test_log_csv_and_metrics_history(tmp_path, capsys):
    log, metrics = tmp_path / "logs" / "run.csv", tmp_path / "m.json"
    rc = train.main([*TINY, "--epochs", "3", "--log-csv", str(log), "--metrics-json", str(metrics)])
    assert rc == 0, capsys.readouterr().err
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    m = json.loads(metrics.read_text())
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and len(m["history"]) == 3
    for row, rec in zip(rows, m["history"], strict=True):
        for key in ("lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert float(row[key]) == pytest.approx(rec[key], rel=1e-12)
        assert float(row["seconds"]) >= 0
    assert m["best_epoch"] == best_epoch(m["history"]) and m["stopped_early"] is False


def test_log_csv_continues_after_resume(tmp_path, capsys):
    log, ck = tmp_path / "run.csv", tmp_path / "ck.npz"
    assert train.main([*TINY, "--epochs", "2", "--log-csv", str(log), "--checkpoint", str(ck)]) == 0
    assert train.main([*TINY, "--epochs", "3", "--log-csv", str(log), "--checkpoint", str(ck), "--resume"]) == 0
    capsys.readouterr()
    with open(log, newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_early_stop_on_the_command_line(tmp_path, capsys):
    metrics = tmp_path / "m.json"
    argv = [*TINY, "--epochs", "25", "--lr", "3", "--scheduler", "none", "--early-stop", "2"]
    assert train.main([*argv, "--metrics-json", str(metrics)]) == 0
    out = capsys.readouterr().out
    m = json.loads(metrics.read_text())
    assert m["stopped_early"] is True and "training stopped after epoch" in out
    assert len(m["history"]) < 25 and m["history"][-1]["epoch"] - m["best_epoch"] == 2


def test_plot_shows_percent_lr_and_best_epoch():
    from gpulayers.plotting import plot_figure

    history = [
        {"epoch": e, "lr": lr, "train_loss": tl, "train_accuracy": ta, "test_loss": vl, "test_accuracy": va}
        for e, lr, tl, ta, vl, va in [
            (1, 0.1, 2.0, 0.3, 1.5, 0.4),
            (2, 0.05, 1.0, 0.6, 0.9, 0.7),
            (3, 0.0, 0.8, 0.7, 1.1, 0.65),
        ]
    ]
    fig = plot_figure(history)
    ax_loss, ax_acc, ax_lr = fig.axes
    assert ax_acc.get_ylabel() == "accuracy (%)" and ax_lr.get_ylabel() == "learning rate"
    acc_lines = {line.get_label(): list(line.get_ydata()) for line in ax_acc.lines}
    assert acc_lines["test"] == pytest.approx([40, 70, 65]) and acc_lines["train"] == pytest.approx([30, 60, 70])
    assert list(ax_lr.lines[0].get_ydata()) == [0.1, 0.05, 0.0]
    for ax in fig.axes:
        best = [line for line in ax.lines if line.get_label().startswith("best epoch")]
        assert best and np.allclose(best[0].get_xdata(), 2)


def test_plot_format_checked_before_training(tmp_path, capsys):
    rc = train.main([*TINY, "--plot", str(tmp_path / "curves.xyz")])
    out, err = capsys.readouterr()
    assert rc == 2 and "matplotlib cannot write .xyz files" in err and "epoch 1/" not in out
