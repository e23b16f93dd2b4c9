"""Run the CUDA kernels of ``cuda_kernels/`` on the CPU, for tests on machines without a GPU.

Each ``.cu`` file is compiled by g++ after ``shim.h`` (which defines away the CUDA qualifiers
and emulates the index variables), together with generated ``extern "C"`` wrappers that run
a kernel instantiation over every (block, thread) of a given grid and block: serially, or,
for a cooperative kernel (one whose body uses ``__shared__`` or ``__syncthreads``), one block
at a time with a fiber per thread that switches at every barrier (see ``shim.h``). A barrier
that not every thread of a block reaches raises :class:`BarrierError`.
:class:`HarnessLibrary` loads the result with ctypes and hands out kernels through
:meth:`HarnessLibrary.get_function`, whose signature matches
:func:`gpulayers.kernels.get_function`, so tests can swap it in and drive the real launchers.

A harness kernel checks its arguments the way CuPy would need them to be right: arrays must
be C-contiguous NumPy arrays of the instantiation's dtype (int32 for ``int*``), ``int``
parameters take ``np.int32`` and ``long long`` parameters ``np.int64`` (CuPy passes a Python
int as ``long long`` and a Python float as ``double``, so anything else is a bug on the GPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim.h"
REPO_ROOT = HERE.parent.parent
KERNEL_DIR = REPO_ROOT / "cuda_kernels"

CTYPES = {"float": np.float32, "double": np.float64}
CXX_FLAGS = ["-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"]
OPT_FLAGS = ["-O2"]
SANITIZE_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]

_KERNEL = re.compile(r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(([^)]*)\)", re.S)
# An object-like macro (no parameter list), its body continued over lines ending in a backslash.
_OBJECT_MACRO = re.compile(r"^#define\s+(\w+)[ \t]+((?:.*\\\n)*.*)$", re.M)


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its C declaration, name and kind."""

    decl: str
    name: str
    kind: str  # "T*", "int*", "int", "long long", "T"
    const: bool


@dataclass(frozen=True)
class KernelSignature:
    name: str
    params: tuple[Param, ...]
    cooperative: bool = False  # the body uses __shared__ or __syncthreads


def _parse_param(decl: str) -> Param:
    text = " ".join(decl.split())
    match = re.fullmatch(r"(.*?)(\w+)", text)
    if match is None:
        raise ValueError(f"cannot parse kernel parameter {decl!r}")
    type_text, name = match.group(1), match.group(2)
    const = "const" in type_text.split()
    base = " ".join(w for w in type_text.replace("*", " * ").split() if w not in ("const", "__restrict__"))
    kinds = {
        "T *": "T*",
        "int *": "int*",
        "long long *": "long long*",
        "int": "int",
        "long long": "long long",
        "T": "T",
    }
    if base not in kinds:
        raise ValueError(f"unsupported kernel parameter type {type_text.strip()!r} in {decl!r}")
    return Param(text, name, kinds[base], const)


def _body(source: str, start: int) -> str:
    """The brace-delimited body that follows ``start`` in ``source``."""
    opening = source.index("{", start)
    depth = 0
    for i in range(opening, len(source)):
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[opening : i + 1]
    raise ValueError("unbalanced braces in a kernel body")


def parse_kernels(source: str) -> list[KernelSignature]:
    """The ``template <typename T> __global__`` kernels of a source, with their parameters."""
    macros = {name: body.replace("\\\n", " ") for name, body in _OBJECT_MACRO.findall(source)}
    kernels = []
    for match in _KERNEL.finditer(source):
        name, params = match.group(1), match.group(2)
        for macro, expansion in macros.items():  # a parameter list may use a macro (shared parameters)
            params = re.sub(rf"\b{macro}\b", expansion, params)
        body = _body(source, match.end())
        cooperative = "__syncthreads" in body or "__shared__" in body
        kernels.append(KernelSignature(name, tuple(_parse_param(p) for p in params.split(",")), cooperative))
    return kernels


def _wrapper_name(kernel: str, ctype: str) -> str:
    return f"gl_launch_{kernel}_{ctype}"


