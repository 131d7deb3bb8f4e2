"""The weight classifier's backbone: a shared frozen feature extractor, or none at all (``cnn``).

* ``domain`` / ``inception``: the frozen networks of :mod:`rgm_ray.models.extractors` (the ones the
  metrics use too); their pooled features are cached and a small MLP head is fitted per fold.
* ``cnn``: no frozen features: the identity on the uint8 pixels, and the per-fold head is a small CNN
  trained end to end (``classifier.ConvHead``). This pseudo-backbone exists only here.

Every backbone maps uint8 images ``[B, C, H, W]`` to ``[B, ...]`` in eval mode, so an image's features
never depend on the rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from rgm_ray.models.extractors import (EXTRACTOR_KINDS, FeatureExtractor, FeatureExtractorSpec,
                                       build_feature_extractor)

CNN = "cnn"
BACKBONES = (*EXTRACTOR_KINDS, CNN)


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone, from which file; saved with the fitted weigher so scorers rebuild it."""

    kind: str
    path: str | None = None  # domain: checkpoint directory; inception: weights file; cnn: None

    def __post_init__(self) -> None:
        if self.kind not in BACKBONES:
            raise ValueError(f"unknown backbone {self.kind!r}; choose one of {', '.join(BACKBONES)}")
        if self.kind == CNN and self.path is not None:
            raise ValueError("the cnn backbone is trained end to end and takes no weights path")
        self.extractor  # checks a frozen backbone's file now

    @cached_property
    def extractor(self) -> FeatureExtractorSpec | None:
        """The frozen feature extractor; None for ``cnn``."""
        return None if self.kind == CNN else FeatureExtractorSpec(self.kind, self.path)

    @property
    def frozen_features(self) -> bool:
        """True when the backbone has features worth caching (not the pixel identity)."""
        return self.extractor is not None

    def digest(self) -> str:
        """Content hash of the backbone's weights: the feature-cache key part."""
        return self.extractor.digest() if self.extractor is not None else "pixels"

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


def build_backbone(spec: BackboneSpec, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Instantiate ``spec`` in eval mode on ``device``."""
    if spec.extractor is not None:
        return build_feature_extractor(spec.extractor, device)
    return Pixels().to(device).eval()
