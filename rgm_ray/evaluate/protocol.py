"""The evaluation protocol of the thesis's Table 6.3, on sets of exactly k images.

FID is biased by sample size, so every compared set contributes exactly ``k`` images per run:

* **real**: a uniform random k-subset of the real pool per run (the dataset's test split), shared
  by all rows of that run so the rows are compared on the same real images;
* **reference**: held-out real images against the real subset (a k-subset of the train split, or,
  with a single real pool, a second k-subset disjoint from the real one) — the best reachable score;
* **each set**: its images after expanding ``copies`` (a set resampled with replacement stores each
  distinct image once with its multiplicity, so expansion restores the multiset the resampler drew).
  By default a set must hold exactly k images and is used whole in every run. With ``uniform_k``
  a larger set is cut to a uniform random k-subset per run: this is the equal-size "no importance
  sampling" baseline drawn from a big plain pool. Both ways, k larger than a set is an error.

Runs differ by their seeded subsets (``rgm_ray.seeding`` streams named by set, not position, so
adding a set changes no other set's subsets) and by torch-fidelity's own IS/KID seeds. Features are
extracted once per pool for the union of all runs' rows, then every run is scored from them.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from rgm_ray.evaluate.features import Features
from rgm_ray.evaluate.metrics import KID_SUBSET_SIZE, KID_SUBSETS, METRIC_KEYS, MIN_SET_SIZE, fidelity_metrics
from rgm_ray.evaluate.weighted_fid import KEY_WEIGHTED_FID, KEY_WEIGHTED_FID_ESS, weighted_fid
from rgm_ray.seeding import derive_seed, numpy_rng
from rgm_ray.weigh.transforms import effective_sample_size

REFERENCE = "reference"
RESERVED_NAMES = (REFERENCE, "real")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # also a file-name part (neighbours_<name>.png)


def check_set_name(name: str) -> None:
    """Refuse a row name that is not a safe file-name part or that clashes with the real rows."""
    if not _NAME.match(name) or name in RESERVED_NAMES:
        raise ValueError(f"set name {name!r}: use letters, digits, '_', '.', '-' (not {' or '.join(RESERVED_NAMES)})")

# Seed-stream path items (under the run seed).
STREAM_REAL = 1
STREAM_REFERENCE = 2
STREAM_SET = 3
STREAM_METRICS = 4

Featurizer = Callable[[np.ndarray], Features]
Progress = Callable[..., Iterable]


@dataclass(frozen=True)
class EvalSet:
    """Images to score: uint8 ``[N, C, H, W]``, one row per stored sample, plus optional columns."""

    name: str
    images: np.ndarray
    source: str = ""
    log_weight: np.ndarray | None = None  # [N] float
    copies: np.ndarray | None = None  # [N] non-negative int multiplicities

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or len(self.images) == 0:
            raise ValueError(f"set {self.name!r}: images must be non-empty uint8 [N, C, H, W], "
                             f"got {self.images.dtype} {self.images.shape}")
        n = len(self.images)
        for column in ("log_weight", "copies"):
            values = getattr(self, column)
            if values is not None and np.shape(values) != (n,):
                raise ValueError(f"set {self.name!r}: {column} has shape {np.shape(values)} for {n} images")
        if self.copies is not None:
            copies = np.asarray(self.copies)
            if not np.issubdtype(copies.dtype, np.integer) or (copies < 0).any() or copies.sum() == 0:
                raise ValueError(f"set {self.name!r}: copies must be non-negative integers, not all zero")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def size(self) -> int:
        """Number of images after expanding ``copies``."""
        return int(np.sum(self.copies)) if self.copies is not None else len(self.images)

    def expanded_rows(self) -> np.ndarray:
        """Stored-row index of every image of the expanded multiset, ``[size]``."""
        rows = np.arange(len(self.images))
        return rows if self.copies is None else np.repeat(rows, np.asarray(self.copies, dtype=np.int64))


@dataclass(frozen=True)
class EvalConfig:
    k: int
    runs: int = 3
    seed: int = 0
    uniform_k: bool = False
    weighted_fid: bool = False
    kid_subset_size: int = KID_SUBSET_SIZE
    kid_subsets: int = KID_SUBSETS

    def __post_init__(self) -> None:
        if self.k < MIN_SET_SIZE:
            raise ValueError(f"k must be at least {MIN_SET_SIZE} (IS splits and precision/recall "
                             f"neighbourhoods need it), got {self.k}")
        if self.runs < 1 or self.seed < 0 or self.kid_subset_size < 2 or self.kid_subsets < 1:
            raise ValueError(f"runs must be >= 1, seed >= 0, kid_subset_size >= 2 and kid_subsets >= 1, got {self}")


@dataclass
class RowResult:
    """One table row: per-run metric values and their mean and standard deviation."""

    name: str
    source: str
    pool_size: int
    runs: list[dict[str, float]] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return list(self.runs[0]) if self.runs else []

    def mean(self) -> dict[str, float]:
        return {key: float(np.mean([run[key] for run in self.runs])) for key in self.keys}

    def std(self) -> dict[str, float]:
        """Sample standard deviation over runs (ddof=1); 0 for a single run."""
        ddof = 1 if len(self.runs) > 1 else 0
        return {key: float(np.std([run[key] for run in self.runs], ddof=ddof)) for key in self.keys}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "pool_size": self.pool_size, "runs": self.runs,
                "mean": self.mean(), "std": self.std()}


@dataclass
class Evaluation:
    """The outcome: rows (reference first, then the sets in order) and the subsets each run used."""

    config: EvalConfig
    extractor: dict[str, Any]
    real_source: str
    rows: list[RowResult]
    real_rows: list[np.ndarray]  # real-pool rows per run
    set_rows: dict[str, list[np.ndarray]]  # stored rows per run, per set

    def row(self, name: str) -> RowResult:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {"k": c.k, "runs": c.runs, "seed": c.seed, "uniform_k": c.uniform_k, "weighted_fid": c.weighted_fid,
                "kid_subset_size": min(c.kid_subset_size, c.k), "kid_subsets": c.kid_subsets,
                "extractor": self.extractor, "real": self.real_source, "metrics": list(METRIC_KEYS),
                "rows": [row.to_json() for row in self.rows]}


def _stream(name: str) -> int:
    """A stable path item for a set name (crc32), so a set's subsets do not depend on its position."""
    return zlib.crc32(name.encode())


