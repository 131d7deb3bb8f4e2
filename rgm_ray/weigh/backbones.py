"""Frozen image backbones of the weight classifier, chosen by name with one contract.

Every backbone maps uint8 images ``[B, C, H, W]`` to float32 features ``[B, ...]`` in eval mode, so an
image's features never depend on the rest of its batch:

* ``domain``: pooled 64-d features of the project's domain ResNet (``rgm_ray.models.domain``), the
  offline default -- it needs no download.
* ``inception``: torch-fidelity's Inception-V3 2048-d pool features from a local weights file -- the
  thesis/LFIW estimator. Grayscale is replicated to RGB.
* ``cnn``: no frozen features: the identity on the uint8 pixels, and the per-fold head is a small CNN
  trained end to end (``classifier.ConvHead``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgm_ray.models.checkpoint import checkpoint_digest, load_checkpoint, read_checkpoint_config
from rgm_ray.models.inception import check_inception_weights
from rgm_ray.models.resnet import ResNet, preprocess
from rgm_ray.store.atomic import sha256_file

BACKBONES = ("domain", "inception", "cnn")
INCEPTION_FEATURES = "2048"
INCEPTION_NAME = "inception-v3-compat"


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone, from which file; saved with the fitted weigher so scorers rebuild it."""

    kind: str
    path: str | None = None  # domain: checkpoint directory; inception: weights file; cnn: None

    def __post_init__(self) -> None:
        if self.kind not in BACKBONES:
            raise ValueError(f"unknown backbone {self.kind!r}; choose one of {', '.join(BACKBONES)}")
        if self.kind == "cnn" and self.path is not None:
            raise ValueError("the cnn backbone is trained end to end and takes no weights path")
        if self.kind == "inception":
            check_inception_weights(self.path, needed_by="--backbone inception")
        if self.kind == "domain":
            if self.path is None:
                raise ValueError("the domain backbone needs a domain ResNet checkpoint directory")
            kind = read_checkpoint_config(self.path)["kind"]
            if kind != ResNet.kind:
                raise ValueError(f"--domain-checkpoint {self.path}: a {kind!r} checkpoint, not a domain ResNet")

    @property
    def frozen_features(self) -> bool:
        """True when the backbone has features worth caching (not the pixel identity)."""
        return self.kind != "cnn"

    def digest(self) -> str:
        """Content hash of the backbone's weights: the feature-cache key part."""
        if self.kind == "domain":
            return checkpoint_digest(self.path)
        if self.kind == "inception":
            return sha256_file(self.path)
        return "pixels"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneSpec":
        return cls(kind=d["kind"], path=d.get("path"))


class Backbone(nn.Module):
    """uint8 ``[B, C, H, W]`` -> float32 features ``[B, *feature_shape]`` (or the uint8 pixels for ``cnn``)."""

    def check_input(self, x: torch.Tensor, channels: int | None = None) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4 or (channels is not None and x.shape[1] != channels):
            want = f"[B, {channels}, H, W]" if channels is not None else "[B, C, H, W]"
            raise ValueError(f"{type(self).__name__}: expected uint8 images {want}, got {x.dtype} {tuple(x.shape)}")


class DomainFeatures(Backbone):
    def __init__(self, network: ResNet) -> None:
        super().__init__()
        self.network = network.eval()
        self.network.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x, self.network.config.in_channels)
        return self.network.features(preprocess(x))  # [B, 64]


class InceptionFeatures(Backbone):
    def __init__(self, weights: str) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.network = FeatureExtractorInceptionV3(INCEPTION_NAME, [INCEPTION_FEATURES],
                                                   feature_extractor_weights_path=weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB by replication
        (features,) = self.network(x)  # [B, 2048]
        return features


class Pixels(Backbone):
    """The ``cnn`` backbone: images pass through unchanged; the per-fold ConvHead does all the work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x


def build_backbone(spec: BackboneSpec, device: torch.device | str = "cpu") -> Backbone:
    """Instantiate ``spec`` in eval mode on ``device``."""
    if spec.kind == "domain":
        backbone: Backbone = DomainFeatures(load_checkpoint(spec.path))
    elif spec.kind == "inception":
        backbone = InceptionFeatures(spec.path)
    else:
        backbone = Pixels()
    return backbone.to(device).eval()
