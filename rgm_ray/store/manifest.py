"""``_manifest.json``: the table of contents of a sample set (shards, row counts, hashes, provenance).

A set is *finished* exactly when its manifest exists; the manifest is written last and atomically,
so a crashed writer leaves a directory without one, which readers refuse and writers may resume.
It is written as :data:`MANIFEST_NAME` and found with :func:`~rgm_ray.store.layout.side_file`, so an
old-layout set's ``manifest.json`` is read too (:mod:`rgm_ray.store.layout`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Collection

from rgm_ray import __version__
from rgm_ray.store.atomic import atomic_write_json, sha256_file
from rgm_ray.store.layout import MANIFEST_NAME, side_file
from rgm_ray.store.schema import Shape, format_shape, parse_shape

FORMAT = "rgm_ray.sample_set/1"
_REQUIRED = ("format", "shape", "source", "num_rows", "columns", "shards")
_FIELDS = (*_REQUIRED, "provenance", "info")
_INT64_MAX = 2**63 - 1  # row counts and sample ids are int64 in the shards
_NAME_MAX = 255  # bytes in one file name on Linux filesystems


class ManifestError(ValueError):
    """The manifest is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class ShardInfo:
    """One Parquet shard as recorded in the manifest."""

    file: str
    rows: int
    sha256: str
    min_id: int
    max_id: int


_SHARD_FIELDS = tuple(f.name for f in fields(ShardInfo))


@dataclass(frozen=True)
class Manifest:
    shape: Shape
    source: str
    shards: tuple[ShardInfo, ...]
    columns: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # stage-specific facts (e.g. generation params)

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "shape": format_shape(self.shape), "source": self.source,
                "num_rows": self.num_rows, "columns": list(self.columns),
                "shards": [asdict(s) for s in self.shards],
                "provenance": self.provenance, "info": self.info}


def provenance(command: str | None = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """What produced a set: the command line, seed, time and package version."""
    return {"command": command if command is not None else " ".join(sys.argv), "seed": seed,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "rgm_ray_version": __version__, **extra}


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    atomic_write_json(path, manifest.to_json())
    return path


def read_manifest(directory: str | Path) -> Manifest:
    """Parse and validate ``directory``'s manifest; every problem is one line naming the file and the field."""
    path = side_file(directory, MANIFEST_NAME)
    if not path.is_file():
        raise ManifestError(f"{path}: missing; {directory} is not a finished sample set "
                            "(an interrupted run leaves no manifest; re-run it to resume)")
    shard_path(directory, path.name)  # a manifest symlinked from elsewhere is refused before it is read
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; nesting deeper than the parser's stack
        reason = " ".join(str(exc).split())[:200]
        raise ManifestError(f"{path}: malformed manifest, not valid JSON ({reason})") from exc
    return _manifest_from_json(raw, path)


def manifest_digest(directory: str | Path) -> str | None:
    """The SHA-256 of ``directory``'s manifest file (what a set's consumers record as its identity: it
    covers every shard's hash), or None when there is none."""
    path = side_file(directory, MANIFEST_NAME)
    return sha256_file(path) if path.is_file() else None


def _manifest_from_json(raw: Any, path: Path) -> Manifest:
    """The manifest ``raw`` (parsed JSON) describes, checked field by field against the format."""
    def fail(name: str, reason: str) -> ManifestError:
        return ManifestError(f"{path}: field {name!r} {reason}")

    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: malformed manifest, a JSON {type(raw).__name__} instead of an object")
    _check_fields(raw, _FIELDS, _REQUIRED, "", fail)
    if raw["format"] != FORMAT:
        raise fail("format", f"is {raw['format']!r}, expected {FORMAT!r}")
    for name in ("provenance", "info"):
        if not isinstance(raw.get(name, {}), dict):
            raise fail(name, f"must be an object, got {_kind(raw[name])}")
    if not isinstance(raw["shape"], str):
        raise fail("shape", f"must be a 'C,H,W' string, got {_kind(raw['shape'])}")
    try:
        shape = parse_shape(raw["shape"])
    except ValueError as exc:
        raise fail("shape", str(exc)) from exc
    if not isinstance(raw["source"], str):
        raise fail("source", f"must be a string, got {_kind(raw['source'])}")
    columns = raw["columns"]
    if (not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns)
            or len(set(columns)) != len(columns)):
        raise fail("columns", f"must be a list of distinct column names, got {_kind(columns)}")
    if not isinstance(raw["shards"], list):
        raise fail("shards", f"must be a list of shard entries, got {_kind(raw['shards'])}")
    shards = tuple(_shard_from_json(entry, f"shards[{i}]", fail) for i, entry in enumerate(raw["shards"]))
    manifest = Manifest(shape=shape, source=raw["source"], shards=shards, columns=tuple(columns),
                        provenance=dict(raw.get("provenance", {})), info=dict(raw.get("info", {})))
    num_rows = _int64(raw["num_rows"], "num_rows", fail)
    if num_rows != manifest.num_rows:
        raise fail("num_rows", f"is {num_rows}, but the shards' rows sum to {manifest.num_rows}")
    names = [s.file for s in shards]
    if len(set(names)) != len(names):
        raise fail("shards", "lists a shard file twice")
    return manifest


