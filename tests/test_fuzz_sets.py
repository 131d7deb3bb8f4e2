"""Issue 19: fuzzed sample sets. One small valid weighted set, damaged in many named ways (each kind in a
few seeded variants), is handed to ``rgm data verify``, :meth:`SampleSet.check`, every stage's input check
that runs without Ray, and the plain readers. Each must refuse it with a message naming the damaged file and
what is wrong with it (the field, the column, the check), never with a traceback, and nothing may read a
file outside the set's directory (every open is recorded; escaping targets are byte-identical copies of the
set's own files, so a read through them would otherwise pass unnoticed).
"""

from __future__ import annotations

import builtins
import functools
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rgm_ray.cli.main import main
from rgm_ray.evaluate.inputs import load_sample_set
from rgm_ray.resample.shard_io import ROW_COLUMNS
from rgm_ray.ssl.sources import SET, SourceSpec, open_sample_set_source
from rgm_ray.store import LOG_WEIGHT, MANIFEST_NAME, SampleSet, SampleSetWriter, make_table
from rgm_ray.store.atomic import sha256_file
from rgm_ray.weigh.inputs import open_samples

SHAPE = (1, 4, 4)
ROWS, SHARDS = 4, 3
MANIFEST = MANIFEST_NAME


def _shard(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _table(index: int) -> pa.Table:
    ids = np.arange(index * ROWS, (index + 1) * ROWS)
    images = np.random.default_rng(index).integers(0, 256, (ROWS, *SHAPE), dtype=np.uint8)
    return make_table(ids, images, None, source="test:fuzz", extra={LOG_WEIGHT: np.linspace(-1, 1, ROWS)})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "pristine"
    with SampleSetWriter(path, source="test:fuzz") as writer:
        for index in range(SHARDS):
            writer.write(_table(index))
    return path


@dataclass(frozen=True)
class Expect:
    """What the refusal must name: the damaged ``file`` and ``words`` saying what is wrong with it."""

    file: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """The mutated copy ``set`` and ``outside``, a sibling directory with byte-identical copies of the
    pristine files: what an escaping path or symlink would reach."""

    set: Path
    outside: Path
    rng: np.random.Generator
    variant: int


Mutation = Callable[[Target], Expect]
MUTATIONS: dict[str, tuple[Mutation, int]] = {}


def mutation(variants: int = 1) -> Callable[[Mutation], Mutation]:
    def register(fn: Mutation) -> Mutation:
        MUTATIONS[fn.__name__.removeprefix("_")] = (fn, variants)
        return fn
    return register


# --- manifest mutations ------------------------------------------------------------------------------

def _edit(t: Target, change: Callable[[dict[str, Any]], Any]) -> None:
    path = t.set / MANIFEST
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


TOP_FIELDS = ("format", "shape", "source", "num_rows", "columns", "shards")
SHARD_FIELDS = ("file", "rows", "sha256", "min_id", "max_id")
MISSING = [(f,) for f in TOP_FIELDS] + [("shards", f) for f in SHARD_FIELDS]


def _field_path(keys: tuple, shard: int) -> str:
    return keys[0] if len(keys) == 1 else f"shards[{shard}].{keys[1]}"


def _node(raw: dict, keys: tuple, shard: int) -> dict:
    return raw if len(keys) == 1 else raw["shards"][shard]


@mutation(variants=len(MISSING))
def _missing_field(t: Target) -> Expect:
    keys, shard = MISSING[t.variant], int(t.rng.integers(SHARDS))
    _edit(t, lambda raw: _node(raw, keys, shard).pop(keys[-1]))
    return Expect(MANIFEST, (_field_path(keys, shard), "missing"))


@mutation(variants=2)
def _unknown_field(t: Target) -> Expect:
    key, shard = f"x{int(t.rng.integers(1000))}", int(t.rng.integers(SHARDS))
    keys = (key,) if t.variant == 0 else ("shards", key)
    _edit(t, lambda raw: _node(raw, keys, shard).__setitem__(key, 1))
    return Expect(MANIFEST, (_field_path(keys, shard),))


INTEGERS = ["4", 4.5, True, None, [], {}, -3, 2**63, 10**40, float("inf"), float("nan")]
STRINGS = [4, None, [], {}, True, 1.5]
WRONG_VALUES: dict[tuple, list] = {
    ("format",): ["rgm_ray.sample_set/2", None, 1],
    ("shape",): [[1, 4, 4], 16, None, "1,4", "0,4,4", "a,b,c", "1,4,4,4", {}],
    ("source",): STRINGS,
    ("num_rows",): INTEGERS,
    ("columns",): ["sample_id", [1, 2], None, ["image", "image"], {}, [""]],
    ("shards",): [None, {}, "x", 3, [1], [None]],
    ("provenance",): [[], "x", 3],
    ("info",): [[], "x", 3],
    **{("shards", key): INTEGERS for key in ("rows", "min_id", "max_id")},
    ("shards", "file"): STRINGS,
    ("shards", "sha256"): [*STRINGS, "abc", "A" * 64, "g" * 64],
}
WRONG = [(keys, repeat) for keys in WRONG_VALUES for repeat in range(2)]


@mutation(variants=len(WRONG))
def _wrong_type(t: Target) -> Expect:
    keys, _ = WRONG[t.variant]
    values, shard = WRONG_VALUES[keys], int(t.rng.integers(SHARDS))
    value = values[int(t.rng.integers(len(values)))]
    _edit(t, lambda raw: _node(raw, keys, shard).__setitem__(keys[-1], value))
    return Expect(MANIFEST, (_field_path(keys, shard),))


@mutation(variants=6)
def _inconsistent_numbers(t: Target) -> Expect:
    """Well-typed numbers that lie: each is found by comparing with the files."""
    shard, delta = int(t.rng.integers(SHARDS)), int(t.rng.integers(1, 5))

    def change(raw: dict) -> None:
        entry = raw["shards"][shard]
        if t.variant == 0:
            raw["num_rows"] += delta
        elif t.variant in (1, 2):  # a shard's row count (2: huge), num_rows kept consistent with it
            entry["rows"] = entry["rows"] + delta if t.variant == 1 else 2**62
            raw["num_rows"] = sum(s["rows"] for s in raw["shards"])
        elif t.variant in (3, 4):
            entry["max_id"] = entry["max_id"] + delta if t.variant == 3 else 2**63 - 1
        else:
            entry["sha256"] = format(int(t.rng.integers(2**62)), "064x")

    _edit(t, change)
    words = {0: ("num_rows",), 1: ("rows",), 2: ("rows",), 3: ("sample_id range",), 4: ("sample_id range",),
             5: ("SHA-256",)}[t.variant]
    return Expect(MANIFEST if t.variant == 0 else _shard(shard), words)


@mutation()
def _shard_listed_twice(t: Target) -> Expect:
    def change(raw: dict) -> None:
        raw["shards"].append(dict(raw["shards"][0]))
        raw["num_rows"] += raw["shards"][0]["rows"]
    _edit(t, change)
    return Expect(MANIFEST, ("shards", "twice"))


ESCAPES = ["../outside/{name}", "{outside}/{name}", "sub/{name}", "..", ".", "", ".{name}", "a\x00b.parquet",
           "x" * 300 + ".parquet", "\ud800.parquet", "{random}/../{name}"]


@mutation(variants=len(ESCAPES))
def _escaping_file_name(t: Target) -> Expect:
    shard = int(t.rng.integers(SHARDS))
    random = "".join(chr(c) for c in t.rng.integers(ord("a"), ord("z") + 1, 8))
    name = ESCAPES[t.variant].format(name=_shard(shard), outside=t.outside, random=random)
    _edit(t, lambda raw: raw["shards"][shard].__setitem__("file", name))
    return Expect(MANIFEST, (f"shards[{shard}].file", "not a plain file name"))


@mutation(variants=4)
def _symlink_out(t: Target) -> Expect:
    """0: a shard, absolute link; 1: a shard, relative link; 2: a shard, to a directory; 3: the manifest."""
    name = MANIFEST if t.variant == 3 else _shard(int(t.rng.integers(SHARDS)))
    link = t.set / name
    link.unlink()
    target = {0: t.outside / name, 1: Path("..") / "outside" / name, 2: t.outside, 3: t.outside / name}[t.variant]
    os.symlink(target, link)
    return Expect(name, ("outside the set",))


@mutation(variants=5)
def _manifest_not_json(t: Target) -> Expect:
    path = t.set / MANIFEST
    text = path.read_bytes()
    path.write_bytes({0: b"", 1: t.rng.bytes(64), 2: text[: int(t.rng.integers(1, len(text)))],
                      3: b"[" * 100_000, 4: b"[1, 2]"}[t.variant])
    return Expect(MANIFEST, ("malformed",))


# --- shard mutations -----------------------------------------------------------------------------------

@mutation(variants=3)
def _truncated(t: Target) -> Expect:
    shard = int(t.rng.integers(SHARDS))
    path = t.set / _shard(shard)
    data = path.read_bytes()
    path.write_bytes(data[: int(t.rng.integers(0, len(data)))])
    return Expect(_shard(shard), ("SHA-256",))


@mutation(variants=6)
def _flipped_byte(t: Target) -> Expect:
    shard = int(t.rng.integers(SHARDS))
    path = t.set / _shard(shard)
    data = bytearray(path.read_bytes())
    # variants 0-2 anywhere, 3-5 in the footer (schema, metadata, row counts)
    at = int(t.rng.integers(len(data))) if t.variant < 3 else len(data) - int(t.rng.integers(1, 200))
    data[at] ^= 1 << int(t.rng.integers(8))
    path.write_bytes(bytes(data))
    return Expect(_shard(shard), ("SHA-256",))


@mutation()
def _shard_removed(t: Target) -> Expect:
    (t.set / _shard(1)).unlink()
    return Expect(_shard(1), ("missing",))


@mutation()
def _stray_shard(t: Target) -> Expect:
    shutil.copy(t.set / _shard(0), t.set / "shard-00099.parquet")
    return Expect("shard-00099.parquet", ("not listed",))


def _put_shard(t: Target, index: int, table: pa.Table, **entry: Any) -> None:
    """Write ``table`` as shard ``index`` with pyarrow directly and record its hash (and ``entry``'s fields) in
    the manifest, as a careless tool would: only the content checks can tell."""
    path = t.set / _shard(index)
    pq.write_table(table, path)
    _edit(t, lambda raw: raw["shards"][index].update(sha256=sha256_file(path), **entry))


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), pa.field(name, values.type), values)


