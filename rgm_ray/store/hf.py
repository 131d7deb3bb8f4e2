"""A sample set as a Hugging Face ``datasets.Dataset`` whose ``image`` column is a ``datasets.Image`` feature.

``datasets`` can read the shards as they are (``Dataset.from_parquet``), but it sees ``image`` as
raw bytes: the shape that gives them meaning is in the schema metadata (``rgm.shape``), which it
does not interpret. :func:`to_hf_dataset` encodes every image as PNG (lossless: decoding gives the
set's exact pixels, as a PIL image of mode ``L`` or ``RGB``) and keeps the other columns with their
Arrow types. ``datasets`` is optional (``pip install datasets``); it is imported only here.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from rgm_ray.store.manifest import manifest_digest
from rgm_ray.store.reader import SampleSet
from rgm_ray.store.schema import IMAGE

if TYPE_CHECKING:
    import datasets

PNG_MODES = {1: "L", 3: "RGB"}  # channels -> the PIL mode an image is encoded in
CONVERSION = "rgm-hf-v1"  # part of the cache fingerprint: a changed conversion never reuses an old cache


def to_hf_dataset(path: str | Path, *, cache_dir: str | Path | None = None) -> "datasets.Dataset":
    """The sample set at ``path`` as a ``datasets.Dataset``: ``image`` a ``datasets.Image`` (PNG), every
    other column (``sample_id``, ``label``, ``log_weight``, ``copies``) a ``datasets.Value`` of its type.

    The rows are written once to ``datasets``' Arrow cache (``cache_dir``, default its own), under a
    fingerprint of the set's manifest, so a set that changes is converted again and an unchanged one is not.
    The set is opened as every reader opens it (manifest, shards present); ``rgm data verify`` checks its hashes.
    """
    import datasets  # optional dependency

    samples = SampleSet(path)
    channels = samples.shape[0]
    if channels not in PNG_MODES:
        raise ValueError(f"{samples.path}: {channels}-channel images; a datasets.Image holds "
                         f"{' or '.join(map(str, PNG_MODES))} channels here")
    features = datasets.Features.from_arrow_schema(pq.read_schema(samples.shard_paths[0]))
    features[IMAGE] = datasets.Image()
    return datasets.Dataset.from_generator(
        _rows, features=features, cache_dir=None if cache_dir is None else str(cache_dir),
        gen_kwargs={"path": str(samples.path)}, fingerprint=f"{CONVERSION}-{manifest_digest(samples.path)}")


def _rows(path: str) -> Iterator[dict[str, Any]]:
    """The set's rows in manifest order, each image as ``{"bytes": PNG, "path": None}``."""
    for batch in SampleSet(path).iter_batches():
        images = batch.pop(IMAGE)
        for i, pixels in enumerate(images):
            yield {**{name: values[i].item() for name, values in batch.items()}, IMAGE: {"bytes": _png(pixels),
                                                                                        "path": None}}


def _png(pixels: np.ndarray) -> bytes:
    """uint8 [C, H, W] (C = 1 or 3) -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(buffer, format="PNG")
    return buffer.getvalue()
