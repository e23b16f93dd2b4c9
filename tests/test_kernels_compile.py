"""Every kernel file compiles for sm_80 and sm_90, warning-free, with the loader's own options.

Two independent compilers, no GPU needed:

* NVRTC (what CuPy uses at run time; no system headers, so a stray ``#include`` or ``INFINITY``
  fails here exactly as it would on the GPU), with the loader's options, CuPy's ``-ftz=true``,
  and the loader's name expressions, producing cubins as CuPy does. Needs ``libnvrtc``
  (the ``nvidia-cuda-nvrtc`` wheel or a CUDA toolkit).
* nvcc, on the source followed by explicit instantiations for float and double,
  ``--ptx -Werror all-warnings``.

Each check skips, with its reason, only when its compiler is missing; the test of the
pair fails when neither is present in CI, and the NVRTC checks must run (CuPy or not) wherever
the ``nvidia-cuda-nvrtc`` wheel is installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from kernel_harness.harness import CTYPES, build, parse_kernels

from gpulayers import kernels, nvrtc
from gpulayers.nvrtc import CUPY_ADDED_OPTIONS, Nvrtc, compile_all, load_nvrtc

KERNEL_FILES = sorted(p.name for p in kernels.kernel_dir().glob("*.cu"))
ARCHS = [80, 90]

_nvrtc_lib = load_nvrtc()
NVRTC = Nvrtc(_nvrtc_lib) if _nvrtc_lib is not None else None
NVCC = shutil.which("nvcc")

requires_nvrtc = pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found (pip install nvidia-cuda-nvrtc)")
requires_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def _expressions(filename: str) -> list[str]:
    source = kernels.kernel_source(filename)
    return [f"{k}<{c}>" for k in kernels.kernel_names(source) for c in kernels.KERNEL_DTYPES.values()]


def test_kernel_files_present_and_templated():
    assert {"conv2d.cu", "conv2d_igemm.cu", "max_pool2d.cu", "optim.cu"} <= set(KERNEL_FILES)
    package = Path(kernels.__file__).resolve().parent
    for filename in KERNEL_FILES:  # one name finds the kernels and their launchers
        stem = filename.removesuffix(".cu")
        assert list(package.rglob(f"{stem}_cuda.py")), f"{filename}: no launcher module {stem}_cuda.py"
    for filename in KERNEL_FILES:
        source = kernels.kernel_source(filename)
        assert not re.search(r"^\s*#\s*include", source, re.M), f"{filename}: NVRTC has no system headers"
        names = kernels.kernel_names(source)
        assert names, filename
        # The loader's parser and the harness's agree on the kernels.
        assert names == [sig.name for sig in parse_kernels(source)]
        declared = re.findall(r"^[^/\n]*__global__", source, re.M)  # outside comments
        assert len(declared) == len(names), f"{filename}: every kernel must be a T template"


def test_some_compiler_is_available():
    if NVRTC is None and NVCC is None:
        pytest.skip("neither NVRTC (pip install nvidia-cuda-nvrtc) nor nvcc is installed: kernels not compiled")
    assert NVRTC is not None or NVCC is not None


def _nvrtc_wheel_installed() -> bool:
    try:
        importlib.metadata.distribution("nvidia-cuda-nvrtc")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_nvrtc_wheel = pytest.mark.skipif(not _nvrtc_wheel_installed(), reason="nvidia-cuda-nvrtc is not installed")


@requires_nvrtc_wheel
def test_nvrtc_checks_run_wherever_the_wheel_is_installed():
    """With the wheel present the NVRTC compile checks below must run, not skip."""
    assert nvrtc.wheel_libraries(), "nvidia-cuda-nvrtc is installed but its libnvrtc was not found in it"
    assert NVRTC is not None, "nvidia-cuda-nvrtc is installed but libnvrtc does not load: the NVRTC checks skip"


_WITHOUT_CUPY = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("cupy", "cupy_backends", "cuda"):
                raise ImportError(f"{name} is hidden for this test")

    sys.meta_path.insert(0, Blocked())
    try:
        import cupy  # the control: CuPy must really be out of reach
    except ImportError:
        pass
    else:
        raise SystemExit("cupy was importable")
    """
)


