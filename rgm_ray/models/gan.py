"""DCGAN-style generator/discriminator pair: the likelihood-free generator LFIW was designed for.

A GAN has no likelihood, only samples, which is exactly what importance weighting needs. Two
variants share one architecture: the non-saturating loss of Goodfellow et al. (DCGAN), and, with
``spectral_norm=True`` and ``loss="hinge"``, SNGAN (Miyato et al. 2018), whose CIFAR-10 samples the
LFIW paper weighs. Training is adversarial (:mod:`rgm_ray.models.gan_training`), not maximum
likelihood, so the model has losses for each player instead of ``loss(x_uint8)``.

Shapes (``b`` = ``base_channels``, ``S`` = ``image_size``, 28 or 32, ``L`` = ``latent_dim``)::

    generator      z [B,L] -linear-> [B,4b,S/4,S/4] -convT s2-> [B,2b,S/2,S/2] -convT s2-> [B,b,S,S]
                   -conv 3x3-> tanh [B,C,S,S]                      (batch norm + ReLU between layers)
    discriminator  x [B,C,S,S] -conv s2-> [B,b,S/2,S/2] -conv s2-> [B,2b,S/4,S/4] -conv 3x3-> [B,4b,S/4,S/4]
                   -flatten, linear-> logit [B]                    (LeakyReLU 0.2 between layers)

The discriminator has no batch norm (spectral normalisation takes its place in SNGAN), so an
image's logit never depends on the rest of its batch: it can serve as a per-image score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from rgm_ray.configs import strict_from_dict
from rgm_ray.models.image_checks import check_uint8_images
from rgm_ray.seeding import torch_generator

SAMPLERS = ("sample",)
DEFAULT_BATCH_SIZE = 256
LOSSES = ("nonsaturating", "hinge")
_SUPPORTED_CHANNELS = (1, 3)
_SUPPORTED_SIZES = (28, 32)
_LEAK = 0.2


@dataclass(frozen=True)
class GANConfig:
    """Architecture and objective of a :class:`GAN`; stored in checkpoints so a checkpoint rebuilds its model."""

    in_channels: int = 3
    image_size: int = 32
    latent_dim: int = 128
    base_channels: int = 64
    spectral_norm: bool = False  # on every discriminator layer (SNGAN)
    loss: Literal["nonsaturating", "hinge"] = "nonsaturating"

    def __post_init__(self) -> None:
        for name in ("latent_dim", "base_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GANConfig.{name} must be a positive int, got {value!r}")
        if self.in_channels not in _SUPPORTED_CHANNELS:
            raise ValueError(f"GANConfig.in_channels must be one of {_SUPPORTED_CHANNELS}, got {self.in_channels!r}")
        if self.image_size not in _SUPPORTED_SIZES:
            raise ValueError(f"GANConfig.image_size must be one of {_SUPPORTED_SIZES}, got {self.image_size!r}")
        if not isinstance(self.spectral_norm, bool):
            raise ValueError(f"GANConfig.spectral_norm must be a bool, got {self.spectral_norm!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"GANConfig.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GANConfig:
        return strict_from_dict(cls, d, "GANConfig")


def to_signed_unit(x_uint8: Tensor) -> Tensor:
    """uint8 pixels -> float in [-1, 1] (the generator's tanh range)."""
    return x_uint8.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] -> uint8: clamp, then round half to even (``torch.round``); inverts :func:`to_signed_unit`."""
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)


def discriminator_loss(loss: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's objective (to minimise) from its logits on real and generated images."""
    if loss == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()  # -log D(x) - log(1 - D(G(z)))


def generator_loss(loss: str, fake_logits: Tensor) -> Tensor:
    """The generator's objective: non-saturating -log D(G(z)), or the hinge variant's -D(G(z))."""
    if loss == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()


class Generator(nn.Module):
    """Latents [B,L] -> images in [-1, 1] [B,C,S,S] (transposed convolutions with batch norm)."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        b, self._low_res = config.base_channels, config.image_size // 4
        self.project = nn.Sequential(nn.Linear(config.latent_dim, 4 * b * self._low_res**2, bias=False),
                                     nn.BatchNorm1d(4 * b * self._low_res**2), nn.ReLU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(4 * b, 2 * b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * b), nn.ReLU(),
            nn.ConvTranspose2d(2 * b, b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
            nn.Conv2d(b, config.in_channels, 3, padding=1), nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], -1, self._low_res, self._low_res)  # [B,4b,S/4,S/4]
        return self.upsample(h)


class Discriminator(nn.Module):
    """Images in [-1, 1] [B,C,S,S] -> real-vs-generated logits [B]; spectral norm on every layer if asked."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        b, low_res = config.base_channels, config.image_size // 4
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, b, 4, stride=2, padding=1), nn.LeakyReLU(_LEAK),
            nn.Conv2d(b, 2 * b, 4, stride=2, padding=1), nn.LeakyReLU(_LEAK),
            nn.Conv2d(2 * b, 4 * b, 3, padding=1), nn.LeakyReLU(_LEAK),
            nn.Flatten(), nn.Linear(4 * b * low_res**2, 1),
        ]
        if config.spectral_norm:
            layers = [apply_spectral_norm(m) if isinstance(m, (nn.Conv2d, nn.Linear)) else m for m in layers]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


class GAN(nn.Module):
    """A generator and its discriminator, checkpointed together (the discriminator is a scorer too)."""

    kind = "gan"

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def generate(self, z: Tensor) -> Tensor:
        """Images in [-1, 1] [B,C,S,S] for latents [B,L]."""
        return self.generator(z.to(self._device))

    def discriminator_logit(self, x_uint8: Tensor) -> Tensor:
        """The discriminator's raw logit per image [B] (higher: judged more real). Per image in any mode."""
        check_uint8_images(x_uint8, self.config.in_channels, self.config.image_size)
        return self.discriminator(to_signed_unit(x_uint8.to(self._device)))

    def discriminator_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return discriminator_loss(self.config.loss, real_logits, fake_logits)

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        return generator_loss(self.config.loss, fake_logits)



def latents(latent_dim: int, seed: int, start: int, stop: int) -> Tensor:
    """Latents [stop-start, L] of images start..stop-1: image j's from its own stream (seed, j)."""
    return torch.stack([torch.randn(latent_dim, generator=torch_generator(seed, j)) for j in range(start, stop)])


@torch.no_grad()
def sample_gan(model: GAN, n: int, *, seed: int, batch_size: int = DEFAULT_BATCH_SIZE,
               sampler: str = SAMPLERS[0]) -> Tensor:
    """``n`` images as CPU uint8 [n,C,H,W]; image ``j`` depends only on ``(seed, j)``, not on batching.

    The generator runs in eval mode (batch norm with its running statistics), so an image does not
    depend on its batch-mates either.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown GAN sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    cfg = model.config
    was_training = model.training
    model.eval()
    try:
        images = [to_uint8(model.generate(latents(cfg.latent_dim, seed, start, min(start + batch_size, n)))).cpu()
                  for start in range(0, n, batch_size)]
    finally:
        model.train(was_training)
    if not images:
        return torch.empty(0, cfg.in_channels, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    return torch.cat(images)