def validate_sets(real: EvalSet, reference: EvalSet | None, sets: Sequence[EvalSet], config: EvalConfig) -> None:
    """Refuse anything that would make the rows incomparable, with a message that says how to fix it."""
    names = [s.name for s in sets]
    for name in names:
        check_set_name(name)
    if len(set(names)) != len(names):
        raise ValueError(f"set names must be unique, got {names}")
    for s in [*([reference] if reference else []), *sets]:
        if s.shape != real.shape:
            raise ValueError(f"set {s.name!r} has images of shape {s.shape}, the real data {real.shape}")
    k = config.k
    need_real = k if reference is not None else 2 * k
    if real.size < need_real:
        raise ValueError(f"real data {real.name!r} has {real.size} images; k={k} needs {need_real}"
                         + ("" if reference else " (a real k-subset plus a disjoint held-out reference k-subset)"))
    if reference is not None and reference.size < k:
        raise ValueError(f"reference data {reference.name!r} has {reference.size} images, fewer than k={k}")
    for s in sets:
        if s.size < k:
            raise ValueError(f"set {s.name!r} has {s.size} images, fewer than k={k}: every compared set must "
                             f"contribute exactly k images (FID is biased by sample size); lower --k")
        if s.size != k and not config.uniform_k:
            raise ValueError(f"set {s.name!r} has {s.size} images but k={k}: compared sets must have exactly k "
                             "images; pass --uniform-k to draw a uniform random k-subset per run, "
                             f"or set --k {s.size}")
    if config.weighted_fid and not any(s.log_weight is not None and s.copies is None for s in sets):
        raise ValueError("--weighted-fid needs a set with a log_weight column and no copies column "
                         "(a weighted pool; a resampled set already carries its weights in the sampling)")


