"""Calibration of the real-vs-generated classifier: metrics and temperature scaling, in plain NumPy.

The importance weight is the classifier's odds, ``w = c / (1 − c)``, so a classifier that is right
about *which* class but wrong about *how sure* it is gives wrong weights. These functions measure
that (reliability curve, ECE, Brier score, log-loss) next to the usual discrimination numbers
(accuracy, ROC-AUC), and correct the commonest failure -- a logit scale that is too large or too
small -- with one temperature ``T``: ``z -> z / T`` (Guo et al. 2017).

Conventions: label 1 = real, 0 = generated; probabilities are ``P(real)``. The reliability curve
and ECE bin the *positive-class* probability (not the max-class confidence), so a bin's observed
frequency is directly the fraction of real images in it -- the quantity the odds are built from.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 10
# Temperatures outside this range mean the held-out data is (nearly) separable or carries no signal;
# the fit stops at the bound and reports it rather than running off to 0 or infinity.
TEMPERATURE_BOUNDS = (1e-2, 1e2)

# Keys of ``calibration_metrics``; reused as the names that are logged.
KEY_N = "n"
KEY_ACCURACY = "accuracy"
KEY_ROC_AUC = "roc_auc"
KEY_ECE = "ece"
KEY_BRIER = "brier"
KEY_NLL = "nll"
METRIC_KEYS = (KEY_ACCURACY, KEY_ROC_AUC, KEY_ECE, KEY_BRIER, KEY_NLL)


def validate_logits(logits: object, *, name: str = "logits") -> np.ndarray:
    """``logits`` as 1-D float64; NaN or ±inf raise a ValueError naming ``name`` and the first bad index."""
    arr = np.asarray(logits)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s) (first: {arr[first]} at index {first}); "
                         "the classifier diverged or was fed broken inputs")
    return arr


def validate_labels(labels: object, n: int, *, name: str = "labels") -> np.ndarray:
    """Binary labels as a bool array of length ``n`` (True = real)."""
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0 (generated) and 1 (real)")
        arr = arr.astype(bool)
    return arr


def validate_probabilities(probs: object, *, name: str = "probabilities") -> np.ndarray:
    arr = validate_logits(probs, name=name)
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}]")
    return arr


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def log_loss(logits: object, labels: object) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits)``, computed from logits (finite for any finite logit)."""
    z = validate_logits(logits)
    y = validate_labels(labels, z.size)
    # −log σ(z) = softplus(−z), −log(1 − σ(z)) = softplus(z)
    signed = np.where(y, -z, z)
    return float(np.mean(np.logaddexp(0.0, signed)))


def accuracy(probs: object, labels: object) -> float:
    """Fraction classified correctly at the 0.5 threshold (ties count as real)."""
    p = validate_probabilities(probs)
    y = validate_labels(labels, p.size)
    return float(np.mean((p >= 0.5) == y))


def brier_score(probs: object, labels: object) -> float:
    """Mean squared error of ``P(real)`` against the 0/1 label."""
    p = validate_probabilities(probs)
    y = validate_labels(labels, p.size)
    return float(np.mean((p - y) ** 2))


def roc_auc(scores: object, labels: object) -> float:
    """Area under the ROC curve = P(score of a random real > score of a random generated), ties count ½.

    Mann–Whitney form with average ranks, O(n log n); needs both classes present.
    """
    s = validate_logits(scores, name="scores")
    y = validate_labels(labels, s.size)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both classes, got {n_pos} real and {n_neg} generated")
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # Average rank (1-based) of each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def reliability_curve(probs: object, labels: object, bins: int = DEFAULT_BINS) -> dict[str, list]:
    """Per equal-width bin of ``P(real)``: centre, mean predicted probability, observed fraction real, count.

    Empty bins get ``None`` for the mean and the fraction (JSON has no NaN).
    """
    p = validate_probabilities(probs)
    y = validate_labels(labels, p.size)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)  # p = 1 falls in the last bin
    counts = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y.astype(np.float64), minlength=bins)

    def per_bin(total: np.ndarray) -> list[float | None]:
        return [float(t / c) if c else None for t, c in zip(total, counts)]

    return {"centre": [(i + 0.5) / bins for i in range(bins)], "mean_predicted": per_bin(sum_p),
            "fraction_real": per_bin(sum_y), "count": counts.tolist()}


def expected_calibration_error(probs: object, labels: object, bins: int = DEFAULT_BINS) -> float:
    """ECE = Σ_b (n_b / n) · |mean predicted − observed fraction real| over equal-width bins."""
    curve = reliability_curve(probs, labels, bins)
    n = sum(curve["count"])
    return float(sum(c / n * abs(m - f) for c, m, f in zip(curve["count"], curve["mean_predicted"],
                                                          curve["fraction_real"]) if c))


def fit_temperature(logits: object, labels: object, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS, tol: float = 1e-10) -> float:
    """Temperature ``T`` minimising the log-loss of ``sigmoid(logits / T)`` on held-out data.

    Targets are Platt's (1999) smoothed labels ``(n₊+1)/(n₊+2)`` and ``1/(n₋+2)`` instead of 1 and 0:
    on separable held-out data the plain maximum-likelihood T is 0 (every logit blown up without
    limit, so one misjudged sample would later take all the weight); the smoothed targets keep T
    finite, and their pull fades as the held-out set grows.

    With ``β = 1/T`` the loss is convex in β, so its derivative ``mean((σ(βz) − t) z)`` is
    non-decreasing and its root is found by bisection (on log β, since plausible T span decades).
    Outside ``bounds`` the nearer bound is returned (``T_max`` when the logits carry no signal).
    All-zero logits have no scale to fit and return 1.
    """
    z = validate_logits(logits)
    y = validate_labels(labels, z.size)
    t_min, t_max = bounds
    if not 0 < t_min < 1 < t_max < math.inf:
        raise ValueError(f"temperature bounds must satisfy 0 < low < 1 < high < inf, got {bounds}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("fit_temperature needs held-out examples of both classes")
    if not z.any():
        return 1.0
    target = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def slope(log_beta: float) -> float:
        return float(np.mean((sigmoid(math.exp(log_beta) * z) - target) * z))

    lo, hi = -math.log(t_max), -math.log(t_min)  # log β range
    if slope(lo) >= 0:
        return t_max
    if slope(hi) <= 0:
        return t_min
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    return math.exp(-0.5 * (lo + hi))


def calibration_metrics(logits: object, labels: object, *, temperature: float = 1.0,
                        bins: int = DEFAULT_BINS) -> dict[str, float | int]:
    """Accuracy, ROC-AUC, ECE, Brier and log-loss of ``sigmoid(logits / temperature)``."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    z = validate_logits(logits) / temperature
    y = validate_labels(labels, z.size)
    p = sigmoid(z)
    return {KEY_N: int(z.size), KEY_ACCURACY: accuracy(p, y), KEY_ROC_AUC: roc_auc(z, y),
            KEY_ECE: expected_calibration_error(p, y, bins), KEY_BRIER: brier_score(p, y), KEY_NLL: log_loss(z, y)}
