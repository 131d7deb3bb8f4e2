"""Full integrity check of a sample set: manifest vs files, hashes, schema, shapes, unique ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rgm_ray.store.atomic import sha256_file
from rgm_ray.store.manifest import MANIFEST_NAME, ManifestError, read_manifest, shard_path
from rgm_ray.store.schema import BASE_FIELDS, IMAGE, SAMPLE_ID, decode_images, table_shape


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def verify_sample_set(directory: str | Path) -> list[Problem]:
    """Every problem found in ``directory``; an empty list means the set is intact."""
    directory = Path(directory)
    if not directory.is_dir():
        return [Problem(str(directory), "no such directory")]
    try:
        manifest = read_manifest(directory)
    except ManifestError as exc:
        return [Problem(MANIFEST_NAME, str(exc))]
    problems: list[Problem] = []
    listed = {s.file for s in manifest.shards}
    for extra in sorted(p.name for p in directory.glob("*.parquet") if p.name not in listed):
        problems.append(Problem(extra, "Parquet file not listed in manifest.json (stray or extra shard)"))
    seen: dict[int, str] = {}
    for shard in manifest.shards:
        try:
            path = shard_path(directory, shard.file)
        except ManifestError as exc:
            problems.append(Problem(shard.file, str(exc)))
            continue
        if not path.is_file():
            problems.append(Problem(shard.file, "listed in manifest.json but missing"))
            continue
        if sha256_file(path) != shard.sha256:
            problems.append(Problem(shard.file, "SHA-256 differs from manifest.json (file changed or corrupted)"))
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            problems.append(Problem(shard.file, f"not readable as Parquet ({exc})"))
            continue
        problems.extend(Problem(shard.file, msg) for msg in _check_table(table, shard, manifest.shape))
        ids = table.column(SAMPLE_ID).to_numpy() if SAMPLE_ID in table.column_names else np.empty(0, np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            problems.append(Problem(shard.file, f"duplicate sample_id {int(uniq[counts > 1][0])} within the shard"))
        for sid in uniq:
            other = seen.setdefault(int(sid), shard.file)
            if other != shard.file:
                problems.append(Problem(shard.file, f"duplicate sample_id {int(sid)} (also in {other})"))
                break
    return problems


def _check_table(table, shard, shape) -> list[str]:
    msgs = []
    if table.num_rows != shard.rows:
        msgs.append(f"{table.num_rows} rows, manifest.json says {shard.rows}")
    for field in BASE_FIELDS:
        if field.name not in table.column_names:
            msgs.append(f"missing column {field.name!r}")
        elif table.schema.field(field.name).type != field.type:
            msgs.append(f"column {field.name!r} has type {table.schema.field(field.name).type}, expected {field.type}")
    try:
        if table_shape(table.schema) != shape:
            msgs.append(f"rgm.shape {table_shape(table.schema)} != manifest shape {shape}")
    except ValueError as exc:
        msgs.append(str(exc))
    if IMAGE in table.column_names and not msgs:
        try:
            decode_images(table.column(IMAGE), shape)
        except ValueError as exc:
            msgs.append(str(exc))
    return msgs
