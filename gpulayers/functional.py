"""The stable functional API: stateless forward/backward pairs that the layers use.

``y, cache = conv2d_forward(x, weight, bias, stride, padding, dilation, groups)`` and
``dx, dw, db = conv2d_backward(dy, cache)``; the same shape of pair for every op. Each
dispatches on the array type: NumPy to vectorised CPU code, CuPy to the GPU.
"""

from .ops.activation import (
    gelu_backward,
    gelu_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    log_softmax_backward,
    log_softmax_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    silu_backward,
    silu_forward,
    softmax_backward,
    softmax_forward,
    tanh_backward,
    tanh_forward,
)
from .ops.avg_pool2d import (
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    avg_pool2d_backward,
    avg_pool2d_forward,
)
from .ops.bce_loss import bce_with_logits_backward, bce_with_logits_forward
from .ops.conv2d import conv2d_backward, conv2d_forward
from .ops.conv_transpose2d import conv_transpose2d_backward, conv_transpose2d_forward
from .ops.dropout import dropout2d_backward, dropout2d_forward, dropout_backward, dropout_forward
from .ops.group_norm import group_norm_backward, group_norm_forward
from .ops.layer_norm import layer_norm_backward, layer_norm_forward
from .ops.linear import linear_backward, linear_forward
from .ops.loss import cross_entropy_backward, cross_entropy_forward, mse_loss_backward, mse_loss_forward
from .ops.max_pool2d import max_pool2d_backward, max_pool2d_forward
from .ops.nll_loss import nll_loss_backward, nll_loss_forward
from .ops.normalization import batch_norm_backward, batch_norm_forward
from .ops.special import erf, normal_cdf

__all__ = [
    "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool2d_forward",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "batch_norm_backward",
    "batch_norm_forward",
    "bce_with_logits_backward",
    "bce_with_logits_forward",
    "conv2d_backward",
    "conv2d_forward",
    "conv_transpose2d_backward",
    "conv_transpose2d_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout2d_backward",
    "dropout2d_forward",
    "dropout_backward",
    "dropout_forward",
    "erf",
    "gelu_backward",
    "gelu_forward",
    "group_norm_backward",
    "group_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "leaky_relu_backward",
    "leaky_relu_forward",
    "linear_backward",
    "linear_forward",
    "log_softmax_backward",
    "log_softmax_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "mse_loss_backward",
    "mse_loss_forward",
    "nll_loss_backward",
    "nll_loss_forward",
    "normal_cdf",
    "relu_backward",
    "relu_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "silu_backward",
    "silu_forward",
    "softmax_backward",
    "softmax_forward",
    "tanh_backward",
    "tanh_forward",
]
