"""The Parquet schema of a sample set: the contract every stage reads and writes.

One row per image. ``image`` holds the raw uint8 bytes of one C x H x W image in CHW order, so
real data and generated samples flow through the same code. Later stages add columns
(``log_weight``, ``copies``); the image shape and provenance travel in the schema metadata.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

SAMPLE_ID = "sample_id"
IMAGE = "image"
LABEL = "label"
LOG_WEIGHT = "log_weight"
COPIES = "copies"
UNLABELED = -1  # label of generated images

META_SHAPE = b"rgm.shape"
META_SOURCE = b"rgm.source"
META_PLAN = b"rgm.plan"  # generated shards: digest of the generation plan that drew them

BASE_FIELDS = (pa.field(SAMPLE_ID, pa.int64(), nullable=False),
               pa.field(IMAGE, pa.binary(), nullable=False),
               pa.field(LABEL, pa.int16(), nullable=False))
OPTIONAL_FIELDS = {LOG_WEIGHT: pa.float32(), COPIES: pa.int64()}

Shape = tuple[int, int, int]


def format_shape(shape: Shape) -> str:
    """``(1, 28, 28)`` -> ``"1,28,28"`` (the metadata form)."""
    return ",".join(str(int(s)) for s in shape)


def parse_shape(text: str | bytes) -> Shape:
    """``"1,28,28"`` -> ``(1, 28, 28)``; raises ValueError on anything else."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"bad image shape {text!r}; expected 'C,H,W' with positive integers")
    return int(parts[0]), int(parts[1]), int(parts[2])


def sample_schema(shape: Shape, source: str, extra: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """Schema with the base columns, any ``extra`` columns, and shape/source metadata."""
    fields = list(BASE_FIELDS) + [pa.field(name, dtype, nullable=False)
                                  for name, dtype in (extra or {}).items()]
    return pa.schema(fields, metadata={META_SHAPE: format_shape(shape).encode(),
                                       META_SOURCE: source.encode()})


def make_table(sample_ids: np.ndarray, images: np.ndarray, labels: np.ndarray | None, *,
               source: str, extra: Mapping[str, np.ndarray] | None = None) -> pa.Table:
    """Build a sample-set table from ids, uint8 images [n, C, H, W], labels (None = generated)."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [n,C,H,W], got {images.dtype} {images.shape}")
    n = images.shape[0]
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    labels = np.full(n, UNLABELED, np.int16) if labels is None else np.asarray(labels, np.int16)
    if sample_ids.shape != (n,) or labels.shape != (n,):
        raise ValueError(f"{n} images but {sample_ids.shape[0]} ids and {labels.shape[0]} labels")
    size = int(np.prod(images.shape[1:]))
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * size).tobytes())
    image_col = pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(images.tobytes())])
    columns: dict[str, pa.Array] = {SAMPLE_ID: pa.array(sample_ids), IMAGE: image_col,
                                    LABEL: pa.array(labels)}
    extra_types = {}
    for name, values in (extra or {}).items():
        dtype = OPTIONAL_FIELDS.get(name)
        arr = pa.array(np.asarray(values)) if dtype is None else pa.array(np.asarray(values), dtype)
        if len(arr) != n:
            raise ValueError(f"column {name!r} has {len(arr)} values for {n} images")
        columns[name], extra_types[name] = arr, arr.type
    schema = sample_schema(images.shape[1:], source, extra_types)
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


def image_offsets(column: pa.Array, shape: Shape) -> np.ndarray:
    """The ``[n + 1]`` byte offsets of a binary image column; ValueError unless every image has C*H*W bytes."""
    size = int(np.prod(shape))
    n = len(column)
    if n == 0:
        return np.zeros(1, np.int32)
    if column.null_count:
        raise ValueError(f"{column.null_count} null images")
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=n + 1, offset=column.offset * 4)
    lengths = np.diff(offsets)
    if not np.all(lengths == size):
        bad = int(np.flatnonzero(lengths != size)[0])
        raise ValueError(f"image {bad} has {lengths[bad]} bytes, expected {size} for shape {shape}")
    return offsets


def decode_images(column: pa.ChunkedArray | pa.Array, shape: Shape) -> np.ndarray:
    """Binary image column -> uint8 [n, C, H, W] without a Python loop; checks every length."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.empty((0, *shape), np.uint8)
    offsets = image_offsets(column, shape)
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)
    return data[offsets[0]: offsets[0] + n * int(np.prod(shape))].reshape(n, *shape).copy()


def table_shape(schema: pa.Schema) -> Shape:
    """Image shape recorded in a table's schema metadata."""
    meta = schema.metadata or {}
    if META_SHAPE not in meta:
        raise ValueError("schema has no 'rgm.shape' metadata; not an rgm_ray sample set")
    try:
        return parse_shape(meta[META_SHAPE])
    except ValueError as exc:
        raise ValueError(f"schema metadata 'rgm.shape': {exc}") from exc
