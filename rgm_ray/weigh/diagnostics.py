"""What a user needs to trust (or distrust) the weights: held-out calibration and weight-degeneracy numbers.

``calibration.json`` pools the test folds' out-of-fold predictions (each example scored by the model
that never saw it) and reports accuracy / ROC-AUC / ECE / Brier / log-loss *before* (T = 1) and
*after* temperature scaling, per fold and pooled, plus the 10-bin reliability curves and the
temperatures. ``weights_summary.json`` is ``transforms.weight_summary`` of the scored pool: Kish ESS,
ESS/N, the largest normalised weight and ESS under flattening ``w^α``. Plots: ``reliability.png``,
``log_weight_hist.png``, ``ess_vs_alpha.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgm_ray.store.atomic import atomic_write_json
from rgm_ray.viz import save_histogram, save_line_plot
from rgm_ray.weigh.calibration import (DEFAULT_BINS, METRIC_KEYS, TEMPERATURE_BOUNDS, calibration_metrics,
                                       reliability_curve, sigmoid)
from rgm_ray.weigh.transforms import DEFAULT_ALPHAS, KEY_ESS_FRAC, ess_alpha_key, weight_summary

CALIBRATION_JSON = "calibration.json"
WEIGHTS_SUMMARY_JSON = "weights_summary.json"
RELIABILITY_PNG = "reliability.png"
HISTOGRAM_PNG = "log_weight_hist.png"
ESS_ALPHA_PNG = "ess_vs_alpha.png"
BEFORE, AFTER = "before", "after"  # calibration phases: raw logits vs logits / T


def phase_key(metric: str, phase: str) -> str:
    """Logged name of a held-out metric, e.g. ``ece_after``."""
    return f"{metric}_{phase}"


@dataclass(frozen=True)
class HeldOut:
    """One fold model's raw logits on its test fold (labels: True = real) and its temperature."""

    fold: int
    logits: np.ndarray
    labels: np.ndarray
    temperature: float
    best_epoch: int | None  # None: no head was trained (gan-discriminator)
    sizes: dict[str, int]


def calibration_report(held_out: list[HeldOut], *, method: str, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Per-fold and pooled held-out metrics before and after scaling, reliability curves, temperatures."""
    per_fold = []
    for h in held_out:
        per_fold.append({"fold": h.fold, "temperature": h.temperature, "best_epoch": h.best_epoch, **h.sizes,
                         "temperature_at_bound": h.temperature in TEMPERATURE_BOUNDS,
                         BEFORE: calibration_metrics(h.logits, h.labels, bins=bins),
                         AFTER: calibration_metrics(h.logits, h.labels, temperature=h.temperature, bins=bins)})
    raw = np.concatenate([h.logits for h in held_out]).astype(np.float64)
    scaled = np.concatenate([h.logits.astype(np.float64) / h.temperature for h in held_out])
    labels = np.concatenate([h.labels for h in held_out])
    return {"method": method, "bins": bins, "temperatures": [h.temperature for h in held_out],
            "pooled": {BEFORE: calibration_metrics(raw, labels, bins=bins),
                       AFTER: calibration_metrics(scaled, labels, bins=bins)},
            "per_fold": per_fold,
            "reliability": {BEFORE: reliability_curve(sigmoid(raw), labels, bins),
                            AFTER: reliability_curve(sigmoid(scaled), labels, bins)}}


def calibration_metrics_to_log(report: dict[str, Any]) -> dict[str, float]:
    """Flat metric dict for the tracker: pooled ``<metric>_<phase>`` plus ``temperature_fold<k>``."""
    out = {phase_key(m, phase): report["pooled"][phase][m] for phase in (BEFORE, AFTER) for m in METRIC_KEYS}
    out.update({f"temperature_fold{k}": t for k, t in enumerate(report["temperatures"])})
    return out


def _nan_for_none(values: list[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def write_calibration(out: str | Path, report: dict[str, Any]) -> list[Path]:
    """``calibration.json`` and the reliability diagram (observed fraction real per bin, by bin centre)."""
    out = Path(out)
    atomic_write_json(out / CALIBRATION_JSON, report)
    curves = report["reliability"]
    after_label = "after (T=1, no scaling)" if report["method"] == "none" else "after temperature scaling"
    png = save_line_plot(curves[BEFORE]["centre"],
                         {"before (T=1)": _nan_for_none(curves[BEFORE]["fraction_real"]),
                          after_label: _nan_for_none(curves[AFTER]["fraction_real"])},
                         out / RELIABILITY_PNG, xlabel="predicted P(real) (bin centre)",
                         ylabel="observed fraction real", title=f"held-out reliability ({report['bins']} bins)",
                         diagonal=True)
    return [out / CALIBRATION_JSON, png]


def write_weight_diagnostics(out: str | Path, log_weights: np.ndarray, *,
                             alphas: tuple[float, ...] = DEFAULT_ALPHAS) -> tuple[dict[str, Any], list[Path]]:
    """``weights_summary.json``, the log-weight histogram and the ESS/N-vs-α plot; returns the summary."""
    out = Path(out)
    summary = weight_summary(log_weights, alphas)
    atomic_write_json(out / WEIGHTS_SUMMARY_JSON, summary)
    n = summary["n"]
    hist = save_histogram({"generated samples": np.asarray(log_weights, dtype=np.float64)}, out / HISTOGRAM_PNG,
                          xlabel="log-weight (calibrated logit)", title="importance log-weights", log_y=True)
    ess = save_line_plot(list(alphas), {"ESS / N": [summary[ess_alpha_key(a)] / n for a in alphas]},
                         out / ESS_ALPHA_PNG, xlabel="flattening α (weights w^α)", ylabel="ESS / N",
                         title=f"effective sample size (N = {n}; α=1: {summary[KEY_ESS_FRAC]:.3g})", log_y=True)
    return summary, [out / WEIGHTS_SUMMARY_JSON, hist, ess]
