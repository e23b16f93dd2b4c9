"""gpulayers: neural-network layers with explicit forward and backward passes.

NumPy on the CPU, CuPy with custom CUDA kernels on NVIDIA GPUs; PyTorch's names, defaults,
layouts and state_dict keys.

    import gpulayers as gl
    from gpulayers import nn, optim, functional as F
"""

from . import cuda, data, functional, models, nn, optim, threads
from .backend import (
    cuda_is_available,
    default_device,
    get_array_module,
    manual_seed,
    to_device,
    to_numpy,
)
from .debug import debug_mode, is_debug, set_debug
from .grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .gradcheck import gradcheck
from .threads import get_num_threads, set_num_threads

threads.tune_allocator()

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "cuda",
    "cuda_is_available",
    "data",
    "debug_mode",
    "default_device",
    "enable_grad",
    "functional",
    "get_array_module",
    "get_num_threads",
    "gradcheck",
    "is_debug",
    "is_grad_enabled",
    "manual_seed",
    "models",
    "nn",
    "no_grad",
    "optim",
    "set_debug",
    "set_grad_enabled",
    "set_num_threads",
    "to_device",
    "to_numpy",
]
