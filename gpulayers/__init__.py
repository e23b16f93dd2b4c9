"""gpulayers: neural-network layers with explicit forward and backward passes.

NumPy on the CPU, CuPy with custom CUDA kernels on NVIDIA GPUs; PyTorch's names, defaults,
layouts and state_dict keys.

    import gpulayers as gl
    from gpulayers import nn, optim, functional as F
"""

from . import cuda, data, functional, models, nn, optim
from .backend import (
    cuda_is_available,
    default_device,
    get_array_module,
    manual_seed,
    to_device,
    to_numpy,
)
from .debug import debug_mode, is_debug, set_debug
from .gradcheck import gradcheck

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "cuda",
    "cuda_is_available",
    "data",
    "debug_mode",
    "default_device",
    "functional",
    "get_array_module",
    "gradcheck",
    "is_debug",
    "manual_seed",
    "models",
    "nn",
    "optim",
    "set_debug",
    "to_device",
    "to_numpy",
]
