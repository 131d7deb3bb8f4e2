"""The two image pools the weigher compares: real data and generated samples (or the noise baseline).

``--real`` is resolved by :func:`rgm_ray.store.real.resolve_real`: a dataset name means its *train*
split, sample ids = row indices (as ``rgm data export`` writes them); anything else must be a
sample-set directory. Images are fetched by id and only for the ids the cross-fitting plan uses, so a
60K-image real pool costs nothing beyond them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from rgm_ray.data import ImageDataset
from rgm_ray.seeding import numpy_rng
from rgm_ray.store import IMAGE, LABEL, SAMPLE_ID, SampleSet, SampleSetWriter, decode_images, make_table, provenance
from rgm_ray.store.real import resolve_real

REAL_SPLIT = "train"
NOISE_SOURCE = "baseline:uniform-noise"
NOISE_SHARD_SIZE = 5000
_NOISE_STREAM = 7


@dataclass(frozen=True)
class ImagePool:
    """Images addressed by sample id; ``fetch(ids)`` returns uint8 ``[len(ids), C, H, W]`` in that order."""

    name: str  # how the user named it, for messages ("--real fashion-mnist")
    identity: str  # content identity, part of the feature-cache key
    shape: tuple[int, int, int]
    ids: np.ndarray  # sorted unique int64 ids available
    fetch: Callable[[np.ndarray], np.ndarray]
    dataset: tuple[str, str] | None = None  # (name, split) when the rows are a dataset split by row index

    def __len__(self) -> int:
        return int(self.ids.size)

    def without(self, ids: np.ndarray, why: str) -> "ImagePool":
        """The pool minus ``ids`` (e.g. the rows the domain backbone was trained on)."""
        kept = self.ids[~np.isin(self.ids, ids)]
        if kept.size == 0:
            raise ValueError(f"{self.name}: no images left after removing {why}")
        return replace(self, ids=kept)


def dataset_pool(data: ImageDataset) -> ImagePool:
    """A dataset split in memory, sample ids = row indices."""
    name, split = data.name, data.split
    return ImagePool(f"--real {name}", f"dataset:{name}/{split}:{data.source}:{len(data)}", data.shape,
                     np.arange(len(data), dtype=np.int64), lambda ids: data.images[ids], (name, split))


def _set_identity(samples: SampleSet) -> str:
    digest = hashlib.sha256("".join(s.sha256 for s in samples.manifest.shards).encode())
    return f"set:{digest.hexdigest()}"


def _parse_dataset_source(source: str) -> tuple[str, str] | None:
    """``"dataset:fashion-mnist/train"`` -> ``("fashion-mnist", "train")`` (how ``export_dataset`` names sources)."""
    if source.startswith("dataset:") and source.count("/") == 1:
        name, split = source[len("dataset:"):].split("/")
        return name, split
    return None


def sample_set_pool(samples: SampleSet, name: str) -> ImagePool:
    ids = samples.read([SAMPLE_ID])[SAMPLE_ID].astype(np.int64) if len(samples) else np.empty(0, np.int64)

    def fetch(wanted: np.ndarray) -> np.ndarray:
        wanted = np.asarray(wanted, dtype=np.int64)
        order = np.argsort(wanted, kind="stable")
        found_ids, found_images = [], []
        for table in samples.iter_tables([SAMPLE_ID, IMAGE]):
            table_ids = table.column(SAMPLE_ID).to_numpy()
            rows = np.flatnonzero(np.isin(table_ids, wanted))
            if rows.size:
                found_ids.append(table_ids[rows])
                found_images.append(decode_images(table.column(IMAGE).take(rows), samples.shape))
        got_ids = np.concatenate(found_ids) if found_ids else np.empty(0, np.int64)
        if got_ids.size != wanted.size:
            raise ValueError(f"{name}: {wanted.size - got_ids.size} requested sample id(s) are not in {samples.path}")
        images = np.concatenate(found_images)[np.argsort(got_ids, kind="stable")]  # ascending id order
        out = np.empty_like(images)
        out[order] = images  # back to the requested order
        return out

    return ImagePool(name, _set_identity(samples), samples.shape, np.sort(ids), fetch,
                     _parse_dataset_source(samples.source))


def open_samples(path: str | Path) -> SampleSet:
    """``--samples``: the set whose rows (ids, images, labels) the stage weighs and copies, checked once."""
    return SampleSet(path).check((SAMPLE_ID, IMAGE, LABEL))


def open_real(spec: str, root: str | Path | None = None) -> ImagePool:
    """``--real``: a dataset name's train split, else a sample-set directory (:func:`resolve_real`), checked once."""
    real = resolve_real(spec, REAL_SPLIT, root)
    if real.dataset is not None:
        return dataset_pool(real.dataset)
    return sample_set_pool(real.samples.check((SAMPLE_ID, IMAGE)), f"--real {spec}")


def check_compatible(real: ImagePool, generated: ImagePool) -> None:
    """Both pools non-empty and of one image shape; the error names both inputs."""
    for pool in (real, generated):
        if len(pool) == 0:
            raise ValueError(f"{pool.name} is empty: there is nothing to weigh")
    if real.shape != generated.shape:
        raise ValueError(f"image shapes differ: {real.name} has {real.shape}, {generated.name} has "
                         f"{generated.shape}; the classifier needs one shape (C, H, W)")


def noise_images(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """``n`` uniform grayscale-noise images (the thesis's sanity baseline), replicated over channels."""
    if n <= 0:
        raise ValueError(f"the noise baseline needs a positive number of images, got {n}")
    gray = numpy_rng(seed, _NOISE_STREAM).integers(0, 256, size=(n, 1, *shape[1:]), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(gray, shape[0], axis=1))


def write_noise_set(out: str | Path, shape: tuple[int, int, int], n: int, seed: int) -> SampleSet:
    """Write the noise baseline as a sample set (deterministic in ``seed``, so rewriting it is harmless)."""
    images = noise_images(n, shape, seed)
    with SampleSetWriter(out, source=NOISE_SOURCE, overwrite=True, prov=provenance(seed=seed),
                         info={"baseline": "uniform grayscale noise", "n": n, "seed": seed}) as writer:
        for start in range(0, n, NOISE_SHARD_SIZE):
            stop = min(start + NOISE_SHARD_SIZE, n)
            writer.write(make_table(np.arange(start, stop), images[start:stop], None, source=NOISE_SOURCE))
    return SampleSet(out)