def draw_subsets(s: EvalSet, config: EvalConfig) -> list[np.ndarray]:
    """Stored-row indices of each run's k images of ``s`` (a permutation when ``s.size == k``)."""
    expanded = s.expanded_rows()
    return [expanded[numpy_rng(config.seed, STREAM_SET, _stream(s.name), run).permutation(s.size)[:config.k]]
            for run in range(config.runs)]


def draw_real_subsets(real: EvalSet, reference: EvalSet | None,
                      config: EvalConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rows of each run's real subset and held-out reference subset (of ``reference``, else of ``real``)."""
    k = config.k
    real_expanded = real.expanded_rows()
    real_rows, ref_rows = [], []
    for run in range(config.runs):
        order = real_expanded[numpy_rng(config.seed, STREAM_REAL, run).permutation(real.size)]
        real_rows.append(order[:k])
        if reference is None:
            ref_rows.append(order[k:2 * k])  # disjoint from this run's real subset
        else:
            ref_order = numpy_rng(config.seed, STREAM_REFERENCE, run).permutation(reference.size)
            ref_rows.append(reference.expanded_rows()[ref_order[:k]])
    return real_rows, ref_rows


def pool_features(featurize: Featurizer, images: np.ndarray, run_rows: Sequence[np.ndarray]) -> list[Features]:
    """Features of each run's rows, extracting every distinct row of the pool once."""
    union = np.unique(np.concatenate(run_rows))
    features = featurize(images[union])
    return [features.take(np.searchsorted(union, rows)) for rows in run_rows]


def metric_seed(seed: int, run: int) -> int:
    """torch-fidelity's IS/KID seed of ``run`` (it wants < 2**32); shared by every row of the run."""
    return derive_seed(seed, STREAM_METRICS, run) % 2**32


def evaluate(real: EvalSet, reference: EvalSet | None, sets: Sequence[EvalSet], featurize: Featurizer,
             config: EvalConfig, *, extractor: dict[str, Any] | None = None,
             progress: Progress | None = None) -> Evaluation:
    """Score the reference row and every set against real k-subsets over ``config.runs`` runs.

    ``reference`` is the held-out real pool (e.g. the train split when ``real`` is the test split);
    ``None`` splits ``real`` into two disjoint k-subsets per run instead.
    """
    validate_sets(real, reference, sets, config)
    real_rows, ref_rows = draw_real_subsets(real, reference, config)
    set_rows = {s.name: draw_subsets(s, config) for s in sets}
    show = progress or (lambda it, **_: it)

    pools = [("real", real.images, real_rows + (ref_rows if reference is None else []))]
    if reference is not None:
        pools.append((REFERENCE, reference.images, ref_rows))
    pools += [(s.name, s.images, set_rows[s.name]) for s in sets]
    features: dict[str, list[Features]] = {}
    for name, images, rows in show(pools, desc="features", total=len(pools), unit="set"):
        features[name] = pool_features(featurize, images, rows)
    if reference is None:
        features[REFERENCE] = features["real"][config.runs:]
    real_features = features["real"][:config.runs]

    ref_pool = reference if reference is not None else real
    rows = [RowResult(REFERENCE, ref_pool.source, ref_pool.size)] + [RowResult(s.name, s.source, s.size) for s in sets]
    weighted = {s.name: s.log_weight for s in sets
                if config.weighted_fid and s.log_weight is not None and s.copies is None}
    jobs = [(row, run) for row in rows for run in range(config.runs)]
    for row, run in show(jobs, desc="metrics", total=len(jobs), unit="run"):
        generated = features[row.name][run]
        values = fidelity_metrics(generated, real_features[run], rng_seed=metric_seed(config.seed, run),
                                  kid_subset_size=config.kid_subset_size, kid_subsets=config.kid_subsets)
        if row.name in weighted:
            log_w = np.asarray(weighted[row.name], dtype=np.float64)[set_rows[row.name][run]]
            values[KEY_WEIGHTED_FID] = weighted_fid(generated.features, log_w, real_features[run].features)
            values[KEY_WEIGHTED_FID_ESS] = effective_sample_size(log_w)
        row.runs.append(values)
    return Evaluation(config, extractor or {}, real.source or real.name, rows, real_rows, set_rows)
