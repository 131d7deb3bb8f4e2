"""When a stage's output directory is finished, and how it is published without losing the old one.

A stage whose output is several artefacts (the weigh stage: a weighted set, calibration and weight
diagnostics, the fitted classifier) is finished only when *all* of them are. The stage writes them,
then ``_complete.json`` last and atomically, listing each artefact's SHA-256 (a sample set is named by
its manifest's, any other directory by its files' hashes): that one rename is the publication. A
directory without the marker, or whose listed artefacts are missing or changed, is unfinished; the
stage may resume into it.

Replacing a finished output (``--overwrite``) builds the new one in a hidden sibling directory and
swaps it in only when it is complete, so a failed replacement leaves the old output untouched.
The marker's name starts with ``_`` so Parquet readers skip it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from rgm_ray.store.atomic import ArtefactExistsError, atomic_write_json, replace_directory, sha256_file
from rgm_ray.store.manifest import manifest_digest

COMPLETE_FILE = "_complete.json"


def _digest(path: Path) -> str:
    """A file's SHA-256; a sample set's manifest's; any other directory's over its files' names and hashes."""
    if not path.is_dir():
        return sha256_file(path)
    if (digest := manifest_digest(path)) is not None:
        return digest
    tree = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        tree.update(f"{item.relative_to(path)}\0{sha256_file(item)}\n".encode())
    return tree.hexdigest()


def mark_complete(directory: str | Path, stage: str, artefacts: Iterable[str]) -> Path:
    """Publish ``directory`` as ``stage``'s finished output (artefact names are relative to it)."""
    directory = Path(directory)
    names = sorted(set(artefacts))
    missing = [name for name in names if not (directory / name).exists()]
    if missing:
        raise FileNotFoundError(f"{directory}: cannot mark {stage} complete; missing {', '.join(missing)}")
    record = {"stage": stage, "artefacts": {name: _digest(directory / name) for name in names},
              "completed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(directory / COMPLETE_FILE, record)
    return directory / COMPLETE_FILE


def completion_problem(directory: str | Path, stage: str) -> str | None:
    """Why ``directory`` is not ``stage``'s finished output, or None when it is."""
    directory = Path(directory)
    marker = directory / COMPLETE_FILE
    if not marker.is_file():
        return f"{directory}: unfinished ({COMPLETE_FILE} missing)"
    try:
        record = json.loads(marker.read_text())
        recorded_stage, artefacts = record["stage"], dict(record["artefacts"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"{marker}: unreadable ({exc!r})"
    if recorded_stage != stage:
        return f"{marker}: written by stage {recorded_stage!r}, not {stage!r}"
    for name, digest in sorted(artefacts.items()):
        path = directory / name
        if not path.exists():
            return f"{path}: listed in {COMPLETE_FILE} but missing"
        if _digest(path) != digest:
            return f"{path}: changed since {COMPLETE_FILE} was written"
    return None


def is_complete(directory: str | Path, stage: str) -> bool:
    return completion_problem(directory, stage) is None


def check_not_inside(out: str | Path, inputs: Iterable[str | Path], *, flag: str = "--out") -> None:
    """Refuse an output equal to, inside, or containing an input: replacing it would destroy the input."""
    target = Path(out).resolve()
    for item in inputs:
        source = Path(item).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise ValueError(f"{flag} {out} overlaps the input {item}; writing there could destroy it, "
                             "choose another directory")


@contextlib.contextmanager
def stage_output(out: str | Path, stage: str, *, overwrite: bool, known: Iterable[str]) -> Iterator[Path]:
    """The directory a stage writes into, published on success.

    * ``out`` is ``stage``'s finished output: refused unless ``overwrite``; then the stage writes a
      hidden sibling that replaces ``out`` only after the block (and its ``mark_complete``) succeeds.
    * ``out`` is missing or an unfinished output of this stage: the stage writes (resumes) in place.
    * ``out`` holds anything else (names not in ``known``): refused, nothing is touched.
    """
    out = Path(out)
    if is_complete(out, stage):
        if not overwrite:
            raise ArtefactExistsError(f"{out} already holds a finished {stage} output; pass --overwrite to "
                                      "replace it or choose another --out")
        staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
        staging.mkdir()
        try:
            yield staging
            if not is_complete(staging, stage):
                raise RuntimeError(f"{staging}: the {stage} stage ended without marking its output complete")
            replace_directory(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return
    if out.is_file():
        raise ValueError(f"{out} is a file; {stage} writes a directory there")
    allowed = set(known) | {COMPLETE_FILE}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in allowed and not p.name.startswith(".")) \
        if out.is_dir() else []
    if foreign:
        raise ArtefactExistsError(f"{out} holds files that are not a {stage} output ({', '.join(foreign[:5])}); "
                                  "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    yield out