WRONG_COLUMNS = [("sample_id", pa.array(np.arange(4, 8), pa.int32())), ("sample_id", pa.array(list("abcd"))),
                 ("image", pa.array([1, 2, 3, 4])), ("image", pa.array([bytes(16)] * 4, pa.large_binary())),
                 ("label", pa.array([1, 2, 3, 4])), ("label", pa.array(list("abcd"))),
                 ("log_weight", pa.array(list("abcd"))), ("log_weight", pa.array([1, 2, 3, 4], pa.int16()))]


@mutation(variants=len(WRONG_COLUMNS))
def _wrong_column_type(t: Target) -> Expect:
    name, values = WRONG_COLUMNS[t.variant]
    _put_shard(t, 1, _with_column(_table(1), name, values))
    return Expect(_shard(1), (f"column {name!r} has type",))


COLUMNS = ("sample_id", "image", "label", "log_weight")


@mutation(variants=len(COLUMNS))
def _missing_column(t: Target) -> Expect:
    _put_shard(t, 1, _table(1).drop_columns([COLUMNS[t.variant]]))
    return Expect(_shard(1), (f"missing column {COLUMNS[t.variant]!r}",))


@mutation()
def _extra_column(t: Target) -> Expect:
    _put_shard(t, 1, _table(1).append_column("extra", pa.array(t.rng.integers(0, 9, ROWS))))
    return Expect(_shard(1), ("'extra'", "not among"))


