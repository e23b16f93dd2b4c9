"""The reference small CNN that the benchmarks time, built the same way in both libraries.

MNIST-sized input 1x28x28: Conv2d(1,32,3,p=1)-BN2d-ReLU-MaxPool2, Conv2d(32,64,3,p=1)-BN2d-ReLU-MaxPool2,
Flatten, Linear(3136,128)-ReLU-Dropout(0.5), Linear(128,10): the library's ``gl.models.small_cnn`` with
biased convolutions. Imported by the scripts beside it (``python benchmarks/<name>.py`` puts this folder
on ``sys.path``).
"""

from __future__ import annotations

from gpulayers.models import small_cnn


def reference_cnn(nn):
    """The reference CNN from ``nn``: ``gpulayers.nn`` or ``torch.nn`` (same names and arguments)."""
    return small_cnn(1, 10, 28, width=32, dropout=0.5, hidden=128, conv_bias=True, layers=nn)


def build_models(seed: int = 0):
    """``(ours, theirs)`` on the CPU: the reference CNN in both libraries, gpulayers loaded with
    PyTorch's initial weights."""
    import torch

    import gpulayers as gl

    torch.manual_seed(seed)
    gl.manual_seed(seed)
    theirs = reference_cnn(torch.nn)
    ours = reference_cnn(gl.nn)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs
