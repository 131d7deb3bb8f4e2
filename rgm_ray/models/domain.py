"""The *domain* network: the thesis's ResNet trained on the real data's labels.

It is this project's offline stand-in for Inception-V3 (no pretrained weights can be downloaded
here): its pooled features feed the importance-weight classifier (``--backbone domain``) and FID/KID,
its logits give a domain Inception Score. Numbers computed with it are labelled "domain", never
presented as Inception numbers.

:func:`ensure_domain` is the one way a stage gets a domain network: it reuses a checkpoint trained on
the same dataset with the same config and trains one otherwise, with :data:`DEFAULT_DOMAIN` unless the
caller brings its own config (the pipeline passes its preset's ``domain`` section).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

from rgm_ray.data import ImageDataset, load_dataset
from rgm_ray.models.checkpoint import CONFIG_FILE, read_checkpoint_config, save_checkpoint
from rgm_ray.models.resnet import ResNet, ResNetConfig, preprocess
from rgm_ray.seeding import numpy_rng
from rgm_ray.tracking import NullTracker, Tracker
from rgm_ray.configs import strict_from_dict

KEY_TEST_ACCURACY = "test_accuracy"
KEY_TRAIN_LOSS = "train_ce"


@dataclass(frozen=True)
class DomainConfig:
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    train_images: int | None = None  # first N training images only (quick runs)
    test_images: int | None = None  # measure test accuracy on the first N test images only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError(f"domain: epochs, batch_size and lr must be positive, got {self}")
        if self.train_images is not None and self.train_images < self.batch_size:
            raise ValueError(f"domain.train_images={self.train_images} is smaller than one batch")
        if self.test_images is not None and self.test_images <= 0:
            raise ValueError(f"domain.test_images must be positive or null, got {self.test_images}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DomainConfig":
        return strict_from_dict(cls, d, "domain")


# The domain network ``rgm weigh`` and ``rgm evaluate`` train when given no --domain-checkpoint (~1 min
# on 2 CPU cores): a quick one, trained on the first 6400 train images only, so the weigh stage can
# keep the rest of the train split as an unseen real pool. Changing it changes the numbers of those
# standalone runs (the pipeline always passes its own config).
DEFAULT_DOMAIN = DomainConfig(epochs=1, batch_size=128, train_images=6400)


@dataclass(frozen=True)
class DomainCheckpoint:
    """A domain ResNet checkpoint directory that :func:`ensure_domain` made sure of."""

    path: Path
    trained: bool  # True: trained by this call; False: a matching checkpoint was reused
    metrics: dict[str, Any]  # as recorded when it was trained (test accuracy, sizes, seconds)


@torch.no_grad()
def predict_logits(model: ResNet, images: np.ndarray, *, batch_size: int = 512,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Class logits [n, classes] for uint8 images (eval mode)."""
    model.eval()
    out = [model(preprocess(torch.from_numpy(images[i:i + batch_size]).to(device))).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def train_domain_classifier(train: ImageDataset, test: ImageDataset, config: DomainConfig, out: str | Path,
                            *, tracker: Tracker | None = None, device: torch.device | None = None,
                            progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Supervised cross-entropy training on ``train``; checkpoint to ``out`` with its test accuracy."""
    tracker = tracker or NullTracker()
    device = device or torch.device("cpu")
    images, labels = train.images, train.labels
    if config.train_images is not None:
        images, labels = images[: config.train_images], labels[: config.train_images]
    model = ResNet(ResNetConfig(in_channels=train.shape[0], num_classes=len(train.classes)),
                   seed=config.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = len(images) // config.batch_size
    torch.manual_seed(config.seed)
    bar = progress(total=config.epochs * steps_per_epoch, desc="train domain", unit="step") if progress else None
    started = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = numpy_rng(config.seed, epoch).permutation(len(images))
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * config.batch_size:(step + 1) * config.batch_size])
            x = preprocess(torch.from_numpy(images[idx]).to(device))
            loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.log_metrics({KEY_TRAIN_LOSS: loss.item()}, step=epoch * steps_per_epoch + step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ce=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    n_test = config.test_images or len(test)
    logits = predict_logits(model, test.images[:n_test], device=device)
    accuracy = float((logits.argmax(1) == test.labels[:n_test]).mean())
    summary = {KEY_TEST_ACCURACY: accuracy, "train_seconds": time.perf_counter() - started,
               "dataset": train.name, "train_images": len(images), "test_images": n_test}
    tracker.log_metrics({KEY_TEST_ACCURACY: accuracy})
    save_checkpoint(out, model.cpu(), meta={"dataset": train.name, "classes": list(train.classes),
                                           "domain_config": asdict(config), "metrics": summary})
    return summary


def _trained_as(path: Path, dataset: str, config: DomainConfig) -> bool:
    """True when ``path`` holds a domain checkpoint trained on ``dataset`` with ``config``."""
    if not (path / CONFIG_FILE).is_file():
        return False
    record = read_checkpoint_config(path)
    return record.get("dataset") == dataset and record.get("domain_config") == asdict(config)


def ensure_domain(dataset: str, out: str | Path, config: DomainConfig = DEFAULT_DOMAIN, *,
                  root: str | Path | None = None, tracker: Tracker | None = None, device: torch.device | None = None,
                  progress: Callable[..., Any] | None = None) -> DomainCheckpoint:
    """The domain network for ``dataset`` in ``out``: reused when ``out`` holds one trained on ``dataset``
    with ``config``, else trained on its train split (test accuracy on its test split) and written
    atomically to ``out``, replacing whatever checkpoint was there."""
    out = Path(out)
    trained = not _trained_as(out, dataset, config)
    if trained:
        train_domain_classifier(load_dataset(dataset, "train", root), load_dataset(dataset, "test", root), config,
                                out, tracker=tracker, device=device, progress=progress)
    return DomainCheckpoint(out, trained, read_checkpoint_config(out)["metrics"])
