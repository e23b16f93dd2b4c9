"""The CUDA kernel loader: finds ``cuda_kernels/``, compiles each file once per device, launches.

Each ``.cu`` file holds templated ``__global__`` kernels with no ``#include`` (NVRTC has no
system headers). A file is compiled with :data:`COMPILE_OPTIONS` into one
``cupy.RawModule`` per (device, file), instantiated for ``float`` and ``double`` through
name expressions (``"im2col_kernel<float>"``). Launches go to the current device and
stream; callers enter :func:`gpulayers.backend.device_scope` of their input first.

The op launchers (``gpulayers/ops/conv2d_cuda.py``, ``max_pool2d_cuda.py``) obtain every kernel
through :func:`get_function`, which is the one place a test replaces to run the very same
launch code on a CPU emulation of the kernels (``tests/kernel_harness``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BLOCK_SIZE",
    "COMPILE_OPTIONS",
    "KERNEL_DTYPES",
    "MAX_GRID",
    "get_function",
    "kernel_dir",
    "kernel_names",
    "kernel_source",
    "launch",
    "launch_config",
    "name_expression",
]

#: Options every kernel file is compiled with (the compile tests use the same tuple).
COMPILE_OPTIONS: tuple[str, ...] = ("-std=c++17",)

#: Array dtypes the kernels are instantiated for, and the C type of each.
KERNEL_DTYPES: dict[str, str] = {"float32": "float", "float64": "double"}

#: Threads per block for every 1-D launch.
BLOCK_SIZE = 256

#: Most blocks a launch asks for; grid-stride loops cover any remaining elements.
MAX_GRID = 65535

_TEMPLATE_KERNEL = re.compile(r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(")

_sources: dict[str, str] = {}
_modules: dict[tuple[int, str], Any] = {}
_functions: dict[tuple[int, str, str], Any] = {}


def kernel_dir(package_dir: Path | None = None) -> Path:
    """The folder holding the ``.cu`` files.

    ``gpulayers/cuda_kernels/`` in an installed package (the wheel maps ``cuda_kernels/``
    there), else ``cuda_kernels/`` at the root of a source checkout. ``package_dir`` stands
    for the ``gpulayers`` package folder (tests point it elsewhere).
    """
    here = Path(__file__).resolve().parent if package_dir is None else Path(package_dir)
    for candidate in (here / "cuda_kernels", here.parent / "cuda_kernels"):
        if candidate.is_dir() and any(candidate.glob("*.cu")):
            return candidate
    raise FileNotFoundError(
        f"gpulayers: cannot find the CUDA kernel sources (looked in {here / 'cuda_kernels'} and "
        f"{here.parent / 'cuda_kernels'}); reinstall the package"
    )


def kernel_source(filename: str) -> str:
    """The text of one kernel file, e.g. ``"conv2d.cu"`` (read once)."""
    text = _sources.get(filename)
    if text is None:
        text = (kernel_dir() / filename).read_text()
        _sources[filename] = text
    return text


def kernel_names(source: str) -> list[str]:
    """Names of the ``template <typename T> __global__`` kernels in a source, in file order."""
    return _TEMPLATE_KERNEL.findall(source)


def name_expression(kernel: str, dtype: Any) -> str:
    """``"kernel<float>"`` / ``"kernel<double>"`` for an array dtype; TypeError for others."""
    ctype = KERNEL_DTYPES.get(np.dtype(dtype).name)
    if ctype is None:
        raise TypeError(f"gpulayers CUDA kernels: expected float32 or float64 arrays, got dtype {np.dtype(dtype)}")
    return f"{kernel}<{ctype}>"


def _module(device_id: int, filename: str):
    key = (device_id, filename)
    module = _modules.get(key)
    if module is None:
        import cupy  # noqa: PLC0415 - only on the GPU path

        source = kernel_source(filename)
        expressions = [f"{k}<{c}>" for k in kernel_names(source) for c in KERNEL_DTYPES.values()]
        module = cupy.RawModule(code=source, options=COMPILE_OPTIONS, name_expressions=expressions)
        _modules[key] = module
    return module


def get_function(filename: str, kernel: str, dtype: Any):
    """The compiled kernel ``kernel<T>`` of ``filename`` for ``dtype``, on the current device.

    Returns a callable ``f(grid, block, args)`` (a ``cupy.RawKernel``-like function that
    launches on the current stream). The first call per device compiles the whole file;
    a compile failure raises ``RuntimeError`` carrying NVRTC's log.
    """
    import cupy  # noqa: PLC0415

    expression = name_expression(kernel, dtype)
    device_id = cupy.cuda.Device().id
    key = (device_id, filename, expression)
    function = _functions.get(key)
    if function is None:
        try:  # RawModule compiles lazily, on the first get_function
            function = _module(device_id, filename).get_function(expression)
        except Exception as exc:  # CompileException (with NVRTC's log), or NVRTC/driver missing
            _modules.pop((device_id, filename), None)
            log = exc.get_message() if hasattr(exc, "get_message") else f"{type(exc).__name__}: {exc}"
            raise RuntimeError(
                f"gpulayers: failed to compile cuda_kernels/{filename} ({expression}) with NVRTC options "
                f"{COMPILE_OPTIONS}:\n{log}"
            ) from exc
        _functions[key] = function
    return function


def launch_config(total: int, block: int = BLOCK_SIZE, max_grid: int | None = None) -> tuple[int, int]:
    """(blocks, threads per block) for ``total`` work items, the grid capped at ``max_grid``
    (default :data:`MAX_GRID`); the kernels' grid-stride loops cover the rest."""
    cap = MAX_GRID if max_grid is None else max_grid
    blocks = min(cap, max(1, -(-int(total) // block)))
    return blocks, block


def launch(filename: str, kernel: str, dtype: Any, total: int, args: tuple) -> None:
    """Launch ``kernel<T>`` over ``total`` items (one grid-stride 1-D launch); no-op when empty.

    ``args`` must match the C signature exactly: C-contiguous arrays for pointers,
    ``np.int32`` for ``int``, ``np.int64`` for ``long long``.
    """
    if total <= 0:
        return  # a zero-size grid is an invalid launch
    function = get_function(filename, kernel, dtype)
    blocks, threads = launch_config(total)
    function((blocks,), (threads,), args)
