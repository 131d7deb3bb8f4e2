"""PixelCNN++ (Salimans et al. 2017): config, network and likelihood in bits/dim.

The network maps an image in [-1, 1] to discretized-logistic-mixture parameters for every pixel
(``logistic_mixture`` documents the layout); the output at (i, j) depends only on pixels before
(i, j) in raster order, and the RGB coupling within a pixel lives in the likelihood.

Sampling is a procedure on top of the network, not part of it: it lives in ``pixelcnnpp_sampling``
(naive and cached samplers, ``sample_pixelcnnpp``), which imports this module, never the reverse.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from rgm_ray.configs import strict_from_dict
from rgm_ray.models import logistic_mixture as lm
from rgm_ray.models.pixelcnnpp_layers import (
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    GatedResnet,
    Nin,
    down_shift,
    right_shift,
)

NUM_RESOLUTIONS = 3  # e.g. 32 -> 16 -> 8; hence image_size must be divisible by 4


@dataclass(frozen=True)
class PixelCNNppConfig:
    """Hyper-parameters of a PixelCNN++; defaults are the paper's CIFAR-10 model (~53M parameters)."""

    in_channels: int = 3
    image_size: int = 32
    nr_resnet: int = 5
    nr_filters: int = 160
    nr_logistic_mix: int = 10
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "nr_resnet", "nr_filters", "nr_logistic_mix"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x downsamplings), got {self.image_size}")
        is_number = isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
        if not is_number or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")

    @property
    def num_mixture_params(self) -> int:
        """Channels of the network output (mixture parameters per pixel)."""
        return lm.num_params(self.in_channels, self.nr_logistic_mix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PixelCNNppConfig:
        return strict_from_dict(cls, d, "PixelCNNppConfig")


def bits_per_dim(log_prob_nats: Tensor, dims: int) -> Tensor:
    """Negative log-likelihood in bits per dimension from log-probabilities in nats over ``dims`` dims."""
    if dims < 1:
        raise ValueError(f"dims must be positive, got {dims}")
    return -log_prob_nats / (dims * math.log(2.0))


class PixelCNNpp(nn.Module):
    """The full PixelCNN++ network: two causal streams over three resolutions with U-Net skips."""

    kind = "pixelcnnpp"

    def __init__(self, config: PixelCNNppConfig):
        super().__init__()
        self.config = config
        f, drop = config.nr_filters, config.dropout
        padded_channels = config.in_channels + 1  # + a constant ones channel

        self.u_init = DownShiftedConv2d(padded_channels, f, (2, 3))
        self.ul_init_above = DownShiftedConv2d(padded_channels, f, (1, 3))
        self.ul_init_left = DownRightShiftedConv2d(padded_channels, f, (2, 1))

        def blocks(count: int, conv: type, aux_channels: int) -> nn.ModuleList:
            return nn.ModuleList(GatedResnet(f, conv, aux_channels, drop) for _ in range(count))

        def repeat(make: Callable[[], nn.Module], count: int) -> nn.ModuleList:
            return nn.ModuleList(make() for _ in range(count))

        # Index 0 is the finest resolution on the way down and the coarsest on the way up.
        levels, nr = NUM_RESOLUTIONS, config.nr_resnet
        self.down_u = repeat(lambda: blocks(nr, DownShiftedConv2d, 0), levels)
        self.down_ul = repeat(lambda: blocks(nr, DownRightShiftedConv2d, f), levels)  # aux: u
        self.downsample_u = repeat(lambda: DownShiftedConv2d(f, f, (2, 3), stride=2), levels - 1)
        self.downsample_ul = repeat(lambda: DownRightShiftedConv2d(f, f, (2, 2), stride=2), levels - 1)

        up_counts = [nr] + [nr + 1] * (levels - 1)
        self.up_u = nn.ModuleList(blocks(n, DownShiftedConv2d, f) for n in up_counts)  # aux: u skip
        self.up_ul = nn.ModuleList(blocks(n, DownRightShiftedConv2d, 2 * f) for n in up_counts)  # [u, ul skip]
        self.upsample_u = repeat(lambda: DownShiftedConvTranspose2d(f, f, (2, 3), stride=2), levels - 1)
        self.upsample_ul = repeat(lambda: DownRightShiftedConvTranspose2d(f, f, (2, 2), stride=2), levels - 1)

        self.output = Nin(f, config.num_mixture_params)

    def forward(self, x: Tensor) -> Tensor:
        """Mixture parameters [B,P,H,W] for images ``x`` in [-1, 1] of shape [B,C,H,W]."""
        self._check_shape(x)
        # The ones channel lets the first convs tell zero padding from mid-grey pixels (value 0).
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        u = down_shift(self.u_init(x))
        ul = down_shift(self.ul_init_above(x)) + right_shift(self.ul_init_left(x))

        u_skips, ul_skips = [u], [ul]
        for level in range(NUM_RESOLUTIONS):
            if level > 0:
                u, ul = self.downsample_u[level - 1](u), self.downsample_ul[level - 1](ul)
                u_skips.append(u)
                ul_skips.append(ul)
            for u_block, ul_block in zip(self.down_u[level], self.down_ul[level]):
                u = u_block(u)
                ul = ul_block(ul, u)
                u_skips.append(u)
                ul_skips.append(ul)

        u, ul = u_skips.pop(), ul_skips.pop()
        for level in range(NUM_RESOLUTIONS):
            if level > 0:
                u, ul = self.upsample_u[level - 1](u), self.upsample_ul[level - 1](ul)
            for u_block, ul_block in zip(self.up_u[level], self.up_ul[level]):
                u = u_block(u, u_skips.pop())
                ul = ul_block(ul, torch.cat([u, ul_skips.pop()], dim=1))
        assert not u_skips and not ul_skips, "every down-pass activation is consumed once on the way up"
        return self.output(F.elu(ul))

    def log_prob(self, x_uint8: Tensor) -> Tensor:
        """Log-likelihood in nats of each uint8 image [B,C,H,W]; returns [B]."""
        if x_uint8.dtype != torch.uint8:
            raise ValueError(f"log_prob expects uint8 images, got {x_uint8.dtype}")
        x = lm.to_unit_range(x_uint8.to(self.device))
        return lm.log_prob(x, self(x)).sum(dim=(1, 2))

    def loss(self, x_uint8: Tensor) -> Tensor:
        """Training objective: mean negative log-likelihood in bits per dimension."""
        c, s = self.config.in_channels, self.config.image_size
        return bits_per_dim(self.log_prob(x_uint8), c * s * s).mean()

    def _check_shape(self, x: Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images of shape [B,{c},{s},{s}], got {tuple(x.shape)}")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Run with dropout and autograd off, then restore the model's previous train/eval mode.

    Weight-normalised weights are computed once for the whole block instead of on every forward pass.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), parametrize.cached():
            yield
    finally:
        model.train(was_training)