def wrapper_source(cu_path: Path, signatures: list[KernelSignature]) -> str:
    """The C++ translation unit: shim, the kernel file, and one extern "C" launcher per instantiation.

    Each launcher returns NULL, or the message of the error the launch met (a barrier mismatch).
    """
    lines = [f'#include "{SHIM}"', f'#include "{cu_path}"', ""]
    for sig in signatures:
        runner = "run_grid_cooperative" if sig.cooperative else "run_grid"
        for ctype in CTYPES:
            params = ", ".join(re.sub(r"\bT\b", ctype, p.decl) for p in sig.params)
            names = ", ".join(p.name for p in sig.params)
            lines += [
                f"template void {sig.name}<{ctype}>({params});  // emitted, so its mangled name can be checked",
                f'extern "C" const char* {_wrapper_name(sig.name, ctype)}(unsigned gx, unsigned gy, unsigned gz, '
                f"unsigned bx, unsigned by, unsigned bz, {params}) {{",
                "  gl_harness::launch_error[0] = '\\0';",
                f"  gl_harness::{runner}(dim3(gx, gy, gz), dim3(bx, by, bz),",
                f"                      [&]() {{ {sig.name}<{ctype}>({names}); }});",
                "  return gl_harness::launch_error[0] ? gl_harness::launch_error : nullptr;",
                "}",
                "",
            ]
    return "\n".join(lines)


def build(cu_path: Path, out_dir: Path, *, sanitize: bool = False) -> Path:
    """Compile one kernel file into a shared library under ``out_dir`` (reused when unchanged)."""
    cu_path = Path(cu_path).resolve()
    signatures = parse_kernels(cu_path.read_text())
    source = wrapper_source(cu_path, signatures)
    flags = CXX_FLAGS + (SANITIZE_FLAGS if sanitize else OPT_FLAGS)
    digest = hashlib.sha256("\0".join([source, cu_path.read_text(), SHIM.read_text(), *flags]).encode()).hexdigest()[
        :16
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"{cu_path.stem}{'_asan' if sanitize else ''}_{digest}.so"
    if not lib.exists():
        wrapper = out_dir / f"{lib.stem}.cpp"
        wrapper.write_text(source)
        cmd = ["g++", *flags, "-o", str(lib), str(wrapper)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"harness build failed: {' '.join(cmd)}\n{result.stderr}")
    return lib


def sanitizer_env() -> dict[str, str] | None:
    """The environment for a child process that loads an ASan/UBSan build, or None without the runtimes.

    The sanitizer runtimes are preloaded (Python itself is not built with them) and Python's own
    allocator is off so that NumPy buffers come from malloc, where ASan can watch their bounds.
    """
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            return None
        libs.append(path)
    env = dict(os.environ)
    env.update(
        PYTHONMALLOC="malloc",
        LD_PRELOAD=" ".join(libs),
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
    )
    return env


class LaunchError(TypeError):
    """A kernel was launched with arguments that would be wrong on the GPU."""


class BarrierError(RuntimeError):
    """A cooperative kernel's ``__syncthreads()`` was not reached by every thread of a block."""


class HarnessKernel:
    """One instantiation (``kernel<float>`` or ``kernel<double>``), callable like a CuPy kernel."""

    def __init__(self, library: HarnessLibrary, sig: KernelSignature, ctype: str, function) -> None:
        self.library = library
        self.sig = sig
        self.ctype = ctype
        self.dtype = np.dtype(CTYPES[ctype])
        self.function = function
        argtypes = [ctypes.c_uint] * 6
        for p in sig.params:
            if p.kind in ("T*", "int*", "long long*"):
                argtypes.append(ctypes.c_void_p)
            elif p.kind == "int":
                argtypes.append(ctypes.c_int)
            elif p.kind == "long long":
                argtypes.append(ctypes.c_longlong)
            else:
                argtypes.append(ctypes.c_float if ctype == "float" else ctypes.c_double)
        function.argtypes = argtypes
        function.restype = ctypes.c_char_p

    @property
    def name(self) -> str:
        return f"{self.sig.name}<{self.ctype}>"

    def _check_array(self, p: Param, arg, want: np.dtype) -> int:
        if not isinstance(arg, np.ndarray):
            raise LaunchError(f"{self.name}: parameter {p.name} ({p.decl}) needs an array, got {type(arg).__name__}")
        if arg.dtype != want:
            raise LaunchError(f"{self.name}: parameter {p.name} needs dtype {want}, got {arg.dtype}")
        if not arg.flags.c_contiguous:
            raise LaunchError(f"{self.name}: parameter {p.name} must be C-contiguous (kernels ignore strides)")
        if not p.const and not arg.flags.writeable:
            raise LaunchError(f"{self.name}: parameter {p.name} is written but the array is read-only")
        return arg.ctypes.data

    def _convert(self, p: Param, arg):
        if p.kind == "T*":
            return self._check_array(p, arg, self.dtype)
        if p.kind == "int*":
            return self._check_array(p, arg, np.dtype(np.int32))
        if p.kind == "long long*":
            return self._check_array(p, arg, np.dtype(np.int64))
        want = {"int": np.int32, "long long": np.int64, "T": self.dtype.type}[p.kind]
        if type(arg) is not want:
            raise LaunchError(
                f"{self.name}: parameter {p.name} ({p.decl}) needs {want.__name__}, got {type(arg).__name__} {arg!r}"
            )
        return arg.item()

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None) -> None:
        grid3, block3 = _dims(self.name, "grid", grid), _dims(self.name, "block", block)
        if block3[0] * block3[1] * block3[2] > 1024:
            raise LaunchError(f"{self.name}: a block holds at most 1024 threads, got {block3}")
        if max(grid3[1:]) > 65535 or grid3[0] > 2**31 - 1:
            raise LaunchError(f"{self.name}: grid {grid3} exceeds CUDA's limits")
        if len(args) != len(self.sig.params):
            raise LaunchError(f"{self.name}: expected {len(self.sig.params)} arguments, got {len(args)}")
        values = [self._convert(p, a) for p, a in zip(self.sig.params, args, strict=True)]
        self.library.launches.append((self.name, grid3, block3))
        error = self.function(*grid3, *block3, *values)
        if error is not None:
            raise BarrierError(f"{self.name}: {error.decode()}")