def _shard_from_json(entry: Any, name: str, fail: Callable[[str, str], ManifestError]) -> ShardInfo:
    if not isinstance(entry, dict):
        raise fail(name, f"must be an object with {', '.join(_SHARD_FIELDS)}, got {_kind(entry)}")
    _check_fields(entry, _SHARD_FIELDS, _SHARD_FIELDS, f"{name}.", fail)
    file, sha256 = entry["file"], entry["sha256"]
    if not isinstance(file, str) or not _is_plain_name(file):
        raise fail(f"{name}.file", f"{file!r} is not a plain file name in the set's directory (no '/', '..', "
                                   "absolute or hidden paths); refusing to read outside the set")
    if not (isinstance(sha256, str) and len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
        raise fail(f"{name}.sha256", f"must be 64 lowercase hex digits, got {_kind(sha256)}")
    rows, min_id, max_id = (_int64(entry[key], f"{name}.{key}", fail) for key in ("rows", "min_id", "max_id"))
    if min_id > max_id:
        raise fail(f"{name}.min_id", f"{min_id} exceeds max_id {max_id}")
    return ShardInfo(file=file, rows=rows, sha256=sha256, min_id=min_id, max_id=max_id)


def _check_fields(obj: dict, known: Collection[str], required: Collection[str], prefix: str,
                  fail: Callable[[str, str], ManifestError]) -> None:
    """Refuse a missing or unknown field (the format is versioned: a typo must not pass for an extension)."""
    for key in required:
        if key not in obj:
            raise fail(prefix + key, "is missing")
    for key in obj:
        if key not in known:
            raise fail(prefix + key, f"is not a field of {FORMAT} (known: {', '.join(known)})")


def _int64(value: Any, name: str, fail: Callable[[str, str], ManifestError]) -> int:
    """A JSON integer in [0, 2**63) (row counts and sample ids); a bool, float or string is refused, not cast."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
        raise fail(name, f"must be an integer in [0, 2**63), got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    """A short description of a JSON value for messages: huge or long values are not echoed whole."""
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"


def _is_plain_name(name: str) -> bool:
    try:
        encoded = os.fsencode(name)
    except UnicodeError:
        return False
    return (bool(name) and name == Path(name).name and "\\" not in name and not name.startswith(".")
            and b"\0" not in encoded and len(encoded) <= _NAME_MAX)


def shard_path(directory: str | Path, name: str) -> Path:
    """``directory/name``, refused when a symlink (or anything else) takes it outside ``directory``."""
    directory = Path(directory)
    path = directory / name
    if path.resolve().parent != directory.resolve():
        raise ManifestError(f"{path}: resolves to {path.resolve()}, outside the set {directory}; refusing to read it")
    return path
