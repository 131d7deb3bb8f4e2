"""Scoring a sample set on Ray Data: Parquet shards -> actor pool of weighers -> (sample_id, log_weight).

``read_parquet`` (one block per shard) feeds ``map_batches`` with :class:`LogWeightScorer`, a callable
class that loads the fitted weigher once per actor. Each actor takes a *fractional* CPU by default:
a pool whose actors hold every CPU starves Ray Data's read tasks and hangs without a message (ray
issue 44687), so ``runtime.worker_count(reserve_cpu=True)`` refuses such a pool. Results are collected on the driver and
joined back by ``sample_id``; Ray Data's block layout never leaks into the output.

The weights do not depend on batch size, worker count or block layout: the weigher evaluates its
networks in fixed, zero-padded chunks (``features.apply_in_chunks``) and picks each sample's fold
model from its id alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from rgm_ray.runtime import (ClusterOptions, autodetect_device, init_ray, quiet_ray_data, set_torch_threads,
                             worker_count)
from rgm_ray.store import IMAGE, LOG_WEIGHT, SAMPLE_ID, SampleSet
from rgm_ray.weigh.weigher import load_weigher

FOLD = "fold"  # which cross-fit model scored the row (returned to the driver, not written to the set)
WORKER = "worker_pid"  # which actor scored it (load-balance diagnostics)
BLOCKS_PER_WORKER = 4


@dataclass(frozen=True)
class ScoringOptions:
    """How the scoring pass cuts its work; none of this changes the weights."""

    batch_size: int = 256
    # Blocks to repartition into before scoring. Ray Data packs Parquet files into few read blocks (up
    # to 128 MB each; a 3 MB set of 4 shards arrived as one block), and most actors would idle.
    # Repartitioning spreads it over the pool at the price of a barrier (the image column is held in the
    # object store, spilling to disk if needed). None: 4 per worker; 0: keep the read's blocks (for pools
    # far larger than the object store, which read into plenty of blocks anyway).
    blocks: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.blocks is not None and (isinstance(self.blocks, bool) or self.blocks < 0):
            raise ValueError(f"blocks must be a non-negative int, got {self.blocks!r}")


def decode_image_values(values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Ray Data's numpy form of the binary ``image`` column (an object array of bytes) -> uint8 ``[n, C, H, W]``."""
    size = int(np.prod(shape))
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    if (lengths != size).any():
        bad = int(np.flatnonzero(lengths != size)[0])
        raise ValueError(f"image {bad} of the batch has {lengths[bad]} bytes, expected {size} for shape {shape}")
    return np.frombuffer(bytearray(b"".join(values)), dtype=np.uint8).reshape(len(values), *shape)


class LogWeightScorer:
    """Ray Data callable class: loads the weigher once, maps ``{sample_id, image}`` batches to log-weights.

    A plain class, usable (and tested) without Ray.
    """

    def __init__(self, weigher_dir: str, threads: int = 1, device: str | None = None) -> None:
        set_torch_threads(threads)
        self.model = load_weigher(weigher_dir, device=autodetect_device(device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch[SAMPLE_ID], dtype=np.int64)
        images = decode_image_values(batch[IMAGE], self.model.config.image_shape)
        log_weights, folds = self.model.log_weights(ids, torch.from_numpy(images))
        return {SAMPLE_ID: ids, LOG_WEIGHT: log_weights, FOLD: folds, WORKER: np.full(ids.size, os.getpid())}


@dataclass(frozen=True)
class Scores:
    """Scored rows sorted by ``sample_id``."""

    sample_ids: np.ndarray  # int64
    log_weights: np.ndarray  # float32
    folds: np.ndarray  # int64
    workers: int
    rows_per_worker: dict[int, int]  # actor pid -> rows it scored
    seconds: float


def check_scores(sample_ids: np.ndarray, log_weights: np.ndarray, folds: np.ndarray, *, name: str) -> None:
    """Every log-weight must be finite; the message names the sample and the fold model."""
    bad = ~np.isfinite(log_weights)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: {int(bad.sum())} non-finite log-weight(s), first {log_weights[i]} for sample_id "
                         f"{sample_ids[i]} (fold model {folds[i]}); the classifier diverged")


def score_sample_set(samples: SampleSet, weigher_dir: str, cluster: ClusterOptions,
                     options: ScoringOptions = ScoringOptions(), *,
                     progress: Callable[..., Any] | None = None) -> Scores:
    """Log-weight of every row of ``samples`` from the weigher in ``weigher_dir`` (a path every worker can read)."""
    import ray

    init_ray(cluster.address)
    quiet_ray_data()
    workers = worker_count(cluster, ray.cluster_resources(), reserve_cpu=True,
                           node_cpus=[n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]])
    expected = np.sort(samples.read([SAMPLE_ID])[SAMPLE_ID].astype(np.int64))
    # absolute paths: Ray's workers do not share the driver's working directory
    dataset = ray.data.read_parquet([str(p.resolve()) for p in samples.shard_paths]).select_columns([SAMPLE_ID, IMAGE])
    blocks = BLOCKS_PER_WORKER * workers if options.blocks is None else options.blocks
    if blocks:
        dataset = dataset.repartition(blocks)
    scored = dataset.map_batches(
        LogWeightScorer, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cluster.cpus_per_worker,
        num_gpus=cluster.gpus_per_worker, batch_size=options.batch_size, batch_format="numpy",
        fn_constructor_kwargs={"weigher_dir": str(Path(weigher_dir).resolve()), "threads": cluster.threads,
                               "device": cluster.device})
    bar = progress(total=len(expected), desc="score", unit="img") if progress else None
    started = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {SAMPLE_ID: [], LOG_WEIGHT: [], FOLD: [], WORKER: []}
    for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
        for key, values in parts.items():
            values.append(batch[key])
        if bar is not None:
            bar.update(len(batch[SAMPLE_ID]))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    ids, log_weights, folds, pids = (np.concatenate(parts[k]) for k in (SAMPLE_ID, LOG_WEIGHT, FOLD, WORKER))
    rows_per_worker = {int(pid): int(n) for pid, n in zip(*np.unique(pids, return_counts=True))}
    order = np.argsort(ids, kind="stable")
    ids, log_weights, folds = ids[order], log_weights[order].astype(np.float32), folds[order]
    if ids.shape != expected.shape or not np.array_equal(ids, expected):
        raise RuntimeError(f"scoring {samples.path} returned {ids.size} rows for {expected.size} samples "
                           "(missing or duplicated sample ids)")
    check_scores(ids, log_weights, folds, name=str(samples.path))
    return Scores(ids, log_weights, folds, workers, rows_per_worker, seconds)
