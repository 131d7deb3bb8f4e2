"""Writing one drawn shard and checking a shard on disk; plain functions, no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rgm_ray.generate.plan import GenerationPlan
from rgm_ray.store import SAMPLE_ID, ShardInfo, decode_images, make_table, shard_name
from rgm_ray.store.atomic import atomic_path, sha256_file
from rgm_ray.store.schema import META_PLAN, META_SOURCE, table_shape
from rgm_ray.store.writer import ROW_GROUP_SIZE


def shard_table(plan: GenerationPlan, index: int, images: np.ndarray) -> pa.Table:
    """Shard ``index`` of ``plan``, its schema metadata naming the plan (``rgm.plan``: its digest)."""
    table = make_table(plan.shard_ids(index), images, None, source=plan.source)
    return table.replace_schema_metadata({**table.schema.metadata, META_PLAN: plan.digest().encode()})


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
    """The shard on disk if it is complete and ``plan`` drew it (its ``rgm.plan`` is the plan's digest);
    None if missing, damaged or drawn by another plan (e.g. another seed), so that it is drawn again."""
    path = Path(directory) / shard_name(index)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        ids = table.column(SAMPLE_ID).to_numpy()
        ok = (table.schema.metadata.get(META_PLAN) == plan.digest().encode()
              and table.schema.metadata.get(META_SOURCE, b"").decode() == plan.source
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
