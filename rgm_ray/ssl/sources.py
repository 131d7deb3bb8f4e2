"""Unlabelled-image sources for the semi-supervised stage, named by one string each.

    none          no unlabelled images: batches hold only the labelled half (the lower reference)
    real          the real training images left over after the labelled subset and the validation
                  split are taken out (the upper reference: unlabelled data from p_data itself)
    DIR           a sample set used uniformly: generated samples as drawn ("plain"), or a resampled
                  set, whose ``copies`` column (with-replacement draws) is honoured by repeating rows
    weighted:DIR  a plain set whose ``log_weight`` column weighs each image's semantic-loss term by
                  its self-normalised importance weight (LFIW's alternative to resampling), after
                  optional flattening w^alpha

A sample set's own ``log_weight`` is ignored unless the ``weighted:`` prefix asks for it, so a
resampled set (which keeps the original weights for reference) is never weighted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rgm_ray.store import COPIES, IMAGE, LOG_WEIGHT, SampleSet
from rgm_ray.weigh.transforms import effective_sample_size, flatten, self_normalize

NONE = "none"
REAL = "real"
SET = "set"
WEIGHTED = "weighted"
WEIGHTED_PREFIX = "weighted:"
SOURCE_SYNTAX = "none | real | DIR | weighted:DIR"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed unlabelled-source string: ``kind`` is one of none, real, set, weighted."""

    kind: str
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind in (NONE, REAL):
            return self.kind
        return f"{WEIGHTED_PREFIX}{self.path}" if self.kind == WEIGHTED else str(self.path)

    @property
    def default_name(self) -> str:
        """A short report label: ``none``, ``real``, the set's directory name, or ``weighted``."""
        if self.kind == SET:
            return self.path.name or str(self.path)
        return self.kind

    def resolved(self) -> SourceSpec:
        """The same source with an absolute path (Ray workers may run in another directory)."""
        return self if self.path is None else SourceSpec(self.kind, self.path.expanduser().resolve())


def parse_source(text: str) -> SourceSpec:
    """Parse ``none``, ``real``, ``DIR`` or ``weighted:DIR`` (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"unlabelled source must be a non-empty string ({SOURCE_SYNTAX}), got {text!r}")
    text = text.strip()
    if text in (NONE, REAL):
        return SourceSpec(text)
    if text.startswith(WEIGHTED_PREFIX):
        path = text[len(WEIGHTED_PREFIX):].strip()
        if not path:
            raise ValueError(f"unlabelled source {text!r}: 'weighted:' needs a sample-set directory after it")
        return SourceSpec(WEIGHTED, Path(path))
    return SourceSpec(SET, Path(text))


@dataclass(frozen=True)
class UnlabeledPool:
    """Unlabelled images and how a batch draws from them.

    ``rows`` lists the image index of every draw slot (``copies`` expanded; zero-weight images
    left out), so a uniform pass over ``rows`` reproduces a with-replacement resample; ``weights`` (``[n_images]``, summing to 1) are
    the per-image SL weights of a ``weighted:`` source, else None.
    """

    images: np.ndarray  # uint8 [n_images, C, H, W]
    rows: np.ndarray  # int64 [n_draw_slots], values in [0, n_images)
    weights: np.ndarray | None = None  # float64 [n_images]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or len(self.images) == 0:
            raise ValueError(f"unlabelled images must be a non-empty uint8 [N, C, H, W] array, "
                             f"got {self.images.dtype} {self.images.shape}")
        if self.rows.ndim != 1 or self.rows.size == 0:
            raise ValueError("an unlabelled pool needs at least one draw slot")
        if self.weights is not None and self.weights.shape != (len(self.images),):
            raise ValueError(f"{self.weights.shape[0]} weights for {len(self.images)} unlabelled images")

    def __len__(self) -> int:
        return int(self.rows.size)


def pool_from_images(images: np.ndarray, **info: object) -> UnlabeledPool:
    """Every image once, unweighted."""
    return UnlabeledPool(images, np.arange(len(images), dtype=np.int64), info={"size": len(images), **info})


def open_sample_set_source(spec: SourceSpec, image_shape: tuple[int, ...]) -> SampleSet:
    """Open a ``set`` or ``weighted`` source, check it fits the labelled data, then check its shards
    (hashes, columns, image sizes, ids: :meth:`SampleSet.check`)."""
    if spec.kind not in (SET, WEIGHTED):
        raise ValueError(f"source {spec} is not a sample set")
    sample_set = SampleSet(spec.path)
    if tuple(sample_set.shape) != tuple(image_shape):
        raise ValueError(f"{spec.path}: images are {sample_set.shape}, the labelled dataset's are {tuple(image_shape)}")
    if spec.kind == WEIGHTED and COPIES in sample_set.columns:
        raise ValueError(f"{spec.path}: 'weighted:' expects a plain weighted set, but this one has a "
                         f"'{COPIES}' column (it was resampled); pass it without 'weighted:'")
    return sample_set.check((IMAGE, LOG_WEIGHT) if spec.kind == WEIGHTED else (IMAGE,))


def load_sample_set_pool(spec: SourceSpec, image_shape: tuple[int, ...], *, weight_alpha: float = 1.0) -> UnlabeledPool:
    """Read a ``set`` or ``weighted`` source from the store, checking its images match the real data."""
    sample_set = open_sample_set_source(spec, image_shape)
    if spec.kind == WEIGHTED:
        data = sample_set.read([IMAGE, LOG_WEIGHT])
        log_w = flatten(data[LOG_WEIGHT].astype(np.float64), weight_alpha)
        weights = self_normalize(log_w)
        # Only the support is drawn: a batch of zero-weight images would have no SL term to normalise.
        rows = np.flatnonzero(weights > 0).astype(np.int64)
        info = {"size": int(rows.size), "weight_alpha": weight_alpha, "ess": effective_sample_size(log_w)}
        return UnlabeledPool(data[IMAGE], rows, weights, info)
    columns = [IMAGE, COPIES] if COPIES in sample_set.columns else [IMAGE]
    data = sample_set.read(columns)
    if COPIES in data:
        copies = data[COPIES].astype(np.int64)
        if (copies < 0).any():
            raise ValueError(f"{spec.path}: negative '{COPIES}' values")
        rows = np.repeat(np.arange(len(copies), dtype=np.int64), copies)  # one slot per drawn copy
        return UnlabeledPool(data[IMAGE], rows, None, {"size": int(rows.size), "unique": len(copies)})
    return pool_from_images(data[IMAGE])
