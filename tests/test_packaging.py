"""Packaging: the README's commands, CI running exactly them, the kernels shipping inside the wheel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands() -> list[str]:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_packaging_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    assert len(commands) >= 2, "the README must open with the main-job and the test commands"
    main_job, tests = commands[0], commands[1]
    assert "gpulayers.train" in main_job or "train_digits" in main_job
    assert "pytest" in tests
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().splitlines()
    assert tests in ci, "the test command in .ci/run must be the README's, verbatim"


def test_packaging_gpu_mark_is_registered(pytestconfig):
    markers = pytestconfig.getini("markers")
    assert any(m.startswith("gpu:") for m in markers)


@pytest.mark.slow
def test_packaging_wheel_ships_the_kernels(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheels = list(tmp_path.glob("gpulayers-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    sources = sorted(n for n in os.listdir(os.path.join(ROOT, "cuda_kernels")) if n.endswith(".cu"))
    assert sources, "cuda_kernels/ holds no .cu file"
    for src in sources:
        assert f"gpulayers/cuda_kernels/{src}" in names, names

    # Installed from the wheel (not the checkout), the loader finds the shipped kernels.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheels[0])],
        check=True,
        timeout=300,
    )
    probe = (
        "import gpulayers, gpulayers.kernels as k, os, json; "
        "print(json.dumps([gpulayers.__file__, str(k.kernel_dir()), sorted(os.listdir(k.kernel_dir()))]))"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    import json

    pkg_file, kdir, files = json.loads(res.stdout)
    assert pkg_file.startswith(str(target))
    assert kdir.startswith(str(target))
    assert sorted(files) == [f for f in sources] or set(sources) <= set(files)


def test_packaging_readme_quick_start_runs():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.+?)\n```", text, flags=re.S)
    assert blocks, "the README has no Python quick start"
    namespace: dict = {}
    exec(compile(blocks[0], "README quick start", "exec"), namespace)
    # The step ran: a finite loss and a gradient on every parameter.
    loss = namespace["loss"]
    assert loss.shape == () and float(loss) == float(loss)  # a 0-d array on the input's device
    assert all(p.grad is not None for p in namespace["model"].parameters())
