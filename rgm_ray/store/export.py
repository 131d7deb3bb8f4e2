"""Export a real dataset split as a sample set, so real data and samples share one code path."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from rgm_ray.data import ImageDataset
from rgm_ray.store.lock import output_lock
from rgm_ray.store.manifest import Manifest, provenance
from rgm_ray.store.schema import make_table
from rgm_ray.store.writer import SampleSetWriter

DEFAULT_SHARD_SIZE = 5000


def dataset_source(dataset: ImageDataset) -> str:
    return f"dataset:{dataset.name}/{dataset.split}"


def export_dataset(dataset: ImageDataset, out: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                   overwrite: bool = False, command: str | None = None,
                   progress: Iterator | None = None) -> Manifest:
    """Write ``dataset`` to ``out`` with ``sample_id`` = row index, in shards of ``shard_size`` rows."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    source = dataset_source(dataset)
    info = {"dataset": dataset.name, "split": dataset.split, "read_from": dataset.source}
    starts = range(0, len(dataset), shard_size)
    with output_lock(out, command=command), SampleSetWriter(out, source=source, overwrite=overwrite,
                                                            prov=provenance(command), info=info) as writer:
        for start in (progress(starts) if progress else starts):
            stop = min(start + shard_size, len(dataset))
            writer.write(make_table(np.arange(start, stop), dataset.images[start:stop],
                                    dataset.labels[start:stop], source=source))
    assert writer.manifest is not None
    return writer.manifest