@mutation(variants=3)
def _bad_shape_metadata(t: Target) -> Expect:
    metadata = {0: {}, 1: {b"rgm.shape": t.rng.bytes(6)}, 2: {b"rgm.shape": b"1,2,8"}}[t.variant]
    _put_shard(t, 1, _table(1).replace_schema_metadata(metadata))
    return Expect(_shard(1), ("rgm.shape",))


@mutation(variants=2)
def _duplicate_ids(t: Target) -> Expect:
    """0: within one shard; 1: an id of shard 0 again in shard 1."""
    ids = np.array([4, 4, 5, 6]) if t.variant == 0 else np.array([int(t.rng.integers(0, 4)), 5, 6, 7])
    _put_shard(t, 1, _with_column(_table(1), "sample_id", pa.array(ids)), min_id=int(ids.min()), max_id=int(ids.max()))
    return Expect(_shard(1), ("duplicate sample_id",))


@mutation(variants=2)
def _negative_ids(t: Target) -> Expect:
    """0: the manifest records the negative range (refused there); 1: it still says 4..7."""
    ids = -np.arange(1, ROWS + 1) * int(t.rng.integers(1, 1000))
    entry = {"min_id": int(ids.min()), "max_id": int(ids.max())} if t.variant == 0 else {}
    _put_shard(t, 1, _with_column(_table(1), "sample_id", pa.array(ids)), **entry)
    return Expect(MANIFEST, ("shards[1].min_id",)) if t.variant == 0 else Expect(_shard(1), ("sample_id range",))


