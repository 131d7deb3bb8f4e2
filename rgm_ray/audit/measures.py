"""The audit's three sections for one row (a sample set or the real reference), as JSON-able dicts.

Inputs are in-memory arrays (labels, distances, features), so every number here is testable without
files; :mod:`rgm_ray.audit.stage` supplies them and the seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from rgm_ray.audit.diversity import birthday_test, density_coverage, duplicate_rate
from rgm_ray.audit.neighbours import near_copy_fraction
from rgm_ray.audit.stats import (KL_PSEUDO_COUNT, bootstrap_ci, class_histogram, kl_distance, smoothed_histogram,
                                 tv_distance)
from rgm_ray.evaluate.metrics import PRC_NEIGHBORHOOD

SUMMARY_QUANTILES = (0.01, 0.05, 0.25, 0.5)


def class_balance(labels: np.ndarray, reference: np.ndarray, num_classes: int, *, reps: int,
                  seed: int) -> dict[str, Any]:
    """Predicted-class histogram of ``labels``; TV and KL(labels || reference) with bootstrap intervals
    (both label arrays resampled)."""
    def tv(a: np.ndarray, b: np.ndarray) -> float:
        return tv_distance(class_histogram(a, num_classes), class_histogram(b, num_classes))

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        return kl_distance(smoothed_histogram(a, num_classes), smoothed_histogram(b, num_classes))

    return {"histogram": class_histogram(labels, num_classes).tolist(),
            "tv": tv(labels, reference), "tv_ci": list(bootstrap_ci(tv, labels, reference, seed=seed, reps=reps)),
            "kl": kl(labels, reference), "kl_ci": list(bootstrap_ci(kl, labels, reference, seed=seed + 1, reps=reps)),
            "kl_pseudo_count": KL_PSEUDO_COUNT}


def distance_summary(distances: np.ndarray) -> dict[str, float]:
    """min, a few low quantiles, median and mean of nearest-neighbour distances."""
    out = {"min": float(distances.min()), "mean": float(distances.mean())}
    out.update({f"q{round(q * 100):02d}": float(np.quantile(distances, q)) for q in SUMMARY_QUANTILES})
    return out


def memorisation(distances: np.ndarray, threshold: float, *, reps: int, seed: int) -> dict[str, Any]:
    """Near-copy fraction (nearest-train distance <= ``threshold``) with a bootstrap interval, and the
    distance distribution."""
    frac = lambda d: near_copy_fraction(d, threshold)  # noqa: E731
    return {"near_copy_fraction": frac(distances),
            "near_copy_ci": list(bootstrap_ci(frac, distances, seed=seed, reps=reps)),
            "nn_distance": distance_summary(distances)}


def near_copy_change(distances: np.ndarray, baseline: np.ndarray, threshold: float, *, reps: int,
                     seed: int) -> dict[str, Any]:
    """How much higher a set's near-copy fraction is than the baseline's; ``raised`` when the whole
    bootstrap interval of the difference is above 0."""
    def delta(a: np.ndarray, b: np.ndarray) -> float:
        return near_copy_fraction(a, threshold) - near_copy_fraction(b, threshold)

    lo, hi = bootstrap_ci(delta, distances, baseline, seed=seed, reps=reps)
    return {"delta": delta(distances, baseline), "ci": [lo, hi], "raised": lo > 0}


def diversity(features: torch.Tensor, threshold: float, real: torch.Tensor, fake: torch.Tensor, *, batch_size: int,
              batches: int, density_k: int, seed: int) -> dict[str, Any]:
    """Duplicates and the birthday test on ``features``; density/coverage and torch-fidelity's
    precision/recall of ``fake`` against ``real`` (the set itself, except for the reference row)."""
    density, coverage = density_coverage(real, fake, density_k)
    prc = prc_features_to_metric(fake, real, prc_neighborhood=PRC_NEIGHBORHOOD, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    return {"duplicate_rate": duplicate_rate(features, threshold),
            "birthday": birthday_test(features, threshold, batch_size, batches, seed=seed).to_json(),
            "density": density, "coverage": coverage,
            "precision": float(prc[KEY_METRIC_PRECISION]), "recall": float(prc[KEY_METRIC_RECALL])}


def row_summary(row: dict[str, Any]) -> dict[str, float]:
    """The row's headline numbers, flat (MLflow metrics, the table, ``AuditResult.rows``)."""
    balance, memo, div = row["class_balance"], row["memorisation"], row["diversity"]
    out = {"class_tv": balance["tv"], "class_kl": balance["kl"],
           "near_copy_pixel": memo["pixel"]["near_copy_fraction"],
           "near_copy_feature": memo["feature"]["near_copy_fraction"],
           "duplicate_rate": div["duplicate_rate"], "birthday_dup_prob": div["birthday"]["dup_prob"],
           "density": div["density"], "coverage": div["coverage"], "precision": div["precision"],
           "recall": div["recall"]}
    if div["birthday"]["support"] is not None:
        out["birthday_support"] = div["birthday"]["support"]
    return out