@requires_nvrtc_wheel
def test_nvrtc_compiles_every_kernel_without_cupy():
    """The wheel alone is enough: CuPy and cuda.pathfinder hidden, NVRTC still loads and compiles."""
    code = _WITHOUT_CUPY + textwrap.dedent(
        """
        from gpulayers.nvrtc import compile_all
        results = compile_all("80")
        assert results and all(r.ok for _, r in results), [(f, r.log) for f, r in results if not r.ok]
        assert not any(m.split(".")[0] in ("cupy", "cuda") for m in sys.modules), "CuPy got loaded"
        print("compiled", len(results))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"compiled {len(KERNEL_FILES)}" in proc.stdout


@pytest.mark.parametrize("layout", ["cu13/lib", "cuda_nvrtc/lib"])
def test_nvrtc_wheel_layouts_without_a_file_list(tmp_path, monkeypatch, layout):
    """Without the wheel's file list the ``nvidia`` namespace directories are searched (CUDA 13 and 12 layouts)."""
    lib = tmp_path / "nvidia" / layout
    lib.mkdir(parents=True)
    for name in ("libnvrtc.so.13", "libnvrtc-builtins.so.13.0", "libnvrtc.alt.so.13"):
        (lib / name).write_bytes(b"")

    def no_files(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_files)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = nvrtc.wheel_libraries()
    assert str(lib / "libnvrtc.so.13") in found
    assert not any("builtins" in p or ".alt." in p for p in found)


@requires_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", KERNEL_FILES)
def test_nvrtc_compiles_as_the_loader_does(filename, arch):
    options = [*kernels.COMPILE_OPTIONS, *CUPY_ADDED_OPTIONS, f"-arch=sm_{arch}"]
    exprs = _expressions(filename)
    result = NVRTC.compile(kernels.kernel_source(filename), filename, options, exprs)
    assert result.ok, f"NVRTC failed on {filename} for sm_{arch}:\n{result.log}"
    assert "warning" not in result.log.lower(), result.log
    assert result.binary[:4] == b"\x7fELF"  # a cubin
    assert set(result.lowered_names) == set(exprs)
    for name in result.lowered_names.values():
        assert name.encode() in result.binary


@requires_nvrtc
def test_nvrtc_reports_errors():
    """The compile check can fail: a header include is fatal under NVRTC."""
    result = NVRTC.compile("#include <cfloat>\n", "bad.cu", ["-arch=sm_80"], [])
    assert not result.ok
    assert "cfloat" in result.log


@requires_nvrtc
@pytest.mark.parametrize("filename", KERNEL_FILES)
def test_harness_runs_the_signatures_nvrtc_compiles(filename, tmp_path_factory):
    """g++ (the CPU harness) and NVRTC mangle each instantiation identically, so both see the
    same parameter types in the same order as the launchers are checked against."""
    options = [*kernels.COMPILE_OPTIONS, "-arch=sm_80"]
    lowered = NVRTC.compile(kernels.kernel_source(filename), filename, options, _expressions(filename)).lowered_names
    lib = build(kernels.kernel_dir() / filename, tmp_path_factory.mktemp("mangling"))
    symbols = subprocess.run(["nm", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    for expr, mangled in lowered.items():
        assert re.search(rf"\b{re.escape(mangled)}\b", symbols), f"{expr} ({mangled}) differs in the harness"


def _nvcc_source(filename: str) -> str:
    source = kernels.kernel_source(filename)
    lines = [source, "", "// Explicit instantiations, as the loader's name expressions request."]
    for sig in parse_kernels(source):
        for ctype in CTYPES:
            params = ", ".join(re.sub(r"\bT\b", ctype, p.decl) for p in sig.params)
            lines.append(f"template __global__ void {sig.name}<{ctype}>({params});")
    return "\n".join(lines) + "\n"


@requires_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", KERNEL_FILES)
def test_nvcc_compiles_without_warnings(filename, arch, tmp_path: Path):
    src = tmp_path / filename
    src.write_text(_nvcc_source(filename))
    ptx = tmp_path / "out.ptx"
    cmd = [NVCC, "--ptx", f"-arch=sm_{arch}", *kernels.COMPILE_OPTIONS, "-ftz=true"]
    cmd += ["-Werror", "all-warnings", "-o", str(ptx), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stderr
    entries = re.findall(r"\.entry\s+(\w+)", ptx.read_text())
    assert len(entries) == 2 * len(kernels.kernel_names(kernels.kernel_source(filename)))


@requires_nvcc
def test_nvcc_check_can_fail(tmp_path: Path):
    """-Werror all-warnings turns a warning (an unused variable) into a failure."""
    src = tmp_path / "warn.cu"
    src.write_text("__global__ void k(float* y) { int unused = 3; y[0] = 1.0f; }\n")
    cmd = [NVCC, "--ptx", "-arch=sm_80", *kernels.COMPILE_OPTIONS, "-Werror", "all-warnings"]
    result = subprocess.run([*cmd, "-o", str(tmp_path / "w.ptx"), str(src)], capture_output=True, text=True)
    assert result.returncode != 0


# ----------------------------------------------------------------------------------------------
# The loader's logic, with a stand-in for CuPy (no GPU needed)
# ----------------------------------------------------------------------------------------------
def test_kernel_dir_source_checkout_and_installed_layout(tmp_path: Path):
    checkout = tmp_path / "checkout"
    (checkout / "gpulayers").mkdir(parents=True)
    (checkout / "cuda_kernels").mkdir()
    (checkout / "cuda_kernels" / "a.cu").write_text("")
    assert kernels.kernel_dir(checkout / "gpulayers") == checkout / "cuda_kernels"
    installed = tmp_path / "site-packages" / "gpulayers"
    (installed / "cuda_kernels").mkdir(parents=True)
    (installed / "cuda_kernels" / "a.cu").write_text("")
    assert kernels.kernel_dir(installed) == installed / "cuda_kernels"
    with pytest.raises(FileNotFoundError, match="cannot find the CUDA kernel sources"):
        kernels.kernel_dir(tmp_path / "empty" / "gpulayers")
    assert (kernels.kernel_dir() / "conv2d.cu").is_file()


def test_loader_builds_one_module_per_device_and_file(fake_cupy, monkeypatch):
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setattr(kernels, "_functions", {})
    f32 = kernels.get_function("max_pool2d.cu", "max_pool2d_forward_kernel", np.float32)
    f64 = kernels.get_function("max_pool2d.cu", "max_pool2d_backward_kernel", np.dtype("float64"))
    assert f32 == ("function", 0, "max_pool2d_forward_kernel<float>")
    assert f64 == ("function", 0, "max_pool2d_backward_kernel<double>")
    assert kernels.get_function("max_pool2d.cu", "max_pool2d_forward_kernel", np.float32) is f32
    (module,) = fake_cupy.RawModule.created
    assert module.options == kernels.COMPILE_OPTIONS
    assert module.code == kernels.kernel_source("max_pool2d.cu")
    assert sorted(module.name_expressions) == sorted(_expressions("max_pool2d.cu"))
    fake_cupy.cuda.Device(1).use()  # kernels are per device
    assert kernels.get_function("max_pool2d.cu", "max_pool2d_forward_kernel", np.float32)[1] == 1
    assert len(fake_cupy.RawModule.created) == 2
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.get_function("max_pool2d.cu", "max_pool2d_forward_kernel", np.float16)


def test_loader_turns_compile_failures_into_runtime_errors(fake_cupy, monkeypatch):
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setattr(kernels, "_functions", {})
    monkeypatch.setitem(kernels._sources, "broken.cu", "template <typename T> __global__ void k(T* y) { oops; }")
    with pytest.raises(RuntimeError, match=r"broken\.cu.*-std=c\+\+17(.|\n)*identifier \"oops\" is undefined"):
        kernels.get_function("broken.cu", "k", np.float32)
    assert kernels._modules == {}  # not cached: a fixed source can be retried


def test_launch_skips_empty_work(monkeypatch):
    def fail(*args):
        raise AssertionError("no kernel should be fetched for empty work")

    monkeypatch.setattr(kernels, "get_function", fail)
    kernels.launch("conv2d.cu", "im2col_kernel", np.float32, 0, ())


@requires_nvrtc
def test_compile_all_reports_every_file_and_a_broken_one(tmp_path, monkeypatch):
    results = dict(compile_all("80", NVRTC))
    assert sorted(results) == KERNEL_FILES and all(r.ok for r in results.values())
    (tmp_path / "broken.cu").write_text("template <typename T> __global__ void k(T* x) { x[0] = undefined_name; }\n")
    monkeypatch.setattr(kernels, "kernel_dir", lambda: tmp_path)
    [(name, result)] = compile_all("80", NVRTC)
    assert name == "broken.cu" and not result.ok and "undefined_name" in result.log
