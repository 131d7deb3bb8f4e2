"""The ssl stage: real data splits + an unlabelled source -> a trained classifier and ``metrics.json``.

Splits of the real data (indices into the training split unless noted), all deterministic:

    train split ──(train_subset, split_seed)──► used ──(val_size, split_seed)──► pool + val
    pool ──(labels, seed: class-balanced)──► labelled;  pool − labelled = the ``real`` source
    test split ──(test_subset, split_seed)──► test   (never used for selection)

The validation split depends on ``split_seed`` only, so every run seed and configuration of a sweep
selects on the same images; it is disjoint from the labelled subset and from the ``real`` source.
With ``labels: all`` nothing is left over, so ``real`` falls back to the labelled pool itself (the
semantic loss then sees the labelled images as unlabelled ones, as in Xu et al.'s all-label runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rgm_ray.data import ImageDataset, load_dataset
from rgm_ray.models.resnet import ResNet, ResNetConfig
from rgm_ray.seeding import numpy_rng
from rgm_ray.ssl.labels import balanced_label_subset, split_train_val
from rgm_ray.ssl.sources import NONE, REAL, SourceSpec, UnlabeledPool, load_sample_set_pool, pool_from_images
from rgm_ray.ssl.trainer import DEFAULT_VAL_SIZE, EpochCallback, SSLConfig, SSLData, train_ssl
from rgm_ray.store.atomic import ArtefactExistsError, atomic_write_json
from rgm_ray.store.lineage import log_sample_sets
from rgm_ray.tracking import NullTracker, Tracker

METRICS_JSON = "metrics.json"

# Stream tags of the fixed random subsets (drawn from split_seed).
_TRAIN_SUBSET_STREAM = 21
_TEST_SUBSET_STREAM = 22


@dataclass(frozen=True)
class RealSplits:
    """Sorted int64 indices: ``labeled``, ``val``, ``remainder`` into the training split, ``test`` into the test split."""

    labeled: np.ndarray
    val: np.ndarray
    remainder: np.ndarray
    test: np.ndarray
    pool_size: int


def _fixed_subset(n: int, size: int | None, seed: int, stream: int, what: str) -> np.ndarray:
    if size is None:
        return np.arange(n, dtype=np.int64)
    if size > n:
        raise ValueError(f"{what}={size} is larger than the split ({n} images)")
    return np.sort(numpy_rng(seed, stream).choice(n, size, replace=False)).astype(np.int64)


def select_indices(train_labels: np.ndarray, n_test: int, config: SSLConfig) -> RealSplits:
    """The deterministic real-data splits of one run (see the module docstring)."""
    used = _fixed_subset(len(train_labels), config.train_subset, config.split_seed, _TRAIN_SUBSET_STREAM,
                         "train_subset")
    val_size = config.val_size if config.val_size is not None else min(DEFAULT_VAL_SIZE, used.size // 10)
    if not 1 <= val_size < used.size:
        raise ValueError(f"val_size={val_size} must leave a non-empty pool out of {used.size} training images")
    pool_local, val_local = split_train_val(int(used.size), int(val_size), config.split_seed)
    pool, val = used[pool_local], used[val_local]
    labeled = pool[balanced_label_subset(train_labels[pool], config.labels, config.seed)]
    remainder = np.setdiff1d(pool, labeled, assume_unique=True)
    test = _fixed_subset(n_test, config.test_subset, config.split_seed, _TEST_SUBSET_STREAM, "test_subset")
    return RealSplits(labeled=labeled, val=val, remainder=remainder, test=test, pool_size=int(pool.size))


def load_ssl_data(dataset: str, source: SourceSpec, config: SSLConfig, *, root: str | Path | None = None) -> SSLData:
    """Read the real splits and the unlabelled source into memory."""
    return ssl_data(load_dataset(dataset, "train", root), load_dataset(dataset, "test", root), source, config)


def ssl_data(train: ImageDataset, test: ImageDataset, source: SourceSpec, config: SSLConfig,
             pool: UnlabeledPool | None = None) -> SSLData:
    """One run's data from real splits already in memory (a sweep reads them once for all its trials).

    A sample-set source's images are ``pool`` when given (read once per sweep), else read here.
    Inputs may be read-only (mapped from Ray's object store): the splits are copied out of them and
    the trainer only gathers batches from a pool, never writes to it.
    """
    splits = select_indices(train.labels, len(test), config)
    if source.kind == NONE:
        unlabeled = None
    elif source.kind == REAL:
        reuse = splits.remainder.size == 0
        idx = splits.labeled if reuse else splits.remainder
        unlabeled = pool_from_images(train.images[idx], reuses_labeled=reuse)
    else:
        unlabeled = pool if pool is not None else load_sample_set_pool(source, train.shape,
                                                                       weight_alpha=config.weight_alpha)
    return SSLData(labeled_x=train.images[splits.labeled], labeled_y=train.labels[splits.labeled],
                   val_x=train.images[splits.val], val_y=train.labels[splits.val],
                   test_x=test.images[splits.test], test_y=test.labels[splits.test],
                   pool_size=splits.pool_size, num_classes=len(train.classes), unlabeled=unlabeled)


def run_ssl(dataset: str, source: SourceSpec, config: SSLConfig, *, root: str | Path | None = None,
            source_name: str | None = None, out: str | Path | None = None, overwrite: bool = False,
            device: torch.device | None = None, tracker: Tracker | None = None,
            progress: Callable[..., Any] | None = None, on_epoch: EpochCallback | None = None,
            data: SSLData | None = None) -> dict[str, Any]:
    """Train and evaluate one semi-supervised classifier; write ``out/metrics.json`` when ``out`` is given.

    An existing ``metrics.json`` is refused unless ``overwrite`` (checked before any training). ``data``
    is the run's data already in memory (:func:`ssl_data`; a sweep's trials share their inputs), else it
    is read from ``dataset`` / ``root`` and ``source``.
    """
    tracker = tracker or NullTracker()
    metrics_path = Path(out) / METRICS_JSON if out is not None else None
    if metrics_path is not None and metrics_path.exists() and not overwrite:
        raise ArtefactExistsError(f"{metrics_path} already exists; pass --overwrite to replace it")
    if data is None:
        data = load_ssl_data(dataset, source, config, root=root)
    model = ResNet(ResNetConfig(in_channels=data.labeled_x.shape[1], num_classes=data.num_classes), seed=config.seed)
    unlabeled_info = {} if data.unlabeled is None else dict(data.unlabeled.info)
    tracker.log_params({"sizes": data.sizes(), "unlabeled_info": unlabeled_info})
    log_sample_sets(tracker, [] if source.path is None else [source.path], context="training")
    result = train_ssl(model, data, config, device=device, tracker=tracker, progress=progress, on_epoch=on_epoch)
    summary = {"dataset": dataset, "labels": config.labels_name, "unlabeled": str(source),
               "unlabeled_name": source_name or source.default_name, "unlabeled_info": unlabeled_info,
               "config": config.to_dict(), "model_config": model.config.to_dict(), **result}
    if metrics_path is not None:
        atomic_write_json(metrics_path, summary)
        tracker.log_artifact(metrics_path)
    return summary
