"""An example generator plugin: a small random-initialised deconvolution net, seeded per call.

``rgm generate --generator rgm_ray.generate.example_plugin:make --generator-arg size=28 ...``;
the protocol it follows is described in :mod:`rgm_ray.generate.plugins`. A real plugin would load
trained weights in ``make`` and bump ``version`` whenever they change.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyDeconvGenerator:
    """Noise [n, latent, 1, 1] -> three deconvolutions -> uint8 images [n, channels, size, size]."""

    version = "tiny-deconv-1"

    def __init__(self, size: int = 28, channels: int = 1, latent: int = 16, weights_seed: int = 0) -> None:
        if size % 4 or size < 4:
            raise ValueError(f"size must be a positive multiple of 4, got {size}")
        self.shape = (channels, size, size)
        self.latent = latent
        with torch.random.fork_rng(devices=[]):  # the same weights in every worker, global RNG untouched
            torch.manual_seed(weights_seed)
            self.net = nn.Sequential(
                nn.ConvTranspose2d(latent, 32, size // 4), nn.ReLU(),
                nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(16, channels, 4, stride=2, padding=1)).eval()

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        noise = torch.randn(n, self.latent, 1, 1, generator=torch.Generator().manual_seed(seed))
        x = self.net(noise)
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return (torch.sigmoid(2 * x) * 255).round().to(torch.uint8)  # per-image contrast, then to bytes


make = TinyDeconvGenerator  # the factory: rgm calls make(**args)
