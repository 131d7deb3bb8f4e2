"""The integrity check of a sample set, one definition for ``rgm data verify`` and every stage's input.

A set passes when every shard is the file the manifest recorded (SHA-256), holds the manifest's
columns with the format's types, images of exactly C*H*W bytes, no nulls, no NaN or +inf
``log_weight``, no negative ``copies``, and the recorded row count and id range; when its shards
share one schema, no ``sample_id`` repeats and no unlisted ``*.parquet`` sits beside them. Stages
call it through :meth:`rgm_ray.store.SampleSet.check` once per run, before their first read, so a
set that ``verify`` rejects is never read, and later reads need not hash again.

The per-shard part (:func:`check_shard`) is a plain function of one shard's path, so it can run
wherever the shard is read (the resample stage runs it as one Ray task per shard, in parallel); it
reads the file once, hashing those bytes and parsing the same buffer. The cross-shard part runs on
the caller: duplicate ids are looked for only among shards whose id ranges overlap (a generated set's
ranges are disjoint, so none is read again), which keeps the caller's memory independent of the set's size
unless the shards' ranges interleave (a resampled set's do: then their ``sample_id`` columns are read).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rgm_ray.store.layout import MANIFEST_NAME, side_file
from rgm_ray.store.manifest import Manifest, ManifestError, ShardInfo, read_manifest, shard_path
from rgm_ray.store.schema import (BASE_FIELDS, COPIES, IMAGE, LABEL, LOG_WEIGHT, SAMPLE_ID, Shape, image_offsets,
                                  table_shape)

# rgm writes log_weight as float32; a set written by another tool may hold float64, which every reader takes.
ACCEPTED_TYPES: dict[str, tuple[pa.DataType, ...]] = {
    **{f.name: (f.type,) for f in BASE_FIELDS}, LOG_WEIGHT: (pa.float32(), pa.float64()), COPIES: (pa.int64(),)}

# ``map_shards(check_shard, args_for, shards=[...])`` -> ``{shard: check_shard(path, *args_for(shard))}``;
# ``ShardRunner.map`` is one (parallel, on Ray), :func:`_in_process` the default.
ShardMapper = Callable[..., dict[int, Any]]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class ShardFacts:
    """What checking one shard found: its problems, and what the cross-shard checks compare."""

    problems: tuple[str, ...]
    types: dict[str, str] = field(default_factory=dict)  # column -> Arrow type as stored
    id_range: tuple[int, int] | None = None  # smallest and largest sample_id; None if unreadable


def check_shard(path: str | Path, shard: ShardInfo, shape: Shape, columns: Sequence[str]) -> ShardFacts:
    """Everything wrong with the shard at ``path`` against its manifest entry, the set's shape and columns."""
    try:
        data = Path(path).read_bytes()  # one read for the hash and the Parquet checks
    except OSError as exc:
        return ShardFacts((f"not readable ({exc.strerror or exc})",))
    problems = []
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        problems.append(f"SHA-256 differs from {MANIFEST_NAME} (file changed or corrupted)")
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        schema = parquet.schema_arrow
        table = parquet.read(columns=[c for c in ACCEPTED_TYPES if c in schema.names], use_threads=False)
    except Exception as exc:  # pyarrow raises several types for damaged files
        return ShardFacts((*problems, f"not readable as Parquet ({' '.join(str(exc).split())})"))
    if parquet.metadata.num_rows != shard.rows:
        problems.append(f"{parquet.metadata.num_rows} rows, {MANIFEST_NAME} says {shard.rows}")
    problems += _schema_problems(schema, shape, columns)
    id_range = None
    if SAMPLE_ID in table.column_names and schema.field(SAMPLE_ID).type in ACCEPTED_TYPES[SAMPLE_ID]:
        id_problems, id_range = _id_problems(table.column(SAMPLE_ID), shard)
        problems += id_problems
    if IMAGE in table.column_names and schema.field(IMAGE).type in ACCEPTED_TYPES[IMAGE]:
        try:
            image_offsets(table.column(IMAGE).combine_chunks(), shape)
        except ValueError as exc:
            problems.append(str(exc))
    problems += _value_problems(table, schema)
    return ShardFacts(tuple(problems), {f.name: str(f.type) for f in schema}, id_range)


def _value_problems(table: pa.Table, schema: pa.Schema) -> list[str]:
    """Values the types allow but the format does not: nulls in ``label``, ``log_weight`` or ``copies``
    (``sample_id`` and ``image`` have their own checks), a NaN or +inf ``log_weight`` (-inf is a zero
    weight), a negative ``copies``."""
    present = [name for name in (LABEL, LOG_WEIGHT, COPIES)
               if name in table.column_names and schema.field(name).type in ACCEPTED_TYPES[name]]
    problems = [f"{table.column(name).null_count} null {name!r} values" for name in present
                if table.column(name).null_count]
    if problems:
        return problems
    if LOG_WEIGHT in present:
        lw = table.column(LOG_WEIGHT).to_numpy()
        for label, bad in (("NaN", np.isnan(lw)), ("+inf", lw == np.inf)):
            if bad.any():
                problems.append(f"{LOG_WEIGHT} contains {int(bad.sum())} {label} value(s), first at row "
                                f"{int(np.flatnonzero(bad)[0])}")
    if COPIES in present and (table.column(COPIES).to_numpy() < 0).any():
        problems.append(f"column {COPIES!r} has negative values")
    return problems


