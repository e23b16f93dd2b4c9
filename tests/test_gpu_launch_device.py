"""Every GPU launcher enters its input's device before it makes anything contiguous.

On the CuPy stand-in with two devices: a strided input on device 1 while device 0 is current
must be copied, computed and returned on device 1 (a contiguous copy made before entering the
device would land on device 0, which the stand-in records as a copy "on another device").
"""

from __future__ import annotations

import numpy as np
import pytest
from cupy_standin import COUNTER

from gpulayers.ops import activation, batch_norm_cuda, conv2d, max_pool2d, normalization


def _strided_on_device_1(cp, shape):
    """A non-contiguous (N, C, H, W) view on device 1, and the same values on the host."""
    host = np.random.default_rng(0).standard_normal((shape[0], shape[1], shape[3], shape[2])).astype(np.float32)
    with cp.cuda.Device(1):
        dev = cp.asarray(host).transpose(0, 1, 3, 2)
    assert not dev.flags.c_contiguous and dev.device.id == 1
    return dev, host.transpose(0, 1, 3, 2)


def _weight_on_device_1(cp, shape):
    with cp.cuda.Device(1):
        return cp.asarray(np.random.default_rng(1).standard_normal(shape).astype(np.float32))


def _max_pool(cp, x):
    y, cache = max_pool2d.max_pool2d_forward(x, 2)
    return y, max_pool2d.max_pool2d_backward(_strided_like(cp, y), cache)


def _conv(algorithm):
    def run(cp, x):
        from gpulayers import cuda  # noqa: PLC0415

        cuda.set_conv_algorithm(algorithm)
        try:
            w = _weight_on_device_1(cp, (4, 3, 3, 3))
            b = _weight_on_device_1(cp, (4,))
            y, cache = conv2d.conv2d_forward(x, w, b, padding=1)
            return y, conv2d.conv2d_backward(_strided_like(cp, y), cache)[0]
        finally:
            cuda.set_conv_algorithm("auto")

    return run


def _relu(cp, x):
    y, cache = activation.relu_forward(x)
    return y, activation.relu_backward(_strided_like(cp, y), cache)


def _batch_norm(cp, x):
    """The fused kernels take contiguous input: a strided gradient is what must be made contiguous."""
    with cp.cuda.Device(1):
        x = cp.ascontiguousarray(x)
    y, cache = normalization.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    assert isinstance(cache, batch_norm_cuda.FusedBatchNormCache)
    return y, normalization.batch_norm_backward(_strided_like(cp, y), cache)[0]


def _strided_like(cp, y):
    """A gradient for ``y``: same shape and device, but a transposed (strided) view."""
    n, c, h, w = y.shape
    with cp.cuda.Device(y.device.id):
        base = cp.asarray(np.ones((n, c, w, h), np.float32))
    return base.transpose(0, 1, 3, 2)


OPS = {
    "max_pool2d": _max_pool,
    "conv2d_implicit_gemm": _conv("implicit_gemm"),
    "conv2d_direct": _conv("direct"),
    "conv2d_im2col": _conv("im2col"),
    "relu": _relu,
    "batch_norm": _batch_norm,
}


@pytest.mark.parametrize("op", list(OPS))
def test_strided_input_on_another_device_stays_there(cp, op):
    x, _ = _strided_on_device_1(cp, (2, 3, 6, 8))
    COUNTER.reset()
    y, dx = OPS[op](cp, x)
    assert y.device.id == 1 and dx.device.id == 1
    assert "ascontiguousarray on another device" not in COUNTER.names()
