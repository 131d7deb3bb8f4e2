"""The resample output set: the chosen rows with their images, read back and written as a new set.

Only the shards holding chosen rows are read again, and only their row groups with them. The output
holds the *original* ``log_weight`` (the transforms are a sampling choice recorded in the summary, not
a property of the image) and, with replacement, a ``copies`` column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rgm_ray.resample.selection import Selection
from rgm_ray.resample.shard_io import shard_rows
from rgm_ray.resample.shard_pool import ShardRunner, in_shard_order
from rgm_ray.store import (COPIES, IMAGE, LABEL, LOG_WEIGHT, SAMPLE_ID, SampleSet, SampleSetWriter, decode_images,
                           make_table)


def read_selected_rows(runner: ShardRunner, selection: Selection) -> pa.Table:
    """The selected rows with images, in output order; reads only shards (and row groups) holding them.

    The rows meet on the driver to be put in order, so it holds the output set once (k distinct
    images: 50K CIFAR-10 images = 150 MB), unlike the selection, whose memory does not grow with N.
    """
    order = np.argsort(selection.shards, kind="stable")
    shards, starts = np.unique(selection.shards[order], return_index=True)
    by_shard = {int(s): np.sort(ids) for s, ids in zip(shards, np.split(selection.ids[order], starts[1:]))}
    tables = runner.map(shard_rows, lambda s: (by_shard[s],), shards=sorted(by_shard), desc="resample: rows")
    table = pa.concat_tables(in_shard_order(tables))
    row_ids = table.column(SAMPLE_ID).to_numpy()
    order = np.argsort(row_ids)
    return table.take(pa.array(order[np.searchsorted(row_ids, selection.ids, sorter=order)]))


def write_selection(samples: SampleSet, out: str | Path, rows: pa.Table, selection: Selection, *,
                    shard_size: int, overwrite: bool, prov: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write the chosen rows (original ``log_weight``; ``copies`` with replacement) as a new sample set."""
    with SampleSetWriter(out, source=samples.source, overwrite=overwrite, prov=prov, info=info) as writer:
        for start in range(0, rows.num_rows, shard_size):
            chunk = rows.slice(start, shard_size)
            extra = {LOG_WEIGHT: chunk.column(LOG_WEIGHT).to_numpy()}
            if selection.copies is not None:
                extra[COPIES] = selection.copies[start:start + chunk.num_rows]
            writer.write(make_table(chunk.column(SAMPLE_ID).to_numpy(),
                                    decode_images(chunk.column(IMAGE), samples.shape),
                                    chunk.column(LABEL).to_numpy(), source=samples.source, extra=extra))
    return Path(out)
