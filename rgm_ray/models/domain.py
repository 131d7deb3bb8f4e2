"""The *domain* network: the thesis's ResNet trained on the real data's labels.

It is this project's offline stand-in for Inception-V3 (no pretrained weights can be downloaded
here): its pooled features feed the importance-weight classifier (``--backbone domain``) and FID/KID,
its logits give a domain Inception Score. Numbers computed with it are labelled "domain", never
presented as Inception numbers.

:func:`ensure_domain` is the one way a stage gets a domain network: it reuses a checkpoint trained on
the same dataset with the same config and trains one otherwise, with :data:`DEFAULT_DOMAIN` unless the
caller brings its own config (the pipeline passes its preset's ``domain`` section).

Two recipes share one training loop: the quick one (the defaults: plain Adam at a constant learning
rate, no augmentation; 80 % Fashion-MNIST test accuracy after one epoch on 20,000 images) and the
strong one of the committed demo network (random shifts and flips, warm-up and cosine decay, decoupled
weight decay, label smoothing: 93.2 % after 30 epochs on 30,000; ``rgm_ray/assets/demo/TRAINING.md``).
The recipe fields default to the quick recipe's behaviour, so a config without them trains exactly as
before they existed.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch.nn import functional as F

from rgm_ray.data import ImageDataset, load_dataset
from rgm_ray.models.checkpoint import CONFIG_FILE, read_checkpoint_config, save_checkpoint
from rgm_ray.models.resnet import ResNet, ResNetConfig, preprocess
from rgm_ray.seeding import numpy_rng
from rgm_ray.store.atomic import atomic_directory
from rgm_ray.tracking import NullTracker, Tracker
from rgm_ray.configs import strict_from_dict

KEY_TEST_ACCURACY = "test_accuracy"
KEY_EPOCH_ACCURACY = "epoch_test_accuracy"  # the test accuracy after each epoch (the last is KEY_TEST_ACCURACY)
KEY_TRAIN_LOSS = "train_ce"
AUGMENT_STREAM = 1  # seed path of an epoch's shifts and flips, beside the epoch's batch order (seed, epoch)


@dataclass(frozen=True)
class DomainConfig:
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3  # the peak learning rate when warmup_epochs or schedule shape it
    train_images: int | None = None  # first N training images only (quick runs)
    test_images: int | None = None  # measure test accuracy on the first N test images only
    seed: int = 0
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays per step to 0 after the warm-up
    warmup_epochs: float = 0.0  # linear warm-up of the learning rate from lr/steps to lr
    weight_decay: float = 0.0  # decoupled (AdamW-style)
    label_smoothing: float = 0.0
    crop_padding: int = 0  # random shifts by up to this many pixels (zero padding, then a random crop)
    flip: bool = False  # random left-right mirroring (label-preserving for Fashion-MNIST and CIFAR-10)

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError(f"domain: epochs, batch_size and lr must be positive, got {self}")
        if self.train_images is not None and self.train_images < self.batch_size:
            raise ValueError(f"domain.train_images={self.train_images} is smaller than one batch")
        if self.test_images is not None and self.test_images <= 0:
            raise ValueError(f"domain.test_images must be positive or null, got {self.test_images}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"domain.warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1 or self.crop_padding < 0:
            raise ValueError("domain: weight_decay and crop_padding must be >= 0 and label_smoothing in [0, 1), "
                             f"got {self.weight_decay}, {self.crop_padding} and {self.label_smoothing}")

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
    trained: bool  # True: trained by this call; False: a matching checkpoint was reused (or copied)
    metrics: dict[str, Any]  # as recorded when it was trained (test accuracy, sizes, seconds)
    copied_from: Path | None = None  # the committed checkpoint this call copied to ``path``


def learning_rate(config: DomainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (from 0): a linear warm-up over ``warmup_epochs``,
    then ``lr`` (constant) or a cosine from ``lr`` towards 0 at the last step; exactly ``lr`` by default."""
    warmup, total = round(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def augment(images: np.ndarray, rng: np.random.Generator, *, padding: int, flip: bool) -> np.ndarray:
    """uint8 ``images`` [n, C, H, W], each shifted by up to ``padding`` pixels per axis (zero fill: the
    black background) and mirrored left-right with probability 1/2; returned as is, drawing nothing,
    when ``padding`` is 0 and ``flip`` False."""
    n, _, h, w = images.shape
    if padding:
        padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        dy, dx = rng.integers(0, 2 * padding + 1, size=(2, n))
        images = np.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx))])
    if flip:
        images = np.where((rng.random(n) < 0.5)[:, None, None, None], images[..., ::-1], images)
    return images


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
    """Supervised cross-entropy training on ``train``; checkpoint to ``out`` with its test accuracy (also
    measured after every epoch: eval mode draws nothing and leaves the weights and batch-norm statistics
    alone, so the learning curve costs time, not reproducibility)."""
    tracker = tracker or NullTracker()
    device = device or torch.device("cpu")
    images, labels = train.images, train.labels
    if config.train_images is not None:
        images, labels = images[: config.train_images], labels[: config.train_images]
    model = ResNet(ResNetConfig(in_channels=train.shape[0], num_classes=len(train.classes)),
                   seed=config.seed).to(device)
    # weight_decay=0 skips the decay branch: the quick recipe's plain Adam
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 decoupled_weight_decay=True)
    steps_per_epoch = len(images) // config.batch_size
    n_test = config.test_images or len(test)
    torch.manual_seed(config.seed)
    bar = progress(total=config.epochs * steps_per_epoch, desc="train domain", unit="step") if progress else None
    curve: list[float] = []
    postfix: dict[str, str] = {}  # the last epoch and its test accuracy, shown on the progress bar
    seconds = 0.0  # training only, as before the per-epoch evaluations
    for epoch in range(config.epochs):
        started = time.perf_counter()
        model.train()
        order = numpy_rng(config.seed, epoch).permutation(len(images))
        jitter = numpy_rng(config.seed, epoch, AUGMENT_STREAM)
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * config.batch_size:(step + 1) * config.batch_size])
            batch = augment(images[idx], jitter, padding=config.crop_padding, flip=config.flip)
            x = preprocess(torch.from_numpy(batch).to(device))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps_per_epoch + step, steps_per_epoch)
            loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]).to(device),
                                   label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.log_metrics({KEY_TRAIN_LOSS: loss.item()}, step=epoch * steps_per_epoch + step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(postfix | {"ce": f"{loss.item():.3f}"})
        seconds += time.perf_counter() - started
        logits = predict_logits(model, test.images[:n_test], device=device)
        curve.append(float((logits.argmax(1) == test.labels[:n_test]).mean()))
        tracker.log_metrics({KEY_TEST_ACCURACY: curve[-1]}, step=(epoch + 1) * steps_per_epoch)
        if bar is not None:  # the epoch's line of the progress output (TRAINING.md's log)
            postfix = {"epoch": str(epoch + 1), "test_acc": f"{curve[-1]:.4f}"}
            bar.set_postfix(postfix | {"ce": f"{loss.item():.3f}"})
    if bar is not None:
        bar.close()
    summary = {KEY_TEST_ACCURACY: curve[-1], KEY_EPOCH_ACCURACY: curve, "train_seconds": seconds,
               "dataset": train.name, "train_images": len(images), "test_images": n_test}
    save_checkpoint(out, model.cpu(), meta={"dataset": train.name, "classes": list(train.classes),
                                           "domain_config": asdict(config), "metrics": summary})
    return summary


def trained_as(path: str | Path, dataset: str, config: DomainConfig) -> bool:
    """True when ``path`` holds a domain checkpoint trained on ``dataset`` with ``config`` (a record
    written before a recipe field existed reads as that field's default, which is how it was trained)."""
    if not (Path(path) / CONFIG_FILE).is_file():
        return False
    record = read_checkpoint_config(path)
    if record.get("dataset") != dataset or not isinstance(record.get("domain_config"), dict):
        return False
    try:
        return DomainConfig.from_dict(record["domain_config"]) == config
    except ValueError:  # a record this code cannot read: train afresh
        return False


def ensure_domain(dataset: str, out: str | Path, config: DomainConfig = DEFAULT_DOMAIN, *,
                  root: str | Path | None = None, committed: str | Path | None = None, tracker: Tracker | None = None,
                  device: torch.device | None = None, progress: Callable[..., Any] | None = None) -> DomainCheckpoint:
    """The domain network for ``dataset`` in ``out``: reused when ``out`` holds one trained on ``dataset``
    with ``config``, else copied from the checkpoint directory ``committed`` when that one was (a
    committed network), else trained on its train split (test accuracy on its test split); a copy or a
    training run is written atomically to ``out``, replacing whatever checkpoint was there."""
    out = Path(out)
    copied = None
    if committed is not None and not trained_as(out, dataset, config) and trained_as(committed, dataset, config):
        with atomic_directory(out, overwrite=True) as tmp:
            shutil.copytree(committed, tmp, dirs_exist_ok=True)
        copied = Path(committed)
    trained = not trained_as(out, dataset, config)
    if trained:
        train_domain_classifier(load_dataset(dataset, "train", root), load_dataset(dataset, "test", root), config,
                                out, tracker=tracker, device=device, progress=progress)
    return DomainCheckpoint(out, trained, read_checkpoint_config(out)["metrics"], copied)
