"""Cross-fitting: which classifier trains, calibrates and scores each sample.

Scheme (K folds, default 2):

* Every sample gets a fold ``f(id) ∈ {0..K-1}`` and a calibration flag, both pure functions of
  ``(seed, role, sample_id)`` through a counter-based hash -- so they do not depend on row order,
  sharding or which other samples are present. Real and generated ids use separate hash streams
  (their id ranges overlap).
* Model ``k`` trains on the samples of the *other* folds whose calibration flag is off; the other
  folds' flagged samples (the *calibration slice*, default 20 %) pick its best epoch and fit its
  temperature. Fold ``k`` itself is never seen by model ``k``: it is where model ``k``'s calibration
  is measured and the samples model ``k`` scores.
* Hence every generated sample's weight comes from a classifier *and* a temperature that never saw
  it, and the held-out metrics are measured on data neither was fitted on.

Balancing: the classes are made equal by subsampling, never by reweighting -- first the larger pool
down to the smaller (``max_per_class`` caps both), then each train / calibration / test part to its
smaller class. Which rows are kept is decided by a third hash (a seeded priority), so the choice is
stable too. With equal class counts the classifier's logit is the log density ratio itself and no
prior correction ``log(n_gen / n_real)`` is needed. Every generated sample is *scored* (by its fold's
model), including those that subsampling left out of fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgm_ray.seeding import derive_seed

REAL, GENERATED = 0, 1  # roles: separate hash streams for the two pools
_STREAM_FOLD, _STREAM_CALIBRATION, _STREAM_PRIORITY = 0, 1, 2
ROLE_NAMES = {REAL: "real", GENERATED: "generated"}

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(30), np.uint64(0xBF58476D1CE4E5B9), np.uint64(27), np.uint64(0x94D049BB133111EB), np.uint64(31))


def hash_uniform(sample_ids: np.ndarray, *, seed: int, stream: int, role: int) -> np.ndarray:
    """Uniforms in [0, 1), one per id: SplitMix64 of ``key + id·γ`` with ``key = derive_seed(seed, stream, role)``.

    A pure function of ``(seed, stream, role, id)``; vectorised, ~10 integer passes per id.
    """
    ids = np.asarray(sample_ids, dtype=np.int64)
    s1, m1, s2, m2, s3 = _MIX
    h = ids.view(np.uint64) * _GAMMA + np.uint64(derive_seed(seed, stream, role))  # wraps mod 2**64
    h = (h ^ (h >> s1)) * m1
    h = (h ^ (h >> s2)) * m2
    h ^= h >> s3
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign_folds(sample_ids: np.ndarray, *, seed: int, folds: int, role: int = GENERATED) -> np.ndarray:
    """Fold index (int64 in ``[0, folds)``) of each id; the scorer uses exactly this to pick a model."""
    _check_folds(folds)
    return np.minimum((hash_uniform(sample_ids, seed=seed, stream=_STREAM_FOLD, role=role) * folds).astype(np.int64),
                      folds - 1)


def calibration_flags(sample_ids: np.ndarray, *, seed: int, fraction: float, role: int) -> np.ndarray:
    """True for ids in the calibration slice (about ``fraction`` of them)."""
    return hash_uniform(sample_ids, seed=seed, stream=_STREAM_CALIBRATION, role=role) < fraction


def _check_folds(folds: object) -> None:
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2 (cross-fitting needs a held-out fold), got {folds!r}")


def check_plan_settings(folds: object, calibration_fraction: object, max_per_class: object) -> None:
    """The settings of :func:`plan_crossfit` that need no ids, so a stage can refuse them before any work."""
    _check_folds(folds)
    if not (isinstance(calibration_fraction, (int, float)) and 0.0 < calibration_fraction < 1.0):
        raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction!r}")
    if max_per_class is not None and max_per_class < 2 * folds:
        raise ValueError(f"max_per_class={max_per_class} is too small for {folds} folds")


def _keep_lowest_priority(ids: np.ndarray, n: int, *, seed: int, role: int) -> np.ndarray:
    """The ``n`` ids with the smallest seeded priority, returned sorted."""
    if n >= ids.size:
        return ids
    priority = hash_uniform(ids, seed=seed, stream=_STREAM_PRIORITY, role=role)
    return np.sort(ids[np.argsort(priority, kind="stable")[:n]])


def _balance(real: np.ndarray, gen: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = min(real.size, gen.size)
    return (_keep_lowest_priority(real, n, seed=seed, role=REAL),
            _keep_lowest_priority(gen, n, seed=seed, role=GENERATED))


@dataclass(frozen=True)
class FoldSplit:
    """Sorted int64 sample ids of model ``fold``'s three parts, each class-balanced."""

    fold: int
    train_real: np.ndarray
    train_gen: np.ndarray
    calib_real: np.ndarray
    calib_gen: np.ndarray
    test_real: np.ndarray
    test_gen: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train_per_class": int(self.train_real.size), "calibration_per_class": int(self.calib_real.size),
                "test_per_class": int(self.test_real.size)}