NULLABLE = [("sample_id", pa.int64(), 4), ("image", pa.binary(), bytes(16)), ("label", pa.int16(), 1),
            ("log_weight", pa.float32(), 0.5)]


@mutation(variants=len(NULLABLE))
def _null_values(t: Target) -> Expect:
    name, dtype, value = NULLABLE[t.variant]
    values = [value] * ROWS
    values[int(t.rng.integers(ROWS))] = None
    column = pa.array(values, dtype)
    if name == "sample_id":
        column = pa.array([None if v is None else 4 + i for i, v in enumerate(values)], dtype)
    _put_shard(t, 1, _with_column(_table(1), name, column))
    return Expect(_shard(1), ("null",))


@mutation(variants=2)
def _wrong_image_length(t: Target) -> Expect:
    size = int(t.rng.choice([n for n in range(40) if n != 16]))
    images = [bytes(16)] * ROWS
    images[int(t.rng.integers(ROWS))] = bytes(size)
    _put_shard(t, 1, _with_column(_table(1), "image", pa.array(images, pa.binary())))
    return Expect(_shard(1), (f"has {size} bytes",))


@mutation(variants=2)
def _non_finite_log_weight(t: Target) -> Expect:
    values = np.linspace(-1, 1, ROWS).astype(np.float32)
    values[int(t.rng.integers(ROWS))] = (np.nan, np.inf)[t.variant]
    _put_shard(t, 1, _with_column(_table(1), LOG_WEIGHT, pa.array(values)))
    return Expect(_shard(1), ("log_weight", ("NaN", "+inf")[t.variant]))


@mutation(variants=2)
def _bad_copies(t: Target) -> Expect:
    """A resampled set's ``copies`` column (in every shard and the manifest), 0: negative, 1: null in shard 1."""
    for index in range(SHARDS):
        copies = [1] * ROWS
        if index == 1:
            copies[int(t.rng.integers(ROWS))] = -int(t.rng.integers(1, 9)) if t.variant == 0 else None
        _put_shard(t, index, _table(index).append_column("copies", pa.array(copies, pa.int64())))
    _edit(t, lambda raw: raw["columns"].append("copies"))
    return Expect(_shard(1), ("'copies'", "negative" if t.variant == 0 else "null"))


@mutation()
def _fewer_rows_than_recorded(t: Target) -> Expect:
    _put_shard(t, 1, _table(1).slice(0, ROWS - 1))
    return Expect(_shard(1), (f"rows, {MANIFEST_NAME} says",))


@mutation()
def _mixed_schema(t: Target) -> Expect:
    table = _table(1)
    _put_shard(t, 1, _with_column(table, LOG_WEIGHT, table.column(LOG_WEIGHT).cast(pa.float64())))
    return Expect(_shard(1), ("'log_weight' has type double",))


CASES = [pytest.param(name, variant, id=f"{name}-{variant}")
         for name, (_, variants) in MUTATIONS.items() for variant in range(variants)]


