"""Writing sample sets: atomic shards, then the manifest last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rgm_ray.store.atomic import atomic_directory, atomic_path, sha256_file
from rgm_ray.store.manifest import Manifest, ShardInfo, provenance, write_manifest
from rgm_ray.store.schema import SAMPLE_ID, Shape, table_shape

ROW_GROUP_SIZE = 4096


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def write_shard(directory: str | Path, index: int, table: pa.Table) -> ShardInfo:
    """Write ``table`` as shard ``index`` atomically (idempotent: a retry rewrites the same name)."""
    if table.num_rows == 0:
        raise ValueError(f"refusing to write empty shard {index} in {directory}")
    table_shape(table.schema)  # the table must carry its image shape
    path = Path(directory) / shard_name(index)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")
        digest = sha256_file(tmp)
    ids = table.column(SAMPLE_ID).to_numpy()
    return ShardInfo(file=path.name, rows=table.num_rows, sha256=digest,
                     min_id=int(ids.min()), max_id=int(ids.max()))


def finish_sample_set(directory: str | Path, shards: list[ShardInfo], *, shape: Shape, source: str,
                      columns: list[str], prov: dict[str, Any] | None = None,
                      info: dict[str, Any] | None = None) -> Manifest:
    """Write the manifest that marks ``directory`` as a finished sample set."""
    manifest = Manifest(shape=shape, source=source, shards=tuple(sorted(shards, key=lambda s: s.file)),
                        columns=tuple(columns), provenance=prov or provenance(), info=info or {})
    write_manifest(directory, manifest)
    return manifest


class SampleSetWriter:
    """Write a whole sample set in one go, atomically: nothing appears at ``out`` until it is done.

    >>> with SampleSetWriter(out, source="dataset:fashion-mnist/test") as writer:
    ...     writer.write(table)  # one shard per call
    """

    def __init__(self, out: str | Path, *, source: str, overwrite: bool = False,
                 prov: dict[str, Any] | None = None, info: dict[str, Any] | None = None) -> None:
        self.out = Path(out)
        self.source = source
        self.prov = prov or provenance()
        self.info = info or {}
        self._dir_ctx = atomic_directory(self.out, overwrite=overwrite)
        self._tmp: Path | None = None
        self._shards: list[ShardInfo] = []
        self._schema: pa.Schema | None = None
        self._ids: list[np.ndarray] = []
        self.manifest: Manifest | None = None

    def __enter__(self) -> "SampleSetWriter":
        self._tmp = self._dir_ctx.__enter__()
        return self

    def write(self, table: pa.Table) -> ShardInfo:
        """Append ``table`` as the next shard; every shard must share one schema."""
        assert self._tmp is not None, "use SampleSetWriter as a context manager"
        if self._schema is None:
            self._schema = table.schema
        elif not table.schema.equals(self._schema, check_metadata=True):
            raise ValueError(f"shard {len(self._shards)} of {self.out} has schema {table.schema}, "
                             f"expected {self._schema}")
        info = write_shard(self._tmp, len(self._shards), table)
        self._ids.append(table.column(SAMPLE_ID).to_numpy())
        self._shards.append(info)
        return info

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        if exc_type is None:
            if self._schema is None:
                exc = ValueError(f"no rows written to {self.out}")
            else:
                ids = np.concatenate(self._ids)
                if np.unique(ids).size != ids.size:
                    exc = ValueError(f"duplicate sample_id values in {self.out}")
            if exc is not None:
                self._dir_ctx.__exit__(type(exc), exc, None)
                raise exc
            self.manifest = finish_sample_set(
                self._tmp, self._shards, shape=table_shape(self._schema), source=self.source,
                columns=self._schema.names, prov=self.prov, info=self.info)
        return self._dir_ctx.__exit__(exc_type, exc, tb)
