"""Ready-made models built from the library's layers."""

from __future__ import annotations

from typing import Any

from . import nn

__all__ = ["small_cnn", "MODELS"]


def small_cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    width: int = 32,
    dropout: float = 0.5,
    hidden: int = 128,
    *,
    conv_bias: bool = False,
    layers: Any = None,
) -> nn.Sequential:
    """The reference small CNN: (Conv3x3-BN-ReLU-MaxPool2) x 2, Flatten, Linear-ReLU-Dropout, Linear.

    The convolutions keep the size (padding 1) and each pool halves it, so the classifier sees
    ``2 * width`` maps of ``image_size // 4`` (8x8 digits -> 2x2, 28x28 MNIST -> 7x7, 32x32
    CIFAR -> 8x8). By default the convolutions have no bias: the batch norm after each one has its own.

    Args:
        in_channels: image channels (1 for digits/MNIST, 3 for CIFAR-10).
        num_classes: number of classes (logits out).
        image_size: height and width of the (square) input images, at least 4.
        width: channels of the first convolution (the second has twice as many).
        dropout: dropout probability before the last layer.
        hidden: units of the hidden fully connected layer.
        conv_bias: give the convolutions a bias too.
        layers: the namespace the layers come from: ``gpulayers.nn`` (default) or anything with the
            same names and arguments, e.g. ``torch.nn`` to build the PyTorch twin of this model
            (same state_dict keys and shapes) for parity checks.

    Shape:
        Input (N, in_channels, image_size, image_size); output (N, num_classes) logits.
    """
    if image_size < 4:
        raise ValueError(f"small_cnn: expected image_size >= 4 (two 2x2 pools), got {image_size}")
    if not isinstance(conv_bias, bool):
        raise TypeError(f"small_cnn: expected conv_bias to be a bool, got {type(conv_bias).__name__}")
    for name, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("width", width),
        ("hidden", hidden),
    ):
        if value < 1:
            raise ValueError(f"small_cnn: expected {name} >= 1, got {value}")
    side = image_size // 2 // 2
    L = nn if layers is None else layers  # noqa: N806 - reads like the namespace it stands for
    return L.Sequential(
        L.Conv2d(in_channels, width, 3, padding=1, bias=conv_bias),
        L.BatchNorm2d(width),
        L.ReLU(),
        L.MaxPool2d(2),
        L.Conv2d(width, 2 * width, 3, padding=1, bias=conv_bias),
        L.BatchNorm2d(2 * width),
        L.ReLU(),
        L.MaxPool2d(2),
        L.Flatten(),
        L.Linear(2 * width * side * side, hidden),
        L.ReLU(),
        L.Dropout(dropout),
        L.Linear(hidden, num_classes),
    )


MODELS = {"small-cnn": small_cnn}
