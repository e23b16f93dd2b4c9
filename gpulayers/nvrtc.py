"""A minimal ctypes binding of NVRTC, to compile the kernels as CuPy would, without a GPU.

CuPy's own compile helpers ask the driver for the current device, so they fail on a machine
without one; NVRTC itself needs no device. The library comes from the ``nvidia-cuda-nvrtc``
wheel (found in its own files, so CuPy is not needed), ``cuda.pathfinder`` (which comes with CuPy)
or a CUDA toolkit.
``python -m gpulayers.info`` and the compile tests use it through :func:`compile_all`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The NVRTC library's file name (not its ``-builtins`` helper): Linux sonames and Windows DLLs.
_LIBRARY_NAME = re.compile(r"libnvrtc\.so(\.\d+)*|nvrtc64_\d+_0\.dll")


def wheel_libraries() -> list[str]:
    """Paths of the NVRTC library inside the installed ``nvidia-cuda-nvrtc`` wheel (empty without it).

    The wheel's file list names it wherever the release puts it (``nvidia/cu13/lib/`` for CUDA 13,
    ``nvidia/cuda_nvrtc/lib/`` for CUDA 12); an install without that list is searched in the
    ``nvidia`` namespace directories instead.
    """
    try:
        files = importlib.metadata.files("nvidia-cuda-nvrtc") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [str(f.locate()) for f in files if _LIBRARY_NAME.fullmatch(f.name)]
    if not found:
        spec = importlib.util.find_spec("nvidia")
        for root in (spec.submodule_search_locations or []) if spec else []:
            for pattern in ("*/lib/*nvrtc*", "*/bin/*nvrtc*"):
                found += [str(p) for p in Path(root).glob(pattern) if _LIBRARY_NAME.fullmatch(p.name)]
    return sorted(p for p in found if os.path.isfile(p))


def _candidates() -> Iterator[str]:
    """Where NVRTC may be, best first; each source is asked only when the ones before it failed."""
    yield from wheel_libraries()
    try:
        from cuda import pathfinder  # noqa: PLC0415

        yield pathfinder.load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception:
        pass
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            yield from sorted(str(p) for p in Path(root, "lib64").glob("libnvrtc.so*"))


def load_nvrtc() -> ctypes.CDLL | None:
    """The NVRTC shared library, or None when none is installed.

    Looked for in this order: the ``nvidia-cuda-nvrtc`` wheel, ``cuda.pathfinder``, the system's
    library path, then ``lib64/`` under ``$CUDA_PATH``, ``$CUDA_HOME`` and ``/usr/local/cuda``.
    """
    for candidate in _candidates():
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


@dataclass
class NvrtcResult:
    ok: bool
    log: str
    binary: bytes
    lowered_names: dict[str, str]


class Nvrtc:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        prog_p = ctypes.POINTER(ctypes.c_void_p)
        lib.nvrtcCreateProgram.argtypes = [
            prog_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.nvrtcAddNameExpression.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcGetProgramLogSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetProgramLog.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nvrtcGetCUBINSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetCUBIN.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nvrtcGetLoweredName.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcDestroyProgram.argtypes = [prog_p]
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed: {self.lib.nvrtcGetErrorString(status).decode()}")

    def compile(self, source: str, name: str, options: list[str], name_expressions: list[str]) -> NvrtcResult:
        """Compile to a cubin (``options`` should hold ``-arch=sm_XX``), as CuPy's RawModule does."""
        lib = self.lib
        prog = ctypes.c_void_p()
        self._check(
            lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
            "nvrtcCreateProgram",
        )
        try:
            for expr in name_expressions:
                self._check(lib.nvrtcAddNameExpression(prog, expr.encode()), "nvrtcAddNameExpression")
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            status = lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            buf = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
            log = buf.value.decode(errors="replace")
            if status != 0:
                return NvrtcResult(False, log, b"", {})
            self._check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            binary = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetCUBIN(prog, binary), "nvrtcGetCUBIN")
            lowered = {}
            for expr in name_expressions:
                out = ctypes.c_char_p()
                self._check(lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)), "nvrtcGetLoweredName")
                lowered[expr] = out.value.decode()
            return NvrtcResult(True, log, binary.raw, lowered)
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


#: Options CuPy adds to every RawModule compile (denormals flushed to zero).
CUPY_ADDED_OPTIONS: tuple[str, ...] = ("-ftz=true",)


def compile_all(arch: str = "80", nvrtc: Nvrtc | None = None) -> list[tuple[str, NvrtcResult]]:
    """Compile every kernel file for ``sm_<arch>`` with the loader's options and name expressions.

    Returns:
        ``(file name, result)`` per ``.cu`` file; RuntimeError when no NVRTC library is found.
    """
    from . import kernels  # noqa: PLC0415 - kernels imports nothing from here; keep the import lazy

    if nvrtc is None:
        lib = load_nvrtc()
        if lib is None:
            raise RuntimeError("no NVRTC library found (pip install nvidia-cuda-nvrtc, or install the CUDA toolkit)")
        nvrtc = Nvrtc(lib)
    options = [*kernels.COMPILE_OPTIONS, *CUPY_ADDED_OPTIONS, f"-arch=sm_{arch}"]
    results = []
    for path in sorted(kernels.kernel_dir().glob("*.cu")):
        source = kernels.kernel_source(path.name)
        exprs = [kernels.name_expression(k, d) for k in kernels.kernel_names(source) for d in kernels.KERNEL_DTYPES]
        results.append((path.name, nvrtc.compile(source, path.name, options, exprs)))
    return results