# --- the checks ----------------------------------------------------------------------------------------

class OutsideRead(BaseException):
    """A read outside the set; a BaseException, so no ``except Exception`` in the code under test hides it."""


@pytest.fixture
def confine(monkeypatch, tmp_path):
    """``confine(set_dir)``: from then on, every file opened by path (Python's open, os.open, pyarrow's Parquet
    readers) that lies under ``tmp_path`` but outside ``set_dir`` (symlinks resolved) raises OutsideRead."""
    def activate(set_dir: Path) -> None:
        inside, scratch = set_dir.resolve(), tmp_path.resolve()

        def check(target: Any) -> None:
            if not isinstance(target, (str, bytes, os.PathLike)):
                return  # a file descriptor or an in-memory buffer
            try:
                resolved = Path(os.fsdecode(target)).resolve()
            except ValueError:  # a NUL byte: the open itself fails
                return
            if resolved.is_relative_to(scratch) and not resolved.is_relative_to(inside):
                raise OutsideRead(f"read outside the set: {target} -> {resolved}")

        def recorded(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def wrapper(target, *args, **kwargs):
                check(target)
                return fn(target, *args, **kwargs)
            return wrapper

        class RecordedParquetFile(pq.ParquetFile):
            def __init__(self, source, *args, **kwargs):
                check(source)
                super().__init__(source, *args, **kwargs)

        for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (pq, "read_table"),
                             (pq, "read_schema"), (pq, "read_metadata")):
            monkeypatch.setattr(module, name, recorded(getattr(module, name)))
        monkeypatch.setattr(pq, "ParquetFile", RecordedParquetFile)
    return activate


def _one_line_naming(stage: str, message: str, set_dir: Path, expect: Expect) -> None:
    assert "\n" not in message and "Traceback" not in message, (stage, message)
    assert str(set_dir) in message and expect.file in message, (stage, message)
    assert all(word in message for word in expect.words), (stage, expect.words, message)


STAGE_CHECKS = {
    "check": lambda d: SampleSet(d).check(ROW_COLUMNS),  # the resample stage's check (there, on Ray tasks)
    "weigh": open_samples,
    "evaluate": lambda d: load_sample_set("fuzz", d),
    "ssl": lambda d: open_sample_set_source(SourceSpec(SET, d), SHAPE),
}


@pytest.mark.parametrize("name, variant", CASES)
def test_a_damaged_set_is_refused_naming_file_and_field(pristine, tmp_path, confine, capsys, name, variant):
    target = Target(tmp_path / "set", tmp_path / "outside", np.random.default_rng([variant, len(name)]), variant)
    shutil.copytree(pristine, target.set)
    shutil.copytree(pristine, target.outside)
    mutate, _ = MUTATIONS[name]
    expect = mutate(target)
    confine(target.set)

    assert main(["data", "verify", str(target.set)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expect.file in err and all(w in err for w in expect.words), err
    for stage, check in STAGE_CHECKS.items():
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            check(target.set)
        _one_line_naming(stage, str(info.value), target.set, expect)
    for read in (lambda s: s.read(), lambda s: list(s.iter_batches(3))):
        try:  # the plain readers (stages call them only after the check): no error the CLI would not catch
            read(SampleSet(target.set))
        except (ValueError, FileNotFoundError):
            pass
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_the_recorder_catches_a_read_outside_the_set(pristine, tmp_path, confine):
    """The confinement check can fail: a read of the outside copy through any recorded opener is caught."""
    shutil.copytree(pristine, tmp_path / "set")
    shutil.copytree(pristine, tmp_path / "outside")
    confine(tmp_path / "set")
    assert len(SampleSet(tmp_path / "set").check(ROW_COLUMNS)) == SHARDS * ROWS  # reads inside pass
    link = tmp_path / "set" / "link.parquet"
    os.symlink(tmp_path / "outside" / _shard(0), link)
    for read in (pq.ParquetFile, pq.read_table, pq.read_schema, lambda p: Path(p).read_bytes(),
                 lambda p: open(p, "rb"), lambda p: os.open(p, os.O_RDONLY)):
        with pytest.raises(OutsideRead):
            read(link)
