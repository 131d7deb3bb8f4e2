"""Gather tables: which input positions each output position of a layer reads, tap by tap.

Cached sampling evaluates a layer at a handful of output positions at a time, so every spatial
layer of PixelCNN++ (padded convs, strided convs, cropped transposed convs, shifts, 1x1 convs) is
rewritten as "gather the input patch at these positions, then one matmul". A table is a long
tensor ``[N_out, K]``: row ``p`` lists, for each of the ``K = kh * kw`` kernel taps in raster
order ``(a, b)``, the flat raster index (``i * w + j``) of the input position that tap reads.
Taps that fall on padding (or, for a transposed conv, between the dilated input's pixels) point
at index ``N_in``: the caches keep one extra all-zero slot there, which is exactly what zero
padding contributes.
"""

from __future__ import annotations

import torch
from torch import Tensor

Size = tuple[int, int]  # (height, width)
Kernel = tuple[int, int]  # (kh, kw)


def _flat_or_zero_slot(rows: Tensor, cols: Tensor, valid: Tensor, in_size: Size) -> Tensor:
    h, w = in_size
    return torch.where(valid, rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1), torch.full_like(rows, h * w))


def _output_grid(out_size: Size) -> tuple[Tensor, Tensor]:
    """Row and column of every output position as [N_out, 1] columns (ready to broadcast over taps)."""
    i, j = torch.meshgrid(torch.arange(out_size[0]), torch.arange(out_size[1]), indexing="ij")
    return i.reshape(-1, 1), j.reshape(-1, 1)


def _taps(kernel: Kernel) -> tuple[Tensor, Tensor]:
    """Tap offsets (a, b) in raster order as [1, K] rows."""
    a, b = torch.meshgrid(torch.arange(kernel[0]), torch.arange(kernel[1]), indexing="ij")
    return a.reshape(1, -1), b.reshape(1, -1)


def conv_table(in_size: Size, out_size: Size, kernel: Kernel, stride: int, top: int, left: int) -> Tensor:
    """Table of a conv over the input zero-padded by ``top`` rows and ``left`` columns.

    Output (i, j) tap (a, b) reads input (stride*i + a - top, stride*j + b - left). With kernel
    (1, 1) this is also a shift: ``top=1`` is ``down_shift``, ``left=1`` is ``right_shift``.
    """
    if out_size[0] < 1 or out_size[1] < 1 or stride < 1:
        raise ValueError(f"bad conv geometry: out_size={out_size}, stride={stride}")
    i, j = _output_grid(out_size)
    a, b = _taps(kernel)
    rows, cols = stride * i + a - top, stride * j + b - left  # [N_out, K]
    valid = (rows >= 0) & (rows < in_size[0]) & (cols >= 0) & (cols < in_size[1])
    return _flat_or_zero_slot(rows, cols, valid, in_size)


def conv_out_size(in_size: Size, kernel: Kernel, stride: int, pad: tuple[int, int, int, int]) -> Size:
    """Output size of a conv after ``F.pad(x, pad)`` with pad = (left, right, top, bottom)."""
    left, right, top, bottom = pad
    return (
        (in_size[0] + top + bottom - kernel[0]) // stride + 1,
        (in_size[1] + left + right - kernel[1]) // stride + 1,
    )


def transposed_conv_table(in_size: Size, kernel: Kernel, stride: int, crop_left: int) -> Tensor:
    """Table of a transposed conv (no padding) cropped to rows [0, s h), cols [crop_left, crop_left + s w).

    Uncropped output (y, x) receives tap (a, b) from input ((y - a) / s, (x - b) / s) when both
    divisions are exact and land inside the input; otherwise the tap reads the zero slot, i.e. the
    layer is a conv over the zero-dilated input whose weight is the transposed conv's own (unflipped,
    since taps are indexed by the *output* offset).
    """
    out_size = (stride * in_size[0], stride * in_size[1])
    y, x = _output_grid(out_size)
    a, b = _taps(kernel)
    dy, dx = y - a, x + crop_left - b  # [N_out, K]
    rows, cols = torch.div(dy, stride, rounding_mode="floor"), torch.div(dx, stride, rounding_mode="floor")
    exact = (dy % stride == 0) & (dx % stride == 0)
    valid = exact & (rows >= 0) & (rows < in_size[0]) & (cols >= 0) & (cols < in_size[1])
    return _flat_or_zero_slot(rows, cols, valid, in_size)


def ready_through(table: Tensor, source_ready: Tensor) -> Tensor:
    """Ready step of each output position: the latest ready step among the input positions it reads.

    ``source_ready`` [N_in] holds, for each input position, the first sampling step at which it is
    final; the zero slot (padding) is final from step 0. Returns [N_out].
    """
    extended = torch.cat([source_ready, source_ready.new_zeros(1)])  # index N_in: the zero slot
    return extended[table].amax(dim=1)
