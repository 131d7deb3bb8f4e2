"""Causal building blocks of PixelCNN++ (Salimans et al. 2017).

Two feature streams keep the network autoregressive in raster order without masked kernels:

* the *down-shifted* stream ``u`` (``DownShiftedConv2d``, kernel 2x3) sees the row above and the
  current row, horizontally centred -- after one initial ``down_shift`` it only ever depends on
  rows strictly above the output position;
* the *down-right-shifted* stream ``ul`` (``DownRightShiftedConv2d``, kernel 2x2) sees the row
  above and the current row, only to the left -- after one initial ``right_shift`` it depends on
  earlier pixels of the current row and, through ``u``, on all rows above.

Causality comes from asymmetric zero padding (top / left) instead of masks. All learned layers use
weight normalisation. The transposed convolutions crop their output back to exactly
``stride * input`` size, keeping only the part that respects the stream's shift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


Kernel = tuple[int, int]  # (height, width)


def concat_elu(x: Tensor) -> Tensor:
    """ELU of ``x`` and ``-x`` stacked on channels, so no sign of the pre-activation is lost; doubles C."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x: Tensor) -> Tensor:
    """Move every row one down (zero row on top, last row dropped): [B,C,H,W] -> [B,C,H,W]."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: Tensor) -> Tensor:
    """Move every column one right (zero column on the left, last column dropped)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(nn.Module):
    """Conv whose output at (i, j) sees input rows i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Kernel = (2, 3), stride: int = 1):
        super().__init__()
        kh, kw = kernel_size
        if kw % 2 != 1:
            raise ValueError(f"a down-shifted conv needs an odd kernel width, got {kw}")
        self.pad = (kw // 2, kw // 2, kh - 1, 0)  # (left, right, top, bottom)
        self.conv = weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class DownRightShiftedConv2d(nn.Module):
    """Conv whose output at (i, j) sees input rows i-kh+1..i and columns j-kw+1..j."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Kernel = (2, 2), stride: int = 1):
        super().__init__()
        kh, kw = kernel_size
        self.pad = (kw - 1, 0, kh - 1, 0)  # (left, right, top, bottom)
        self.conv = weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


def _transposed_conv(in_channels: int, out_channels: int, kernel_size: Kernel, stride: int) -> nn.Module:
    """Weight-normalised transposed conv with the largest 'valid' output: (n - 1) s + k + (s - 1)."""
    deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, output_padding=stride - 1)
    return weight_norm(deconv, dim=1)  # a transposed conv's weight is [in, out, kh, kw]


class DownShiftedConvTranspose2d(nn.Module):
    """Up-sampling counterpart of ``DownShiftedConv2d``: [B,C,H,W] -> [B,C',s H,s W].

    The full transposed conv yields ``s H + kh - 1`` rows and ``s W + kw - 1`` columns; dropping the
    last ``kh - 1`` rows and ``(kw - 1) / 2`` columns on each side keeps the stream down-shifted.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Kernel = (2, 3), stride: int = 2):
        super().__init__()
        kw = kernel_size[1]
        if kw % 2 != 1:
            raise ValueError(f"a down-shifted transposed conv needs an odd kernel width, got {kw}")
        self.crop_left = kw // 2
        self.stride = stride
        self.deconv = _transposed_conv(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        rows, cols = x.shape[2] * self.stride, x.shape[3] * self.stride
        return self.deconv(x)[:, :, :rows, self.crop_left : self.crop_left + cols]


class DownRightShiftedConvTranspose2d(nn.Module):
    """Up-sampling counterpart of ``DownRightShiftedConv2d``: keeps the top-left ``s H x s W`` block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Kernel = (2, 2), stride: int = 2):
        super().__init__()
        self.stride = stride
        self.deconv = _transposed_conv(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: Tensor) -> Tensor:
        rows, cols = x.shape[2] * self.stride, x.shape[3] * self.stride
        return self.deconv(x)[:, :, :rows, :cols]


class Nin(nn.Module):
    """Network-in-network: a weight-normalised 1x1 conv, i.e. a dense layer applied at every pixel."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = weight_norm(nn.Conv2d(in_channels, out_channels, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class GatedResnet(nn.Module):
    """Residual block ``x + a * sigmoid(b)`` with concat_elu, dropout and an optional auxiliary input.

    ``conv`` is the stream's causal conv class. The auxiliary input ``a`` (the ``u`` stream for
    ``ul``, or skip connections on the way up) enters through a ``Nin`` at the same position, so it
    adds no new spatial dependencies.
    """

    def __init__(
        self,
        channels: int,
        conv: type[DownShiftedConv2d] | type[DownRightShiftedConv2d],
        aux_channels: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv_in = conv(2 * channels, channels)
        self.aux = Nin(2 * aux_channels, channels) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * channels, 2 * channels)

    def forward(self, x: Tensor, a: Tensor | None = None) -> Tensor:
        if (a is None) != (self.aux is None):
            raise ValueError("pass the auxiliary input `a` exactly when the block was built with aux_channels")
        h = self.conv_in(concat_elu(x))
        if a is not None:
            h = h + self.aux(concat_elu(a))
        h = self.conv_out(self.dropout(concat_elu(h)))
        value, gate = h.chunk(2, dim=1)
        return x + value * torch.sigmoid(gate)
