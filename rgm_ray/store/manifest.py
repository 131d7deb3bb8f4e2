"""``manifest.json``: the table of contents of a sample set (shards, row counts, hashes, provenance).

A set is *finished* exactly when its manifest exists; the manifest is written last and atomically,
so a crashed writer leaves a directory without one, which readers refuse and writers may resume.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rgm_ray import __version__
from rgm_ray.store.atomic import atomic_write_json
from rgm_ray.store.schema import Shape, format_shape, parse_shape

MANIFEST_NAME = "manifest.json"
FORMAT = "rgm_ray.sample_set/1"


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
    """Parse and validate ``directory/manifest.json``."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: missing; {directory} is not a finished sample set "
                            "(an interrupted run leaves no manifest; re-run it to resume)")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise ManifestError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
        shards = tuple(ShardInfo(file=str(s["file"]), rows=int(s["rows"]), sha256=str(s["sha256"]),
                                 min_id=int(s["min_id"]), max_id=int(s["max_id"]))
                       for s in raw["shards"])
        manifest = Manifest(shape=parse_shape(raw["shape"]), source=str(raw["source"]),
                            shards=shards, columns=tuple(raw["columns"]),
                            provenance=dict(raw.get("provenance", {})), info=dict(raw.get("info", {})))
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: malformed manifest ({exc!r})") from exc
    if "num_rows" in raw and int(raw["num_rows"]) != manifest.num_rows:
        raise ManifestError(f"{path}: num_rows {raw['num_rows']} != sum of shard rows {manifest.num_rows}")
    names = [s.file for s in shards]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: a shard is listed twice")
    for name in names:
        if not _is_plain_name(name):
            raise ManifestError(f"{path}: shard file {name!r} is not a plain file name in the set's directory "
                                "(no '/', '..', absolute or hidden paths); refusing to read outside the set")
    return manifest


def _is_plain_name(name: str) -> bool:
    return bool(name) and name == Path(name).name and "\\" not in name and not name.startswith(".")


def shard_path(directory: str | Path, name: str) -> Path:
    """``directory/name``, refused when a symlink (or anything else) takes it outside ``directory``."""
    directory = Path(directory)
    path = directory / name
    if path.resolve().parent != directory.resolve():
        raise ManifestError(f"{path}: resolves to {path.resolve()}, outside the set {directory}; refusing to read it")
    return path