def _dims(name: str, what: str, value) -> tuple[int, int, int]:
    dims = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(dims) <= 3 or any(not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise LaunchError(f"{name}: {what} must be 1 to 3 positive ints, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


class HarnessLibrary:
    """The harness builds of every kernel file, with a :meth:`get_function` like the loader's.

    Args:
        out_dir: where the shared libraries are built (and reused).
        sanitize: build with AddressSanitizer and UBSan (the process must preload their runtimes).
        grid_override: if set, a ``(grid, block)`` pair used for every launch instead of the one
            the launcher chose, e.g. ``(3, 4)`` to exercise the grid-stride loops.
    """

    def __init__(self, out_dir: Path, *, sanitize: bool = False, grid_override: tuple[int, int] | None = None):
        self.kernels: dict[tuple[str, str, str], HarnessKernel] = {}
        self.signatures: dict[str, list[KernelSignature]] = {}
        self.launches: list[tuple[str, tuple, tuple]] = []
        self.grid_override = grid_override
        self._libs = []
        for cu in sorted(KERNEL_DIR.glob("*.cu")):
            lib = ctypes.CDLL(str(build(cu, out_dir, sanitize=sanitize)))
            self._libs.append(lib)
            sigs = parse_kernels(cu.read_text())
            self.signatures[cu.name] = sigs
            for sig in sigs:
                for ctype in CTYPES:
                    fn = getattr(lib, _wrapper_name(sig.name, ctype))
                    self.kernels[(cu.name, sig.name, ctype)] = HarnessKernel(self, sig, ctype, fn)

    def kernel(self, filename: str, kernel: str, dtype) -> HarnessKernel:
        ctype = {"float32": "float", "float64": "double"}.get(np.dtype(dtype).name)
        if ctype is None:
            raise TypeError(f"no {kernel} instantiation for dtype {np.dtype(dtype)}")
        return self.kernels[(filename, kernel, ctype)]

    def get_function(self, filename: str, kernel: str, dtype):
        """Drop-in for :func:`gpulayers.kernels.get_function`."""
        k = self.kernel(filename, kernel, dtype)
        if self.grid_override is None:
            return k
        grid, block = self.grid_override
        if k.sig.cooperative:  # the block size is part of such a kernel's tiling: shrink the grid only
            return lambda _grid, launcher_block, args, shared_mem=0, stream=None: k((grid,), launcher_block, args)
        return lambda _grid, _block, args, shared_mem=0, stream=None: k((grid,), (block,), args)
