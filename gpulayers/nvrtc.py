"""A minimal ctypes binding of NVRTC, to compile the kernels as CuPy would, without a GPU.

CuPy's own compile helpers ask the driver for the current device, so they fail on a machine
without one; NVRTC itself needs no device. The library comes from the ``nvidia-cuda-nvrtc``
wheel (found through ``cuda.pathfinder``, which CuPy depends on) or a CUDA toolkit.
``python -m gpulayers.info`` and the compile tests use it through :func:`compile_all`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path


def load_nvrtc() -> ctypes.CDLL | None:
    """The NVRTC shared library, or None when none is installed."""
    try:
        from cuda import pathfinder  # noqa: PLC0415

        return ctypes.CDLL(pathfinder.load_nvidia_dynamic_lib("nvrtc").abs_path)
    except Exception:
        pass
    candidates = [ctypes.util.find_library("nvrtc")]
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            candidates += sorted(str(p) for p in Path(root, "lib64").glob("libnvrtc.so*"))
    for candidate in candidates:
        if candidate:
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
