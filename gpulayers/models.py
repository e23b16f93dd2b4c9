"""Ready-made models built from the library's layers."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from . import nn
from .nn.init import kaiming_normal

__all__ = ["small_cnn", "resnet20", "basic_block", "MODELS"]


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


def basic_block(in_channels: int, out_channels: int, stride: int = 1, *, layers: Any = None) -> nn.Sequential:
    """A ResNet basic block: ``relu(body(x) + shortcut(x))``.

    ``body`` is Conv3x3(stride)-BN-ReLU-Conv3x3-BN; the shortcut is the identity, or a 1x1
    convolution with the block's stride followed by batch norm where the shape changes.

    Args:
        in_channels, out_channels, stride: the block's channels and the stride of its first convolution.
        layers: the namespace of the layers (``gpulayers.nn`` by default); it must also have a
            ``Residual(body, shortcut)`` container, so a PyTorch twin needs one added.

    Returns:
        ``Sequential(Residual(body, shortcut), ReLU())``: keys ``0.body.0.weight``, ``0.shortcut.0.weight``, ...
    """
    L = nn if layers is None else layers  # noqa: N806 - reads like the namespace it stands for
    body = L.Sequential(
        L.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        L.BatchNorm2d(out_channels),
        L.ReLU(),
        L.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        L.BatchNorm2d(out_channels),
    )
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = L.Sequential(L.Conv2d(in_channels, out_channels, 1, stride, bias=False), L.BatchNorm2d(out_channels))
    return L.Sequential(L.Residual(body, shortcut), L.ReLU())


def resnet20(num_classes: int = 10, in_channels: int = 3, *, layers: Any = None) -> nn.Sequential:
    """The CIFAR ResNet-20 of He et al. (2016), "Deep Residual Learning for Image Recognition", section 4.2.

    Conv3x3(16)-BN-ReLU, then three stages of three basic blocks with 16, 32 and 64 channels (the
    first block of stages 2 and 3 halves the size with stride 2 and has a 1x1 convolution + batch
    norm projection shortcut), global average pooling and a linear classifier: 19 convolutions and
    one linear layer, 272,474 parameters for 10 classes. Convolution weights are drawn with
    Kaiming-normal (fan_out, ReLU gain), batch norm starts at weight 1 and bias 0.

    Keys: ``conv1``, ``bn1``, ``layer1`` .. ``layer3`` (each block ``layerK.J.0.body.*`` and
    ``layerK.J.0.shortcut.*``), ``fc``.

    Args:
        num_classes: logits out. Defaults to 10.
        in_channels: image channels (3 for CIFAR-10, 1 for digits/MNIST). Defaults to 3.
        layers: the namespace of the layers, as for :func:`basic_block`. With another library's
            layers the weights keep that library's initialisation.

    Shape:
        Input (N, in_channels, H, W), any H, W >= 1 (32x32 for CIFAR-10, 8x8 digits work); output
        (N, num_classes) logits.
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"resnet20: expected {name} to be an int >= 1, got {value!r}")

    L = nn if layers is None else layers  # noqa: N806 - reads like the namespace it stands for

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return L.Sequential(*(basic_block(c, cout, s, layers=L) for c, s in ((cin, stride), (cout, 1), (cout, 1))))

    model = L.Sequential(
        OrderedDict(
            conv1=L.Conv2d(in_channels, 16, 3, 1, 1, bias=False),
            bn1=L.BatchNorm2d(16),
            relu=L.ReLU(),
            layer1=stage(16, 16, 1),
            layer2=stage(16, 32, 2),
            layer3=stage(32, 64, 2),
            avgpool=L.AdaptiveAvgPool2d(1),
            flatten=L.Flatten(),
            fc=L.Linear(64, num_classes),
        )
    )
    if L is not nn:
        return model
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            mod.weight.data = kaiming_normal(mod.weight.shape, "fan_out")
    return model


MODELS = {"small-cnn": small_cnn, "resnet20": resnet20}
