"""Sample sets as MLflow dataset inputs: a stage run records each set it read (the UI's "Datasets used").

Only metadata is logged, never the images: the name (the set's last two path parts, e.g.
``samples/pixelcnn``, the same in every run that reads it, so MLflow links them to one dataset), the
source (the set's absolute path), and its digest, the SHA-256 of its manifest file (which covers every
shard's hash: the identity evaluate and audit record as their inputs). MLflow keeps 36 characters of a
digest, so the full hash and the row count are tags of the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from rgm_ray.store.manifest import manifest_digest, read_manifest
from rgm_ray.tracking import Tracker

TAG_MANIFEST_SHA256 = "rgm.manifest_sha256"
TAG_ROWS = "rgm.rows"


def sample_set_name(directory: str | Path) -> str:
    """``samples/pixelcnn`` for ``RUN/samples/pixelcnn``: what the set is, without where the run lives."""
    path = Path(directory).expanduser().resolve()
    return "/".join(path.parts[-2:])


def log_sample_sets(tracker: Tracker, directories: Iterable[str | Path], *, context: str) -> None:
    """Log every finished set among ``directories`` as an input of ``tracker``'s run, used as ``context``
    (``training``, ``evaluation``, ...); a directory that is not a finished set is skipped."""
    if not tracker.active:
        return
    for directory in dict.fromkeys(Path(d).expanduser().resolve() for d in directories):
        digest = manifest_digest(directory)
        if digest is None:
            continue
        tracker.log_dataset(sample_set_name(directory), source=directory, digest=digest, context=context,
                            tags={TAG_MANIFEST_SHA256: digest, TAG_ROWS: str(read_manifest(directory).num_rows)})