def _schema_problems(schema: pa.Schema, shape: Shape, columns: Sequence[str]) -> list[str]:
    problems = [f"missing column {name!r}" for name in dict.fromkeys([*columns, *(f.name for f in BASE_FIELDS)])
                if name not in schema.names]
    problems += [f"column {name!r} is not among {MANIFEST_NAME}'s columns"
                 for name in schema.names if name not in columns]
    for name, accepted in ACCEPTED_TYPES.items():
        if name in schema.names and schema.field(name).type not in accepted:
            problems.append(f"column {name!r} has type {schema.field(name).type}, expected "
                            f"{' or '.join(map(str, accepted))}")
    try:
        if table_shape(schema) != shape:
            problems.append(f"rgm.shape {table_shape(schema)} != manifest shape {shape}")
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def _id_problems(column: pa.ChunkedArray, shard: ShardInfo) -> tuple[list[str], tuple[int, int] | None]:
    if column.null_count:
        return [f"{column.null_count} null sample_id values"], None
    ids = column.to_numpy()
    if ids.size == 0:
        return [], None
    problems = []
    lo, hi = int(ids.min()), int(ids.max())
    if (lo, hi) != (shard.min_id, shard.max_id):
        problems.append(f"sample_id range {lo}..{hi}, {MANIFEST_NAME} says {shard.min_id}..{shard.max_id}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        problems.append(f"duplicate sample_id {int(uniq[counts > 1][0])} within the shard")
    return problems, (lo, hi)


def set_problems(directory: str | Path, manifest: Manifest, *, map_shards: ShardMapper | None = None) -> list[Problem]:
    """Every problem of the set at ``directory`` (whose manifest is ``manifest``); empty when it is intact."""
    directory = Path(directory)
    listed = {s.file for s in manifest.shards}
    problems = [Problem(extra, f"Parquet file not listed in {MANIFEST_NAME} (stray or extra shard)")
                for extra in sorted(p.name for p in directory.glob("*.parquet") if p.name not in listed)]
    paths: dict[int, Path] = {}
    for index, shard in enumerate(manifest.shards):
        try:
            path = shard_path(directory, shard.file)
        except ManifestError as exc:
            problems.append(Problem(shard.file, str(exc)))
            continue
        if path.is_file():
            paths[index] = path
        else:
            problems.append(Problem(shard.file, f"listed in {MANIFEST_NAME} but missing"))
    mapper = map_shards or _in_process(paths)
    facts = mapper(check_shard, lambda s: (manifest.shards[s], manifest.shape, manifest.columns), shards=sorted(paths))
    for index in sorted(facts):
        problems += [Problem(manifest.shards[index].file, message) for message in facts[index].problems]
    files = {index: manifest.shards[index].file for index in facts}
    problems += _mixed_types(facts, files)
    problems += _duplicates_across_shards(facts, files, paths)
    return problems


def _in_process(paths: dict[int, Path]) -> ShardMapper:
    def mapper(fn: Callable, args_for: Callable[[int], tuple], *, shards: list[int]) -> dict[int, Any]:
        return {s: fn(paths[s], *args_for(s)) for s in shards}
    return mapper


def _mixed_types(facts: dict[int, ShardFacts], files: dict[int, str]) -> list[Problem]:
    """A column stored with another type than in the first shard holding it (the shards must share one schema)."""
    first: dict[str, tuple[str, int]] = {}
    problems = []
    for index in sorted(facts):
        for name, dtype in facts[index].types.items():
            seen, where = first.setdefault(name, (dtype, index))
            if dtype != seen:
                problems.append(Problem(files[index],
                                        f"column {name!r} has type {dtype}, but {seen} in {files[where]}"))
    return problems


def _duplicates_across_shards(facts: dict[int, ShardFacts], files: dict[int, str],
                              paths: dict[int, Path]) -> list[Problem]:
    """One problem per shard repeating a ``sample_id`` of an earlier shard; only shards whose id
    ranges overlap are read (their ``sample_id`` column alone)."""
    ranges = sorted((f.id_range, index) for index, f in facts.items() if f.id_range is not None)
    groups: list[list[int]] = []
    reach = None
    for (lo, hi), index in ranges:
        if reach is not None and lo <= reach:
            groups[-1].append(index)
            reach = max(reach, hi)
        else:
            groups.append([index])
            reach = hi
    problems = []
    for group in (g for g in groups if len(g) > 1):
        ids = [pq.read_table(paths[s], columns=[SAMPLE_ID]).column(SAMPLE_ID).to_numpy() for s in group]
        owner = np.repeat(group, [a.size for a in ids])
        order = np.argsort(np.concatenate(ids), kind="stable")
        sorted_ids, sorted_owner = np.concatenate(ids)[order], owner[order]
        repeats = np.flatnonzero((sorted_ids[1:] == sorted_ids[:-1]) & (sorted_owner[1:] != sorted_owner[:-1])) + 1
        reported: set[int] = set()
        for at in repeats:
            shard = int(sorted_owner[at])
            if shard not in reported:
                reported.add(shard)
                problems.append(Problem(files[shard], f"duplicate sample_id {int(sorted_ids[at])} "
                                                      f"(also in {files[int(sorted_owner[at - 1])]})"))
    return sorted(problems, key=lambda p: p.file)


def verify_sample_set(directory: str | Path) -> list[Problem]:
    """Every problem found in ``directory``; an empty list means the set is intact."""
    directory = Path(directory)
    if not directory.is_dir():
        return [Problem(str(directory), "no such directory")]
    try:
        manifest = read_manifest(directory)
    except ManifestError as exc:
        return [Problem(side_file(directory, MANIFEST_NAME).name, str(exc))]
    return set_problems(directory, manifest)
