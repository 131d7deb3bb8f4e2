"""The weight classifier's backbone: a shared frozen feature extractor, none at all (``cnn``), or a GAN's
own discriminator (``gan-discriminator``).

* ``domain`` / ``inception``: the frozen networks of :mod:`rgm_ray.models.extractors` (the ones the
  metrics use too); their pooled features are cached and a small MLP head is fitted per fold.
* ``cnn``: no frozen features: the identity on the uint8 pixels, and the per-fold head is a small CNN
  trained end to end (``classifier.ConvHead``). This pseudo-backbone exists only here.
* ``gan-discriminator``: the discriminator D of a GAN checkpoint (``path``), trained for the same
  real-vs-generated task, as the discriminator-rejection-sampling line of work uses it (Azadi et al.
  2019). Its logit is a one-number "feature" ``[B, 1]``, the head is the parameter-free
  ``classifier.LogitHead`` and no head is fitted: log w = D(x) / T with only the cross-fitted
  temperature T fitted, so the report can set the trained-for-purpose classifier against it. (A
  hinge-loss D -- SNGAN -- does not estimate the log density ratio even at its optimum; T only rescales it.)

Every backbone maps uint8 images ``[B, C, H, W]`` to ``[B, ...]`` in eval mode, so an image's features
never depend on the rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from rgm_ray.models.checkpoint import checkpoint_digest, load_checkpoint, read_checkpoint_config
from rgm_ray.models.extractors import (EXTRACTOR_KINDS, FeatureExtractor, FeatureExtractorSpec,
                                       build_feature_extractor)
from rgm_ray.models.gan import GAN, GANConfig

CNN = "cnn"
GAN_DISCRIMINATOR = "gan-discriminator"
BACKBONES = (*EXTRACTOR_KINDS, CNN, GAN_DISCRIMINATOR)


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone, from which file; saved with the fitted weigher so scorers rebuild it."""

    kind: str
    # domain: checkpoint directory; inception: weights file; gan-discriminator: GAN checkpoint directory; cnn: None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in BACKBONES:
            raise ValueError(f"unknown backbone {self.kind!r}; choose one of {', '.join(BACKBONES)}")
        if self.kind == CNN and self.path is not None:
            raise ValueError("the cnn backbone is trained end to end and takes no weights path")
        self.extractor, self.gan_config  # checks a frozen backbone's file now

    @cached_property
    def extractor(self) -> FeatureExtractorSpec | None:
        """The frozen feature extractor of ``domain`` / ``inception``; None otherwise."""
        return FeatureExtractorSpec(self.kind, self.path) if self.kind in EXTRACTOR_KINDS else None

    @cached_property
    def gan_config(self) -> GANConfig | None:
        """The config of the GAN whose discriminator scores (``gan-discriminator``); None otherwise."""
        if self.kind != GAN_DISCRIMINATOR:
            return None
        if self.path is None:
            raise ValueError("--backbone gan-discriminator needs --checkpoint DIR (a GAN checkpoint directory)")
        record = read_checkpoint_config(self.path)
        if record["kind"] != GAN.kind:
            raise ValueError(f"--checkpoint {self.path}: a {record['kind']!r} checkpoint, not a GAN "
                             "(--backbone gan-discriminator scores with a GAN's discriminator)")
        return GANConfig.from_dict(record["model_config"])

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """The only image shape the backbone takes (``gan-discriminator``), else None (it adapts or fails itself)."""
        c = self.gan_config
        return None if c is None else (c.in_channels, c.image_size, c.image_size)

    @property
    def frozen_features(self) -> bool:
        """True when the backbone has features worth caching (not the pixel identity)."""
        return self.kind != CNN

    @property
    def fits_head(self) -> bool:
        """False for ``gan-discriminator``: its logit is the score, only the temperatures are fitted."""
        return self.kind != GAN_DISCRIMINATOR

    def digest(self) -> str:
        """Content hash of the backbone's weights: the feature-cache key part."""
        if self.extractor is not None:
            return self.extractor.digest()
        return checkpoint_digest(self.path) if self.kind == GAN_DISCRIMINATOR else "pixels"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneSpec":
        return cls(kind=d["kind"], path=d.get("path"))


class Pixels(FeatureExtractor):
    """The ``cnn`` backbone: images pass through unchanged; the per-fold ConvHead does all the work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x


class DiscriminatorLogit(FeatureExtractor):
    """The ``gan-discriminator`` backbone: a GAN's discriminator logit ``[B, 1]`` (per image: D has no batch norm)."""

    def __init__(self, gan: GAN) -> None:
        super().__init__()
        self.gan = gan.eval()
        self.gan.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gan.discriminator_logit(x).unsqueeze(1)  # checks uint8 [B, C, S, S] itself


def build_backbone(spec: BackboneSpec, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Instantiate ``spec`` in eval mode on ``device``."""
    if spec.extractor is not None:
        return build_feature_extractor(spec.extractor, device)
    backbone = DiscriminatorLogit(load_checkpoint(spec.path)) if spec.kind == GAN_DISCRIMINATOR else Pixels()
    return backbone.to(device).eval()
