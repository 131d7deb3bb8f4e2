"""The shared feature extractors (:mod:`rgm_ray.models.extractors`) as the metrics run them: through
torch-fidelity's registry and batching code.

* ``domain``: the project's domain ResNet, wrapped as a torch-fidelity
  :class:`~torch_fidelity.FeatureExtractorBase` and registered as :data:`DOMAIN_EXTRACTOR`. Its pooled
  64-d features feed FID/KID/precision-recall, its class logits a *domain* Inception Score. It is
  the offline stand-in for Inception; its numbers are never comparable to published Inception ones.
* ``inception``: torch-fidelity's own Inception-V3 (``inception-v3-compat``), loaded from a local
  weights file. torch-fidelity downloads the weights when no path is given; that is refused here.

Which network from which file (and its checks) is the shared :class:`FeatureExtractorSpec`;
:class:`ExtractorSpec` adds what torch-fidelity needs: the registry name and the layer each metric
reads. Both extractors receive uint8 ``[B, C, H, W]`` batches, exactly what torch-fidelity feeds its
extractors. The checkpoint directory (domain) or the weights file (inception) travels through
torch-fidelity's own ``feature_extractor_weights_path`` argument, so the registered class is built by
torch-fidelity's ``create_feature_extractor`` like any built-in extractor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from rgm_ray.data import DATASET_SHAPES
from rgm_ray.models.checkpoint import read_checkpoint_config
from rgm_ray.models.extractors import (INCEPTION_FEATURES, INCEPTION_NAME, DomainFeatures, FeatureExtractorSpec,
                                       build_feature_extractor)

DOMAIN_EXTRACTOR = "rgm-domain"

# Layer names the domain extractor provides.
DOMAIN_FEATURES = "pool64"
DOMAIN_LOGITS = "logits"
# torch-fidelity's default for the Inception Score: the unbiased logits.
INCEPTION_LOGITS = "logits_unbiased"


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor over a domain ResNet checkpoint (``feature_extractor_weights_path``).

    Provides ``pool64`` (global-average-pooled penultimate features) and ``logits`` (class logits).
    The input must already have the network's channel count and, when the checkpoint names its
    dataset, that dataset's image size: a different size would give features the network was never
    trained on, so it is an error rather than a silent resize.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, features_list)
        spec = FeatureExtractorSpec("domain", feature_extractor_weights_path)
        self.domain: DomainFeatures = build_feature_extractor(spec)
        self.image_shape: tuple[int, int, int] | None = DATASET_SHAPES.get(
            read_checkpoint_config(spec.path).get("dataset", ""))

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return DOMAIN_FEATURES, DOMAIN_LOGITS

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return DOMAIN_LOGITS if metric == "isc" else DOMAIN_FEATURES

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"{self.name}: expected uint8 images [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
        channels = self.domain.network.config.in_channels
        if x.shape[1] != channels or (self.image_shape and tuple(x.shape[1:]) != self.image_shape):
            expected = self.image_shape or f"({channels}, H, W)"
            raise ValueError(f"{self.name}: the domain network takes images of shape {expected}, "
                             f"got {tuple(x.shape[1:])}")
        pooled = self.domain(x)  # [B, widths[-1]]
        out = {DOMAIN_FEATURES: pooled, DOMAIN_LOGITS: self.domain.network.head(pooled)}
        return tuple(out[name] for name in self.features_list)


def register_domain_extractor() -> None:
    """Register :class:`DomainFeatureExtractor` with torch-fidelity (idempotent)."""
    if DOMAIN_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN_EXTRACTOR, DomainFeatureExtractor)


register_domain_extractor()


@dataclass(frozen=True)
class FidelityLayers:
    """How torch-fidelity runs one extractor kind."""

    registry_name: str
    features_layer: str  # FID, KID, precision/recall
    logits_layer: str  # Inception Score
    rgb: bool  # replicate grayscale to 3 channels (Inception only takes RGB)


FIDELITY_LAYERS = {"domain": FidelityLayers(DOMAIN_EXTRACTOR, DOMAIN_FEATURES, DOMAIN_LOGITS, rgb=False),
                   "inception": FidelityLayers(INCEPTION_NAME, INCEPTION_FEATURES, INCEPTION_LOGITS, rgb=True)}
EXTRACTOR_KINDS = tuple(FIDELITY_LAYERS)  # what ``rgm evaluate --features`` can run


@dataclass(frozen=True)
class ExtractorSpec:
    """A shared feature extractor and the torch-fidelity layers the metrics read from it."""

    network: FeatureExtractorSpec

    @property
    def kind(self) -> str:
        return self.network.kind

    @property
    def layers(self) -> FidelityLayers:
        return FIDELITY_LAYERS[self.kind]

    @property
    def description(self) -> str:
        layers = self.layers
        if self.kind == "domain":
            return (f"domain ResNet features ({layers.features_layer}, IS from {layers.logits_layer}) of checkpoint "
                    f"{self.network.path}")
        return (f"Inception-V3 (torch-fidelity {layers.registry_name}, {layers.features_layer}-d pool features, "
                f"IS from {layers.logits_layer}) from {self.network.path}")

    def to_dict(self) -> dict[str, Any]:
        layers = self.layers
        return {"kind": self.kind, "registry_name": layers.registry_name, "weights_path": self.network.path,
                "features_layer": layers.features_layer, "logits_layer": layers.logits_layer,
                "description": self.description, "comparable_to_inception_numbers": self.kind == "inception"}


def domain_spec(checkpoint: str | Path) -> ExtractorSpec:
    """Spec for the domain extractor; checks that ``checkpoint`` is a ResNet checkpoint directory."""
    return ExtractorSpec(FeatureExtractorSpec("domain", str(checkpoint)))


def inception_spec(weights: str | Path | None) -> ExtractorSpec:
    """Spec for torch-fidelity's Inception-V3 from a local file; never lets torch-fidelity download.

    The file is opened with ``weights_only=True`` first, so a wrong or unsafe file fails here with
    a clear message instead of inside torch-fidelity's unrestricted ``torch.load``.
    """
    return ExtractorSpec(FeatureExtractorSpec("inception", None if weights is None else str(Path(weights))))


class ImageArrayDataset(Dataset):
    """uint8 ``[N, C, H, W]`` images as the torch Dataset torch-fidelity consumes (CHW uint8 tensors)."""

    def __init__(self, images: np.ndarray, *, rgb: bool = False) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"need uint8 images [N, 1|3, H, W], got {images.dtype} {images.shape}")
        self.images = images
        self.rgb = rgb

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(self.images[index])  # [C, H, W]
        if self.rgb and image.shape[0] == 1:
            image = image.expand(3, -1, -1)  # grayscale -> RGB by replication, as Inception expects
        return image


@dataclass(frozen=True)
class Features:
    """Per-image features of one image array: ``features`` [n, d] and ``logits`` [n, classes], float32."""

    features: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def take(self, index: np.ndarray) -> "Features":
        """Rows ``index`` (a numpy int array; repeats allowed)."""
        idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
        return Features(self.features[idx], self.logits[idx])


class FidelityFeaturizer:
    """Builds the torch-fidelity extractor once and maps uint8 image arrays to :class:`Features`.

    Batching goes through torch-fidelity's own ``get_featuresdict_from_dataset`` (``num_workers=0``:
    the images are already in memory). The extractor runs in eval mode, so an image's features do
    not depend on the rest of its batch.
    """

    def __init__(self, spec: ExtractorSpec, *, batch_size: int = 512, device: str | torch.device = "cpu") -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.spec = spec
        self.batch_size = batch_size
        self.cuda = torch.device(device).type == "cuda"
        self._extractor: FeatureExtractorBase | None = None

    @property
    def description(self) -> dict[str, Any]:
        return self.spec.to_dict()

    @property
    def extractor(self) -> FeatureExtractorBase:
        if self._extractor is None:
            layers = self.spec.layers
            self._extractor = create_feature_extractor(
                layers.registry_name, [layers.features_layer, layers.logits_layer], cuda=self.cuda,
                feature_extractor_weights_path=self.spec.network.path, verbose=False)
        return self._extractor

    def __call__(self, images: np.ndarray) -> Features:
        if len(images) == 0:
            raise ValueError("no images to extract features from")
        layers = self.spec.layers
        out = get_featuresdict_from_dataset(ImageArrayDataset(images, rgb=layers.rgb), self.extractor,
                                            self.batch_size, self.cuda, save_cpu_ram=True, verbose=False)
        return Features(out[layers.features_layer].float(), out[layers.logits_layer].float())
