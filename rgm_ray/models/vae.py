"""Convolutional VAE with a discretized-logistic-mixture decoder (the thesis's cheap, blurry generator).

The thesis VAE has three conv encoder layers and a 180-d latent for CIFAR-10. Here the decoder emits
the parameters of a discretized logistic mixture per pixel (``logistic_mixture``), so the ELBO is a
proper lower bound on the log-probability of 8-bit images and is comparable, in bits/dim, with
PixelCNN++'s likelihood.

Shapes (``b`` = ``base_channels``, ``S`` = ``image_size``, ``P`` = mixture params per pixel)::

    encoder  [B,C,S,S] -conv s2-> [B,b,S/2,S/2] -conv s2-> [B,2b,S/4,S/4] -conv s1-> [B,4b,S/4,S/4]
             -flatten-> linear -> mean, log-variance [B,latent]
    decoder  z [B,latent] -linear-> [B,4b,S/4,S/4] -convT s1-> [B,2b,S/4,S/4] -convT s2-> [B,b,S/2,S/2]
             -convT s2-> params [B,P,S,S]

28x28 (Fashion-MNIST) and 32x32 (CIFAR-10) both work because only ``S % 4 == 0`` is needed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from rgm_ray.configs import strict_from_dict
from rgm_ray.models.image_checks import check_uint8_images
from rgm_ray.models import logistic_mixture as lm
from rgm_ray.seeding import torch_generator

SAMPLE_MODES = ("mean", "sample")  # the first is the default
DEFAULT_BATCH_SIZE = 256
_SUPPORTED_CHANNELS = (1, 3)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a :class:`VAE`; stored in checkpoints so a checkpoint rebuilds its model."""

    in_channels: int = 3
    image_size: int = 32
    latent_dim: int = 180
    base_channels: int = 64
    nr_mix: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VAEConfig.{f.name} must be a positive int, got {value!r}")
        if self.in_channels not in _SUPPORTED_CHANNELS:
            raise ValueError(f"VAEConfig.in_channels must be one of {_SUPPORTED_CHANNELS}, got {self.in_channels}")
        if self.image_size % 4:
            raise ValueError(f"VAEConfig.image_size must be divisible by 4 (two stride-2 layers), got {self.image_size}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        return strict_from_dict(cls, d, "VAEConfig")


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) in nats, summed over the last dim: [B,D] -> [B]."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


