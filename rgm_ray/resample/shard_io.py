"""Reading one Parquet shard of a sample set: only the columns (and row groups) a shard task needs.

Every per-shard task of the resample stage reads through here, so log-weights are validated the same
way everywhere (NaN and +inf refused, the error naming the shard's full path, hence the set) and a
task that needs only ``log_weight`` never touches the images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rgm_ray.store.schema import IMAGE, LABEL, LOG_WEIGHT, SAMPLE_ID
from rgm_ray.weigh.transforms import validate_log_weights

ROW_COLUMNS = (SAMPLE_ID, IMAGE, LABEL, LOG_WEIGHT)


def _validated(path: str | Path, stored: np.ndarray) -> np.ndarray:
    return validate_log_weights(stored, name=f"{path}: {LOG_WEIGHT}", require_support=False)


def read_log_weights(path: str | Path, *, with_ids: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """``(sample_ids or None, log_weights as float64)`` of one shard; NaN and +inf are refused."""
    columns = [SAMPLE_ID, LOG_WEIGHT] if with_ids else [LOG_WEIGHT]
    table = pq.ParquetFile(path).read(columns=columns, use_threads=False)
    lw = _validated(path, table.column(LOG_WEIGHT).to_numpy())
    ids = table.column(SAMPLE_ID).to_numpy() if with_ids else None
    return ids, lw


def read_stored_log_weights(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(log_weight as stored (float32 or float64), the same validated as float64)`` of one shard."""
    stored = pq.ParquetFile(path).read(columns=[LOG_WEIGHT], use_threads=False).column(LOG_WEIGHT).to_numpy()
    return stored, _validated(path, stored)


def stored_log_weight_dtype(path: str | Path) -> np.dtype:
    """The dtype ``log_weight`` is stored with, from the shard's schema alone."""
    return np.dtype(pq.read_schema(path).field(LOG_WEIGHT).type.to_pandas_dtype())


def shard_rows(path: str | Path, sample_ids: np.ndarray) -> pa.Table:
    """The rows of ``sample_ids`` (all in this shard) with their images, reading only the row groups
    that hold them; rows come back in file order."""
    parquet = pq.ParquetFile(path)
    shard_ids = parquet.read(columns=[SAMPLE_ID], use_threads=False).column(SAMPLE_ID).to_numpy()
    positions = np.flatnonzero(np.isin(shard_ids, sample_ids))
    if positions.size != np.unique(sample_ids).size:
        raise ValueError(f"{path}: {np.unique(sample_ids).size - positions.size} selected sample id(s) "
                         "are not in this shard; was the set changed during resampling?")
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])  # [groups + 1] first row of each group
    group_of = np.searchsorted(starts, positions, side="right") - 1
    groups = np.unique(group_of)
    table = parquet.read_row_groups(groups.tolist(), columns=list(ROW_COLUMNS), use_threads=False)
    # Position within the concatenation of the groups read = offset of its group there + row in group.
    offsets = np.cumsum([0] + [sizes[g] for g in groups[:-1]])
    local = offsets[np.searchsorted(groups, group_of)] + positions - starts[group_of]
    return table.take(pa.array(local))
