"""The one input check every image model makes: uint8 ``[B, C, H, W]`` of the model's own shape."""

from __future__ import annotations

import torch
from torch import Tensor


def check_uint8_images(x: Tensor, channels: int, size: int) -> None:
    """Raise a ValueError naming the expected and the given dtype/shape unless ``x`` is uint8 [B,C,size,size]."""
    expected = (channels, size, size)
    if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"expected uint8 images [B,{','.join(map(str, expected))}], got {x.dtype} {tuple(x.shape)}")
