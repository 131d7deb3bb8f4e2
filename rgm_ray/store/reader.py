"""Reading sample sets as numpy batches or torch tensors (Ray Data reads the same shards directly)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rgm_ray.store.layout import MANIFEST_NAME
from rgm_ray.store.manifest import Manifest, read_manifest, shard_path
from rgm_ray.store.schema import IMAGE, decode_images
from rgm_ray.store.verify import ShardMapper, set_problems

if TYPE_CHECKING:
    import torch

Batch = dict[str, np.ndarray]


class SampleSet:
    """A finished sample set on disk. Opening checks the manifest and that every shard exists;
    :meth:`check` (what ``rgm data verify`` runs) checks the shards themselves, hashes included."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such sample-set directory")
        self.manifest: Manifest = read_manifest(self.path)
        self._shard_paths = [shard_path(self.path, s.file) for s in self.manifest.shards]  # confined to the set
        missing = [p.name for p in self._shard_paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path}: shard(s) listed in {MANIFEST_NAME} are missing: "
                                    f"{', '.join(missing)}; run 'rgm data verify {self.path}'")

    def __len__(self) -> int:
        return self.manifest.num_rows

    def __repr__(self) -> str:
        return f"SampleSet({str(self.path)!r}, rows={len(self)}, shape={self.shape})"

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.manifest.shape

    @property
    def source(self) -> str:
        return self.manifest.source

    @property
    def columns(self) -> tuple[str, ...]:
        return self.manifest.columns

    @property
    def shard_paths(self) -> list[Path]:
        return list(self._shard_paths)

    def require_columns(self, *names: str) -> None:
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise ValueError(f"{self.path}: sample set has no column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(self.columns)})")

    def check(self, columns: Sequence[str] = (), *, map_shards: ShardMapper | None = None) -> "SampleSet":
        """This set, once it has the ``columns`` a stage needs and passes ``rgm data verify``'s check.

        A stage calls it once, before its first read (hashing every shard costs a full read of the set,
        so reads do not repeat it). ``map_shards`` runs the per-shard part elsewhere, e.g. as parallel
        Ray tasks (``ShardRunner.map``); by default it runs here. The error is one line naming the file.
        """
        self.require_columns(*columns)
        problems = set_problems(self.path, self.manifest, map_shards=map_shards)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise ValueError(f"{self.path / problems[0].file}: {problems[0].message}{more}; "
                             f"'rgm data verify {self.path}' lists every problem")
        return self

    @contextlib.contextmanager
    def _reading(self, path: Path) -> Iterator[None]:
        """Turn pyarrow's errors on a damaged shard (a set read without :meth:`check`) into one line naming it."""
        try:
            yield
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path}: not readable as Parquet ({' '.join(str(exc).split())}); "
                             f"'rgm data verify {self.path}' lists every problem") from exc

    def _to_batch(self, table: pa.Table) -> Batch:
        out: Batch = {}
        for name in table.column_names:
            col = table.column(name)
            out[name] = decode_images(col, self.shape) if name == IMAGE else col.to_numpy()
        return out

    def iter_tables(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """One Arrow table per shard, in manifest order."""
        if columns is not None:
            self.require_columns(*columns)
        for path in self.shard_paths:
            with self._reading(path):
                table = pq.read_table(path, columns=list(columns) if columns else None)
            yield table

    def iter_batches(self, batch_size: int = 1024, columns: Sequence[str] | None = None) -> Iterator[Batch]:
        """Numpy batches of at most ``batch_size`` rows; ``image`` decoded to uint8 [n, C, H, W]."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if columns is not None:
            self.require_columns(*columns)
        for path in self.shard_paths:
            with self._reading(path):
                batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size,
                                                            columns=list(columns) if columns else None)
            while True:
                with self._reading(path):
                    record_batch = next(batches, None)
                if record_batch is None:
                    break
                yield self._to_batch(pa.Table.from_batches([record_batch]))

    def read(self, columns: Sequence[str] | None = None) -> Batch:
        """The whole set (or some columns of it) in memory."""
        tables = list(self.iter_tables(columns))
        return self._to_batch(pa.concat_tables(tables))

    def iter_torch(self, batch_size: int = 256) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        """(uint8 images [n, C, H, W], int64 labels [n]) torch batches."""
        import torch

        for batch in self.iter_batches(batch_size, columns=("image", "label")):
            yield torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"].astype(np.int64))
