"""What the README promises about installing, summary, checkpoints and export holds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import gpulayers as gl
from gpulayers import models, train

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_install_from_a_checkout_first_registry_marked_future():
    install = README[README.index("## Install") : README.index("## Quick start")]
    assert "not on a package registry yet" in install and "pip install -e ." in install
    for line in install.splitlines():
        if "pip install gpulayers" in line:
            assert "Future" in line or "future" in line, line


def test_summary_is_said_to_return_a_string():
    assert "summary(model, (1, 28, 28))` prints" not in README
    assert "returns the table as a string" in README
    assert isinstance(gl.nn.summary(models.small_cnn(1, 10, 8, width=2), (1, 8, 8)), str)


def test_checkpoint_key_layout_is_as_documented(tmp_path):
    assert "`model/<name>`" in README and "python -m gpulayers.export" in README
    path = tmp_path / "ck.npz"
    model = models.small_cnn(1, 10, 8, width=2)
    train.save_checkpoint(path, model, epoch=1)
    with np.load(path) as f:
        keys = set(f.files)
    assert {f"model/{k}" for k in model.state_dict()} <= keys and "meta" in keys
    assert all(re.fullmatch(r"model/.+|optimizer/\d+|scheduler/\d+|meta", k) for k in keys)


def test_speed_figures_name_the_machine():
    speed = README[README.index("## Speed") :]
    assert "cpu_train_step.py" in speed and "Intel(R) Xeon(R) Processor" in speed and "shared" in speed
