"""Window geometry shared by the convolution and pooling ops.

:func:`offset_views` serves the CPU paths (one strided view of the padded input per kernel
offset, so that every loop runs over the kernel offsets only); :class:`LaunchGeometry` serves
the GPU launchers (the sizes every windowed kernel takes, as int32 arguments).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LaunchGeometry", "int32s", "offset_views"]


def offset_views(
    buf: Any, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], out: tuple[int, int]
) -> Iterator[tuple[int, int, Any]]:
    """``(i, j, view)`` per kernel offset in row-major order.

    ``view`` is the strided ``(A, B, OH, OW)`` view of the padded ``buf`` (layout ``(A, B, H, W)``)
    that offset ``(i, j)`` reads in every window; writing through it scatters back.
    """
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, out
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, s = i * dh, j * dw
            yield i, j, buf[:, :, r : r + sh * (oh - 1) + 1 : sh, s : s + sw * (ow - 1) + 1 : sw]


@dataclass(frozen=True, slots=True)
class LaunchGeometry:
    """The sizes of a windowed op (convolution or pooling) as its CUDA kernels take them."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    groups: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    out_h: int
    out_w: int

    @property
    def in_per_group(self) -> int:
        return self.channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def plane_out(self) -> int:
        return self.out_h * self.out_w

    def window_args(self) -> tuple:
        """kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, out_h, out_w (int32)."""
        return int32s(
            self.kernel_h,
            self.kernel_w,
            self.stride_h,
            self.stride_w,
            self.pad_h,
            self.pad_w,
            self.dilation_h,
            self.dilation_w,
            self.out_h,
            self.out_w,
        )

    @classmethod
    def conv(cls, x_shape: tuple, w_shape: tuple, stride, padding, dilation, groups: int) -> LaunchGeometry:
        """A convolution of validated options (pairs); the output size follows from them."""
        n, c, h, w = (int(v) for v in x_shape)
        oc, _, kh, kw = (int(v) for v in w_shape)
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return cls(n, c, h, w, oc, int(groups), kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)

    @classmethod
    def pool(cls, x_shape: tuple, kernel, stride, padding, dilation, out_size) -> LaunchGeometry:
        """A pooling window (one group per channel); the output size is the caller's (ceil_mode)."""
        n, c, h, w = (int(v) for v in x_shape)
        sizes = (int(v) for v in (*kernel, *stride, *padding, *dilation, *out_size))
        return cls(n, c, h, w, c, c, *sizes)


def int32s(*values: int) -> tuple:
    """Kernel arguments of C type ``int``."""
    return tuple(np.int32(v) for v in values)
