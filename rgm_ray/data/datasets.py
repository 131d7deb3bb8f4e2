"""Real image datasets by name, read offline from local files into uint8 N x C x H x W arrays.

``fashion-mnist`` is the embedded default (Debian's ``dataset-fashion-mnist`` package);
``cifar10`` is the thesis's data, read with torchvision from a root the user provides.
Nothing here downloads: a missing dataset fails with the path looked at and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rgm_ray.data.idx import read_idx

SPLITS = ("train", "test")
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says where and how to fix it."""


@dataclass(frozen=True)
class ImageDataset:
    """A split of a real dataset held in memory."""

    name: str
    split: str
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    classes: tuple[str, ...]
    source: str  # where it was read from, recorded in sample-set metadata

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}/{self.split}: images must be uint8 [N,C,H,W], "
                             f"got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}/{self.split}: {self.labels.shape[0]} labels "
                             f"for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W)."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]


def _fashion_mnist_files(root: Path, split: str) -> tuple[Path, Path] | None:
    """Find the IDX pair for ``split`` in a flat directory or torchvision's ``FashionMNIST/raw``."""
    prefix = "train" if split == "train" else "t10k"
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for suffix in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def _load_fashion_mnist(split: str, root: str | Path | None) -> ImageDataset:
    base = Path(root) if root is not None else FASHION_MNIST_DEFAULT_ROOT
    found = _fashion_mnist_files(base, split)
    if found is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST {split} split not found under {base} (looked for "
            f"{'train' if split == 'train' else 't10k'}-images-idx3-ubyte[.gz] there and in "
            f"FashionMNIST/raw/). Fix: 'apt-get install dataset-fashion-mnist' (installs to "
            f"{FASHION_MNIST_DEFAULT_ROOT}) or pass --root DIR holding the IDX files."
        )
    images_path, labels_path = found
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path}: images {images.shape} do not match labels "
                         f"{labels_path} {labels.shape}")
    return ImageDataset("fashion-mnist", split, np.ascontiguousarray(images[:, None]),
                        labels.astype(np.int64), FASHION_MNIST_CLASSES, str(images_path))


def _load_cifar10(split: str, root: str | Path | None) -> ImageDataset:
    if root is None:
        raise DatasetNotFoundError(
            "cifar10 needs --root DIR: a directory holding torchvision's 'cifar-10-batches-py' "
            "folder (extract cifar-10-python.tar.gz there). rgm_ray never downloads data."
        )
    folder = Path(root) / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: {folder} does not exist. Extract cifar-10-python.tar.gz "
            f"into {root} (torchvision's CIFAR10 layout)."
        )
    from torchvision.datasets import CIFAR10  # torchvision's own reader of the user's files

    ds = CIFAR10(str(root), train=split == "train", download=False)
    images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
    return ImageDataset("cifar10", split, images, np.asarray(ds.targets, dtype=np.int64),
                        CIFAR10_CLASSES, str(folder))


_LOADERS: dict[str, Callable[[str, str | Path | None], ImageDataset]] = {
    "fashion-mnist": _load_fashion_mnist,
    "cifar10": _load_cifar10,
}
DATASET_NAMES = tuple(_LOADERS)
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def load_dataset(name: str, split: str, root: str | Path | None = None) -> ImageDataset:
    """Load ``split`` ("train" or "test") of dataset ``name`` from local files."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return _LOADERS[name](split, root)
