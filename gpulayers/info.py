"""``python -m gpulayers.info``: versions, the backend chosen and why, the GPU, and the kernels' state.

Paste its output into bug reports.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

from . import __version__, backend

__all__ = ["collect", "main"]


def _cupy_version() -> str:
    try:
        import cupy  # noqa: PLC0415
    except Exception as exc:  # not installed, or a broken install
        return f"not importable ({type(exc).__name__}: {exc})"
    return cupy.__version__


def _gpu_name() -> str | None:
    if not backend.cuda_is_available():
        return None
    try:
        import cupy  # noqa: PLC0415

        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        free, total = cupy.cuda.runtime.memGetInfo()
        return f"{name} (device {dev.id}, compute capability {dev.compute_capability}, {total / 2**30:.1f} GiB)"
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def _nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        return "not on PATH"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
        release = next((line.strip() for line in out.splitlines() if "release" in line), "version unknown")
    except (OSError, subprocess.SubprocessError) as exc:
        release = f"did not run ({type(exc).__name__})"
    return f"{path} ({release})"


def _compile_kernels() -> str:
    """Compile every kernel of every ``.cu`` file for every dtype on the current GPU."""
    try:
        from . import kernels  # noqa: PLC0415 - written for the GPU path; import only when needed

        folder = kernels.kernel_dir()
        start = time.perf_counter()
        count = 0
        for path in sorted(folder.glob("*.cu")):
            for name in kernels.kernel_names(kernels.kernel_source(path.name)):
                for dtype in kernels.KERNEL_DTYPES:
                    kernels.get_function(path.name, name, dtype)
                    count += 1
        return f"yes: {count} kernel instantiations from {folder} compiled in {time.perf_counter() - start:.1f} s"
    except Exception as exc:
        text = str(exc).strip().splitlines()
        return f"NO: {type(exc).__name__}: {text[0] if text else ''}" + ("\n" + "\n".join(text[1:20]) if text else "")


def _compile_kernels_offline(arch: str = "80") -> str:
    """Without a GPU: compile every kernel with NVRTC for ``sm_<arch>``, as the loader would."""
    from . import nvrtc  # noqa: PLC0415

    try:
        start = time.perf_counter()
        results = nvrtc.compile_all(arch)
    except Exception as exc:
        return f"not checked: no GPU, and NVRTC is unusable here ({exc})"
    failed = [f"{name}:\n{result.log}" for name, result in results if not result.ok]
    if failed:
        return "NO (NVRTC, sm_" + arch + "): " + "\n".join(failed)
    files = ", ".join(name for name, _ in results)
    return f"yes, offline with NVRTC for sm_{arch} ({files}; {time.perf_counter() - start:.1f} s; no GPU to run them)"


def collect(compile_kernels: bool = True) -> dict[str, Any]:
    """The report as an ordered dict of label -> text."""
    info: dict[str, Any] = {
        "gpulayers": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "numpy": np.__version__,
        "cupy": _cupy_version(),
    }
    available = backend.cuda_is_available()
    reason = backend.cuda_unavailable_reason()
    try:
        chosen = backend.default_device()
        why = f"GPULAYERS_DEVICE={os.environ['GPULAYERS_DEVICE']}" if os.environ.get("GPULAYERS_DEVICE") else reason
        kind = "CuPy (GPU)" if chosen.startswith("cuda") else "NumPy (CPU)"
        info["backend"] = f"{kind}, device {chosen!r} ({why})"
    except (RuntimeError, ValueError) as exc:
        info["backend"] = f"error: {exc}"
    info["cuda available"] = "yes" if available else f"no: {reason}"
    info["gpu"] = _gpu_name() or "none"
    info["nvcc"] = _nvcc()
    if not compile_kernels:
        info["kernels compile"] = "not checked (--no-compile)"
    elif available:
        info["kernels compile"] = _compile_kernels()
    else:
        info["kernels compile"] = _compile_kernels_offline()
    return info


def main(argv: list[str] | None = None) -> int:
    """Print the report; exit code 1 when the kernels fail to compile on a GPU, else 0."""
    parser = argparse.ArgumentParser(prog="python -m gpulayers.info", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-compile", action="store_true", help="skip compiling the CUDA kernels (on a GPU, or offline with NVRTC)"
    )
    args = parser.parse_args(argv)
    info = collect(compile_kernels=not args.no_compile)
    width = max(len(k) for k in info)
    for key, value in info.items():
        lines = str(value).splitlines() or [""]
        print(f"{key + ':':<{width + 2}}{lines[0]}")
        for extra in lines[1:]:
            print(" " * (width + 2) + extra)
    return 1 if str(info["kernels compile"]).startswith("NO") else 0


if __name__ == "__main__":
    raise SystemExit(main())
