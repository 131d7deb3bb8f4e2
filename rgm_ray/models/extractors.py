"""Frozen image feature extractors: one family, shared by the weight classifier and the metrics.

"Which network, from which file" is a :class:`FeatureExtractorSpec`, checked when it is made, so a
wrong file fails with the flag to fix before any training or extraction:

* ``domain``: the project's domain ResNet (:mod:`rgm_ray.models.domain`) from its checkpoint
  directory; pooled 64-d penultimate features. The offline default -- it needs no download.
* ``inception``: torch-fidelity's Inception-V3 (``inception-v3-compat``) from a local weights file
  (checked by :mod:`rgm_ray.models.inception`); 2048-d pool features, grayscale replicated to RGB.

:func:`build_feature_extractor` turns a spec into a module mapping uint8 ``[B, C, H, W]`` to float32
features ``[B, d]`` in eval mode, so an image's features never depend on the rest of its batch. The
weigh stage pools these features; the evaluate stage runs the same networks through torch-fidelity's
batching (its domain wrapper lives there, being torch-fidelity specific).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rgm_ray.models.checkpoint import checkpoint_digest, load_checkpoint, read_checkpoint_config
from rgm_ray.models.inception import check_inception_weights
from rgm_ray.models.resnet import ResNet, preprocess
from rgm_ray.store.atomic import sha256_file

EXTRACTOR_KINDS = ("domain", "inception")
INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's name of its Inception-V3 feature extractor
INCEPTION_FEATURES = "2048"  # its pool-feature layer


@dataclass(frozen=True)
class FeatureExtractorSpec:
    """Which frozen network, from which file (domain: checkpoint directory; inception: weights file)."""

    kind: str
    path: str | None

    def __post_init__(self) -> None:
        if self.kind not in EXTRACTOR_KINDS:
            raise ValueError(f"unknown feature extractor {self.kind!r}; choose one of {', '.join(EXTRACTOR_KINDS)}")
        if self.kind == "inception":
            check_inception_weights(self.path, needed_by="the inception feature extractor")
            return
        if self.path is None:
            raise ValueError("the domain feature extractor needs a domain ResNet checkpoint directory "
                             "(--domain-checkpoint DIR)")
        kind = read_checkpoint_config(self.path)["kind"]
        if kind != ResNet.kind:
            raise ValueError(f"--domain-checkpoint {self.path}: a {kind!r} checkpoint, not a domain ResNet "
                             "(see rgm_ray.models.domain.ensure_domain)")

    def digest(self) -> str:
        """Content hash of the network's weights (a feature-cache key part)."""
        return checkpoint_digest(self.path) if self.kind == "domain" else sha256_file(self.path)


class FeatureExtractor(nn.Module):
    """uint8 ``[B, C, H, W]`` -> features ``[B, ...]``; subclasses call :meth:`check_input` first."""

    def check_input(self, x: torch.Tensor, channels: int | None = None) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4 or (channels is not None and x.shape[1] != channels):
            want = f"[B, {channels}, H, W]" if channels is not None else "[B, C, H, W]"
            raise ValueError(f"{type(self).__name__}: expected uint8 images {want}, got {x.dtype} {tuple(x.shape)}")


class DomainFeatures(FeatureExtractor):
    """The domain ResNet's pooled penultimate features; ``network`` also gives its class logits."""

    def __init__(self, network: ResNet) -> None:
        super().__init__()
        self.network = network.eval()
        self.network.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x, self.network.config.in_channels)
        return self.network.features(preprocess(x))  # [B, 64]


class InceptionFeatures(FeatureExtractor):
    """torch-fidelity's Inception-V3 2048-d pool features; grayscale is replicated to RGB."""

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


def build_feature_extractor(spec: FeatureExtractorSpec, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Instantiate ``spec`` in eval mode on ``device``."""
    extractor: FeatureExtractor = (DomainFeatures(load_checkpoint(spec.path)) if spec.kind == "domain"
                                   else InceptionFeatures(spec.path))
    return extractor.to(device).eval()