@dataclass(frozen=True)
class CrossFitPlan:
    folds: tuple[FoldSplit, ...]
    seed: int
    calibration_fraction: float
    real_ids: np.ndarray  # sorted ids every part draws from (features are needed for these only)
    gen_ids: np.ndarray

    @property
    def k(self) -> int:
        return len(self.folds)

    def describe(self) -> dict[str, object]:
        return {"folds": self.k, "seed": self.seed, "calibration_fraction": self.calibration_fraction,
                "per_class": int(self.real_ids.size), "per_fold": [f.sizes() for f in self.folds]}


def _unique_ids(ids: object, name: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: sample ids must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: nothing to train the real-vs-generated classifier on")
    arr = np.sort(arr.astype(np.int64))
    if (arr[1:] == arr[:-1]).any():
        raise ValueError(f"{name}: sample ids must be unique")
    return arr


def plan_crossfit(real_ids: object, gen_ids: object, *, folds: int = 2, seed: int = 0,
                  calibration_fraction: float = 0.2, max_per_class: int | None = None,
                  real_name: str = "real", gen_name: str = "generated") -> CrossFitPlan:
    """Split balanced real and generated ids into ``folds`` train / calibration / test parts (see module doc)."""
    check_plan_settings(folds, calibration_fraction, max_per_class)
    real = _unique_ids(real_ids, real_name)
    gen = _unique_ids(gen_ids, gen_name)
    n = min(real.size, gen.size, max_per_class or real.size)
    real = _keep_lowest_priority(real, n, seed=seed, role=REAL)
    gen = _keep_lowest_priority(gen, n, seed=seed, role=GENERATED)
    real_fold = assign_folds(real, seed=seed, folds=folds, role=REAL)
    gen_fold = assign_folds(gen, seed=seed, folds=folds, role=GENERATED)
    real_cal = calibration_flags(real, seed=seed, fraction=calibration_fraction, role=REAL)
    gen_cal = calibration_flags(gen, seed=seed, fraction=calibration_fraction, role=GENERATED)
    splits = []
    for k in range(folds):
        train = _balance(real[(real_fold != k) & ~real_cal], gen[(gen_fold != k) & ~gen_cal], seed)
        calib = _balance(real[(real_fold != k) & real_cal], gen[(gen_fold != k) & gen_cal], seed)
        test = _balance(real[real_fold == k], gen[gen_fold == k], seed)
        for part, (r, _) in (("training", train), ("calibration", calib), ("test", test)):
            if r.size == 0:
                raise ValueError(
                    f"too few samples for {folds}-fold cross-fitting: fold {k}'s {part} part is empty "
                    f"({real.size} {real_name} and {gen.size} {gen_name} samples used per class); "
                    "give more samples, fewer folds or another calibration fraction")
        splits.append(FoldSplit(k, *train, *calib, *test))
    return CrossFitPlan(tuple(splits), seed, float(calibration_fraction), real, gen)
