"""CPU emulation of the CUDA kernels (g++ + a shim header), for tests without a GPU."""

from .harness import HarnessKernel, HarnessLibrary, LaunchError, build, parse_kernels

__all__ = ["HarnessKernel", "HarnessLibrary", "LaunchError", "build", "parse_kernels"]
