"""GPU-only settings and tools: which GEMM the convolutions and linear layers use.

``set_conv_algorithm`` chooses, for CuPy arrays, between

* ``"implicit_gemm"``: the kernels of ``cuda_kernels/conv2d_igemm.cu``, which gather their
  operands straight from the NCHW arrays (no column matrix, no cuBLAS; a step built from them
  can be captured as a CUDA graph);
* ``"im2col"``: a column matrix, cuBLAS GEMMs through CuPy, and ``col2im``;
* ``"auto"`` (the default): ``"direct"`` kernels when every output channel reads a single
  input channel (depthwise convolutions, one-channel inputs), else :data:`DEFAULT_GEMM`.

The choice is read at each forward; backward follows what its forward used.
"""

from __future__ import annotations

__all__ = ["CONV_ALGORITHMS", "DEFAULT_GEMM", "get_conv_algorithm", "set_conv_algorithm"]

#: What :func:`set_conv_algorithm` accepts.
CONV_ALGORITHMS = ("auto", "implicit_gemm", "im2col", "direct")

#: The GEMM ``"auto"`` uses for convolutions with several input channels per group, and for Linear.
DEFAULT_GEMM = "implicit_gemm"

_conv_algorithm = "auto"


def set_conv_algorithm(algorithm: str) -> None:
    """Choose the GPU algorithm of conv2d, conv_transpose2d and linear (see the module doc).

    Args:
        algorithm: one of :data:`CONV_ALGORITHMS`. ``"direct"`` applies to convolutions only;
            linear layers then use ``"implicit_gemm"``.
    """
    global _conv_algorithm
    if not isinstance(algorithm, str) or algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"set_conv_algorithm: expected one of {', '.join(CONV_ALGORITHMS)}, got {algorithm!r}")
    _conv_algorithm = algorithm


def get_conv_algorithm() -> str:
    """The algorithm set by :func:`set_conv_algorithm` (``"auto"`` unless changed)."""
    return _conv_algorithm
