"""Atomic file and directory writes: a reader sees either nothing or the finished artefact.

Every artefact is written under a temporary name in the same directory and renamed into place
(``os.replace`` is atomic on POSIX within one filesystem), so a crash or a killed worker never
leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator


# errors of a write that name no file but can only be about the file written (full disk, quota, size limit)
DESTINATION_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class ArtefactExistsError(FileExistsError):
    """A finished artefact is in the way and ``overwrite`` was not requested."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it is fsynced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with _naming(tmp, path):
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def _naming(tmp: Path, path: Path) -> Iterator[None]:
    """Name the artefact in an ``OSError`` raised while it is written under ``tmp``: a failed write (a full
    disk) names no file at all, and a temporary's name means nothing to the user."""
    try:
        yield
    except OSError as exc:
        failed = None if exc.filename is None else Path(exc.filename)
        if not (failed == tmp or (failed is not None and tmp in failed.parents)
                or (failed is None and exc.errno in DESTINATION_ERRNOS)):
            raise
        name = path if failed is None or failed == tmp else path / failed.relative_to(tmp)
        raise OSError(exc.errno, os.strerror(exc.errno), str(name)) from exc


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary sibling name and move it to ``path`` when done.

    An existing ``path`` is refused unless ``overwrite``; then it is replaced only after the new
    directory is complete, so a failed run leaves the old artefact untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtefactExistsError(f"{path} already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a finished set should be shareable
    try:
        with _naming(tmp, path):
            yield tmp
            replace_directory(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(new: Path, path: Path) -> None:
    """Move the finished directory ``new`` to ``path``; an old ``path`` is moved aside first and only
    deleted once ``new`` is in place, so at no moment is neither on disk."""
    if path.exists():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
