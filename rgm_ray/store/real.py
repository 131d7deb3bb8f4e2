"""What ``--real`` names, resolved by one rule for every stage.

* A known dataset name (:data:`rgm_ray.data.DATASET_NAMES`) always means that dataset, even when a
  directory of that name exists (``./fashion-mnist`` names the directory); the caller says which
  split it needs (the weigh stage: ``train``; the evaluate stage: ``test`` as the real set and
  ``train`` as its held-out reference).
* Anything else must be an existing sample-set directory (e.g. a split written by ``rgm data export``).
* Neither is an error that lists the dataset names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rgm_ray.data import DATASET_NAMES, ImageDataset, load_dataset
from rgm_ray.store.reader import SampleSet


@dataclass(frozen=True)
class RealSource:
    """Exactly one of ``dataset`` (the requested split, in memory) and ``samples`` (a sample set)."""

    spec: str  # as the user wrote it
    dataset: ImageDataset | None = None
    samples: SampleSet | None = None


def resolve_real(spec: str, split: str, root: str | Path | None = None) -> RealSource:
    """``--real spec``: split ``split`` of a dataset name (read from ``root``), else a sample-set directory."""
    if spec in DATASET_NAMES:
        return RealSource(spec, dataset=load_dataset(spec, split, root))
    if Path(spec).is_dir():
        return RealSource(spec, samples=SampleSet(spec))
    raise ValueError(f"--real {spec!r}: neither a dataset name ({', '.join(DATASET_NAMES)}) nor a sample-set "
                     "directory")
