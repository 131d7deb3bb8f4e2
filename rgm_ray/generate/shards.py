"""Drawing one shard and checking a shard on disk; plain functions, no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch import nn

from rgm_ray.generate.plan import GenerationPlan
from rgm_ray.store import SAMPLE_ID, ShardInfo, decode_images, make_table, shard_name
from rgm_ray.store.atomic import atomic_path, sha256_file
from rgm_ray.store.schema import META_SOURCE, table_shape
from rgm_ray.store.writer import ROW_GROUP_SIZE

SAMPLERS_BY_KIND = {"pixelcnnpp": ("cached", "naive"), "vae": ("mean", "sample")}


def _check_kind(kind: str) -> None:
    if kind not in SAMPLERS_BY_KIND:
        raise ValueError(f"cannot generate from a {kind!r} checkpoint; need one of {sorted(SAMPLERS_BY_KIND)}")


def default_sampler(kind: str) -> str:
    """The fastest exact sampler of a generator kind."""
    _check_kind(kind)
    return SAMPLERS_BY_KIND[kind][0]


def check_sampler(kind: str, sampler: str) -> None:
    _check_kind(kind)
    if sampler not in SAMPLERS_BY_KIND[kind]:
        raise ValueError(f"sampler {sampler!r} does not fit a {kind} checkpoint; choose from "
                         f"{', '.join(SAMPLERS_BY_KIND[kind])}")


def draw(model: nn.Module, n: int, *, seed: int, batch_size: int, sampler: str) -> np.ndarray:
    """``n`` uint8 images [n, C, H, W] from either generator; image j depends on (seed, j) only."""
    check_sampler(model.kind, sampler)
    if model.kind == "vae":
        images = model.sample(n, seed=seed, batch_size=batch_size, mode=sampler)
    else:
        images = model.sample(n, seed=seed, batch_size=batch_size, sampler=sampler)
    return images.cpu().numpy()


def shard_table(plan: GenerationPlan, index: int, images: np.ndarray) -> pa.Table:
    return make_table(plan.shard_ids(index), images, None, source=plan.source)


def write_generated_shard(directory: str | Path, index: int, table: pa.Table) -> ShardInfo:
    """Atomic, idempotent shard write with Parquet page checksums (so later damage is detected)."""
    path = Path(directory) / shard_name(index)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd",
                       write_page_checksum=True)
        digest = sha256_file(tmp)
    ids = table.column(SAMPLE_ID).to_numpy()
    return ShardInfo(file=path.name, rows=table.num_rows, sha256=digest, min_id=int(ids[0]), max_id=int(ids[-1]))


def existing_shard(directory: str | Path, plan: GenerationPlan, index: int,
                   shape: tuple[int, int, int]) -> ShardInfo | None:
    """The shard on disk if it is complete and belongs to ``plan``; None if missing or damaged."""
    path = Path(directory) / shard_name(index)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        ids = table.column(SAMPLE_ID).to_numpy()
        ok = (table.schema.metadata.get(META_SOURCE, b"").decode() == plan.source
              and table_shape(table.schema) == shape
              and np.array_equal(ids, plan.shard_ids(index)))
        if ok:
            decode_images(table.column("image"), shape)
    except Exception:  # any read/decode failure means the shard must be regenerated
        return None
    if not ok:
        return None
    return ShardInfo(file=path.name, rows=table.num_rows, sha256=sha256_file(path),
                     min_id=int(ids[0]), max_id=int(ids[-1]))
