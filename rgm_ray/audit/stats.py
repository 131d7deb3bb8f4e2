"""Class-balance statistics and the confidence intervals every audit number carries (plain numpy).

Distances compare a set's predicted-class histogram with the real test split's histogram from the
same classifier, so the classifier's own errors largely cancel.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import beta

from rgm_ray.seeding import numpy_rng

KL_PSEUDO_COUNT = 0.5  # Jeffreys smoothing: added to every class count before KL, so an empty class stays finite
CI_LEVEL = 0.95


def class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of ``labels`` (ints in ``[0, num_classes)``) in each class, ``[num_classes]`` float64."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("no labels to histogram")
    return np.bincount(labels, minlength=num_classes)[:num_classes] / labels.size


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance ``0.5 * sum |p - q|`` of two histograms (in [0, 1])."""
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def smoothed_histogram(labels: np.ndarray, num_classes: int, pseudo_count: float = KL_PSEUDO_COUNT) -> np.ndarray:
    """Class fractions after adding ``pseudo_count`` to every class count (no zero bins)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)[:num_classes] + pseudo_count
    return counts / counts.sum()


def kl_distance(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats of two histograms without zero bins (see :func:`smoothed_histogram`)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if (p <= 0).any() or (q <= 0).any():
        raise ValueError("kl_distance needs strictly positive histograms: smooth them first")
    return float(np.sum(p * np.log(p / q)))


def bootstrap_ci(fn: Callable[..., float], *samples: np.ndarray, seed: int, reps: int,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of ``fn(*samples)``: each sample is resampled with replacement,
    independently, ``reps`` times from the stream ``seed``."""
    if reps < 1 or not samples:
        raise ValueError(f"bootstrap needs reps >= 1 and at least one sample, got reps={reps}")
    rng = numpy_rng(seed)
    stats = np.empty(reps)
    for rep in range(reps):
        stats[rep] = fn(*(s[rng.integers(0, len(s), len(s))] for s in samples))
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def binomial_ci(successes: int, trials: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a binomial proportion."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    alpha = 1.0 - level
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lo, hi
