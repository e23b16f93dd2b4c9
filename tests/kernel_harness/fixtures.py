"""The pytest fixtures of the kernel harness, shared by every test module that runs the kernels on the CPU.

``tests/conftest.py`` loads this module as a plugin. Fixtures:

* ``harness_libraries`` (session): ``{"launcher": ..., "grid3x4": ...}``, the g++ builds of every kernel file,
  launched with the launchers' own grids or with a 3 x 4 grid (far too small: the grid-stride loops run).
* ``harness``: one of the two in place of ``gpulayers.kernels.get_function`` (parametrised over both),
  its launch record cleared.
* ``cp``: the CuPy stand-in (``tests/cupy_standin.py``) installed as ``cupy``, its custom kernels run by
  ``harness`` (so over both grids); a test module may override it to add its own setup.
* ``graph_cp``: the stand-in with the launchers' grids and convolutions by implicit GEMM (what a
  captured CUDA graph runs: no cuBLAS).
* ``asan_build`` (session): ``(build_dir, env)``, every kernel file built with AddressSanitizer/UBSan for a
  child process started with :func:`run_asan`; skips where g++ has no sanitizer runtimes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpulayers import kernels

from .harness import HarnessLibrary, build, sanitizer_env

GRIDS = {"launcher": None, "grid3x4": (3, 4)}
ASAN_RUN = Path(__file__).resolve().parent / "asan_run.py"


@pytest.fixture(scope="session")
def harness_libraries(tmp_path_factory) -> dict[str, HarnessLibrary]:
    build_dir = tmp_path_factory.mktemp("kernel_harness_build")
    return {name: HarnessLibrary(build_dir, grid_override=grid) for name, grid in GRIDS.items()}


@pytest.fixture(params=list(GRIDS))
def harness(request, harness_libraries, monkeypatch) -> HarnessLibrary:
    """The harness in place of the GPU loader, with the launchers' grids or a 3 x 4 grid."""
    library = harness_libraries[request.param]
    library.launches.clear()
    monkeypatch.setattr(kernels, "get_function", library.get_function)
    return library


@pytest.fixture
def cp(harness, monkeypatch):
    """The CuPy stand-in as ``cupy``, the library's GPU path running on NumPy and the harness."""
    from cupy_standin import install  # tests/ is on sys.path (rootdir conftest)

    with install(harness, monkeypatch) as module:
        yield module


@pytest.fixture
def graph_cp(monkeypatch, harness_libraries):
    """The CuPy stand-in, custom kernels on the harness (launcher grids), convolutions by implicit GEMM."""
    from cupy_standin import install

    from gpulayers import cuda as gl_cuda

    with install(harness_libraries["launcher"], monkeypatch) as module:
        gl_cuda.set_conv_algorithm("implicit_gemm")
        try:
            yield module
        finally:
            gl_cuda.set_conv_algorithm("auto")


@pytest.fixture(scope="session")
def asan_build(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    env = sanitizer_env()
    if env is None:
        pytest.skip("g++ has no AddressSanitizer/UBSan runtime here")
    build_dir = tmp_path_factory.mktemp("kernel_harness_asan")
    for cu in sorted(kernels.kernel_dir().glob("*.cu")):
        build(cu, build_dir, sanitize=True)  # compiled here, loaded by the sanitized child
    return build_dir, env


def run_asan(asan_build: tuple[Path, dict[str, str]], mode: str) -> subprocess.CompletedProcess:
    """``asan_run.py`` in ``mode`` on the sanitized build, in a child process with the sanitizer runtimes."""
    directory, env = asan_build
    return subprocess.run(
        [sys.executable, str(ASAN_RUN), str(directory), mode], capture_output=True, text=True, env=env, timeout=300
    )
