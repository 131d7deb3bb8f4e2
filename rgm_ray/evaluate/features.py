"""Feature extractors for the metrics, run through torch-fidelity's registry and batching code.

Two extractors, chosen by name:

* ``domain``: the project's domain ResNet (:mod:`rgm_ray.models.domain`), wrapped as a torch-fidelity
  :class:`~torch_fidelity.FeatureExtractorBase` and registered as :data:`DOMAIN_EXTRACTOR`. Its pooled
  64-d features feed FID/KID/precision-recall, its class logits a *domain* Inception Score. It is
  the offline stand-in for Inception; its numbers are never comparable to published Inception ones.
* ``inception``: torch-fidelity's own Inception-V3 (``inception-v3-compat``), loaded from a local
  weights file. torch-fidelity downloads the weights when no path is given; that is refused here.

Both receive uint8 ``[B, C, H, W]`` batches, exactly what torch-fidelity feeds its extractors. The
checkpoint directory (domain) or the weights file (inception) travels through torch-fidelity's own
``feature_extractor_weights_path`` argument, so the registered class is built by torch-fidelity's
``create_feature_extractor`` like any built-in extractor.
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
from rgm_ray.models.checkpoint import load_checkpoint, read_checkpoint_config
from rgm_ray.models.inception import check_inception_weights
from rgm_ray.models.resnet import ResNet, preprocess

DOMAIN_EXTRACTOR = "rgm-domain"
INCEPTION_EXTRACTOR = "inception-v3-compat"
EXTRACTOR_KINDS = ("domain", "inception")

# Layer names the domain extractor provides.
DOMAIN_FEATURES = "pool64"
DOMAIN_LOGITS = "logits"
# torch-fidelity's defaults for Inception: 2048-d pool features; IS from the unbiased logits.
INCEPTION_FEATURES = "2048"
INCEPTION_LOGITS = "logits_unbiased"
# Tensors in an Inception state dict that a wrong file would not have.


def _domain_checkpoint_record(checkpoint: str | Path) -> dict[str, Any]:
    record = read_checkpoint_config(checkpoint)
    if record["kind"] != ResNet.kind:
        raise ValueError(f"{checkpoint}: a {record['kind']!r} checkpoint, not a domain ResNet "
                         "(see rgm_ray.models.domain.train_domain_classifier)")
    return record


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
        if feature_extractor_weights_path is None:
            raise ValueError(f"feature extractor {name!r} needs feature_extractor_weights_path = a domain "
                             "ResNet checkpoint directory")
        record = _domain_checkpoint_record(feature_extractor_weights_path)
        self.model: ResNet = load_checkpoint(feature_extractor_weights_path)
        self.image_shape: tuple[int, int, int] | None = DATASET_SHAPES.get(record.get("dataset", ""))

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
        channels = self.model.config.in_channels
        if x.shape[1] != channels or (self.image_shape and tuple(x.shape[1:]) != self.image_shape):
            expected = self.image_shape or f"({channels}, H, W)"
            raise ValueError(f"{self.name}: the domain network takes images of shape {expected}, "
                             f"got {tuple(x.shape[1:])}")
        pooled = self.model.features(preprocess(x))  # [B, widths[-1]]
        out = {DOMAIN_FEATURES: pooled, DOMAIN_LOGITS: self.model.head(pooled)}
        return tuple(out[name] for name in self.features_list)


def register_domain_extractor() -> None:
    """Register :class:`DomainFeatureExtractor` with torch-fidelity (idempotent)."""
    if DOMAIN_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN_EXTRACTOR, DomainFeatureExtractor)


register_domain_extractor()


@dataclass(frozen=True)
class ExtractorSpec:
    """Which torch-fidelity extractor to build, from which weights, and which layers to read."""

    kind: str  # "domain" | "inception"
    registry_name: str
    weights_path: str
    features_layer: str  # FID, KID, precision/recall
    logits_layer: str  # Inception Score
    rgb: bool  # replicate grayscale to 3 channels (Inception only takes RGB)

    @property
    def description(self) -> str:
        if self.kind == "domain":
            return (f"domain ResNet features ({self.features_layer}, IS from {self.logits_layer}) of checkpoint "
                    f"{self.weights_path}")
        return (f"Inception-V3 (torch-fidelity {self.registry_name}, {self.features_layer}-d pool features, "
                f"IS from {self.logits_layer}) from {self.weights_path}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "registry_name": self.registry_name, "weights_path": self.weights_path,
                "features_layer": self.features_layer, "logits_layer": self.logits_layer,
                "description": self.description, "comparable_to_inception_numbers": self.kind == "inception"}


def domain_spec(checkpoint: str | Path) -> ExtractorSpec:
    """Spec for the domain extractor; checks that ``checkpoint`` is a ResNet checkpoint directory."""
    _domain_checkpoint_record(checkpoint)
    return ExtractorSpec("domain", DOMAIN_EXTRACTOR, str(checkpoint), DOMAIN_FEATURES, DOMAIN_LOGITS, rgb=False)


def inception_spec(weights: str | Path | None) -> ExtractorSpec:
    """Spec for torch-fidelity's Inception-V3 from a local file; never lets torch-fidelity download.

    The file is opened with ``weights_only=True`` first, so a wrong or unsafe file fails here with
    a clear message instead of inside torch-fidelity's unrestricted ``torch.load``.
    """
    path = check_inception_weights(weights, needed_by="--features inception")
    return ExtractorSpec("inception", INCEPTION_EXTRACTOR, str(path), INCEPTION_FEATURES, INCEPTION_LOGITS,
                         rgb=True)


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
            self._extractor = create_feature_extractor(
                self.spec.registry_name, [self.spec.features_layer, self.spec.logits_layer], cuda=self.cuda,
                feature_extractor_weights_path=self.spec.weights_path, verbose=False)
        return self._extractor

    def __call__(self, images: np.ndarray) -> Features:
        if len(images) == 0:
            raise ValueError("no images to extract features from")
        out = get_featuresdict_from_dataset(ImageArrayDataset(images, rgb=self.spec.rgb), self.extractor,
                                            self.batch_size, self.cuda, save_cpu_ram=True, verbose=False)
        return Features(out[self.spec.features_layer].float(), out[self.spec.logits_layer].float())