class VAE(nn.Module):
    """Gaussian-latent VAE; ``elbo`` for evaluation, ``loss`` for training, ``sample`` for generation."""

    kind = "vae"

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c, b = config.in_channels, config.base_channels
        self._low_res = config.image_size // 4
        flat = 4 * b * self._low_res**2
        self.encoder = nn.Sequential(
            nn.Conv2d(c, b, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(b, 2 * b, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * b, 4 * b, 3, stride=1, padding=1), nn.SiLU(),
            nn.Flatten(),
        )
        self.to_posterior = nn.Linear(flat, 2 * config.latent_dim)  # -> [mean | logvar]
        self.from_latent = nn.Sequential(nn.Linear(config.latent_dim, flat), nn.SiLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * b, 2 * b, 3, stride=1, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(2 * b, b, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(b, lm.num_params(c, config.nr_mix), 4, stride=2, padding=1),
        )

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, x_uint8: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior q(z|x) as (mean, logvar), each [B,latent]."""
        check_uint8_images(x_uint8, self.config.in_channels, self.config.image_size)
        h = self.encoder(lm.to_unit_range(x_uint8.to(self._device)))
        mean, logvar = self.to_posterior(h).chunk(2, dim=-1)
        return mean, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Mixture parameters [B,P,H,W] of p(x|z) for latents z [B,latent]."""
        h = self.from_latent(z).view(z.shape[0], 4 * self.config.base_channels, self._low_res, self._low_res)
        return self.decoder(h)

    def elbo(self, x_uint8: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """One-sample ELBO estimate per image, in nats: [B].

        Posterior noise comes from ``generator`` (a CPU generator; noise is moved to the model's
        device) when given, otherwise from torch's default RNG, i.e. it follows ``torch.manual_seed``.
        """
        mean, logvar = self.encode(x_uint8)
        if generator is None:
            eps = torch.randn_like(mean)
        else:
            eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        x = lm.to_unit_range(x_uint8.to(mean.device))
        reconstruction = lm.log_prob(x, self.decode(z)).sum(dim=(1, 2))  # [B,H,W] -> [B]
        return reconstruction - kl_to_standard_normal(mean, logvar)

    def loss(self, x_uint8: Tensor) -> Tensor:
        """Training objective: mean negative ELBO in bits per dim.

        The reparameterisation noise uses torch's default RNG, so training runs are reproducible
        through the ``torch.manual_seed`` that the training loop sets.
        """
        dims = self.config.in_channels * self.config.image_size**2
        return -self.elbo(x_uint8).mean() / (dims * math.log(2.0))

    @torch.no_grad()
    def sample(self, n: int, *, seed: int, batch_size: int = DEFAULT_BATCH_SIZE, mode: str = "mean") -> Tensor:
        """``n`` images as CPU uint8 [n,C,H,W]; image ``j`` depends only on ``(seed, j)``, not on batching.

        ``mode="mean"`` decodes to the most likely pixel values (the smooth, blurry image VAE papers
        show); ``mode="sample"`` also draws the pixel noise of p(x|z).
        """
        if n < 0 or batch_size < 1:
            raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        if mode not in SAMPLE_MODES:
            raise ValueError(f"unknown sample mode {mode!r}; known: {SAMPLE_MODES}")
        cfg = self.config
        s = cfg.image_size
        was_training = self.training
        self.eval()
        try:
            images = []
            for start in range(0, n, batch_size):
                gens = [torch_generator(seed, j) for j in range(start, min(start + batch_size, n))]
                z = torch.stack([torch.randn(cfg.latent_dim, generator=g) for g in gens])
                if mode == "mean":
                    noise = None
                else:  # drawn after z from each image's own stream: mix_u [H,W,K], then pix_u [H,W,C]
                    mix_u = torch.stack([torch.rand(s, s, cfg.nr_mix, generator=g) for g in gens])
                    pix_u = torch.stack([torch.rand(s, s, cfg.in_channels, generator=g) for g in gens])
                    noise = (mix_u, pix_u)
                images.append(self._params_to_pixels(self.decode(z.to(self._device)), noise))
            return torch.cat(images) if images else torch.empty(0, cfg.in_channels, s, s, dtype=torch.uint8)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def reconstruct(self, x_uint8: Tensor) -> Tensor:
        """Decode the posterior mean of each image to its most likely pixels: CPU uint8 [B,C,H,W]."""
        was_training = self.training
        self.eval()
        try:
            mean, _ = self.encode(x_uint8)
            return self._params_to_pixels(self.decode(mean), None)
        finally:
            self.train(was_training)

    def _params_to_pixels(self, params: Tensor, noise: tuple[Tensor, Tensor] | None) -> Tensor:
        """Pixels uint8 [B,C,H,W] from mixture params [B,P,H,W] and noise ([B,H,W,K], [B,H,W,C]).

        Without noise, constant uniforms give the most likely component (Gumbel-max with equal
        noise is an argmax) and each channel's logistic centre (inverse CDF at 1/2), i.e. the mode.
        """
        bsz, p, h, w = params.shape
        c, k = self.config.in_channels, self.config.nr_mix
        flat = params.permute(0, 2, 3, 1).reshape(-1, p)  # [B*H*W, P]
        if noise is None:
            mix_u = torch.full((flat.shape[0], k), 0.5)
            pix_u = torch.full((flat.shape[0], c), 0.5)
        else:
            mix_u, pix_u = (u.reshape(-1, u.shape[-1]) for u in noise)
        pixels = lm.sample_pixels(flat, mix_u.to(flat.device), pix_u.to(flat.device))  # [B*H*W, C]
        return pixels.view(bsz, h, w, c).permute(0, 3, 1, 2).contiguous().cpu()
