"""Likelihood-free importance weights (stage weigh): a calibrated, cross-fitted real-vs-generated classifier.

Public API: :func:`weigh` (the whole stage), :func:`score_sample_set` (Ray Data scoring with a fitted
weigher), the pure calibration metrics and :func:`fit_temperature`, the cross-fitting plan, and the
log-weight transforms in :mod:`rgm_ray.weigh.transforms`.

Names resolve lazily (PEP 562): later stages import ``rgm_ray.weigh.transforms`` on torch-free Ray
workers, and importing the package must not drag torch and the models in with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "backbones": ("BACKBONES", "BackboneSpec", "build_backbone"),
    "calibration": ("accuracy", "brier_score", "calibration_metrics", "expected_calibration_error",
                    "fit_temperature", "log_loss", "reliability_curve", "roc_auc"),
    "classifier": ("HeadConfig",),
    "crossfit": ("CrossFitPlan", "FoldSplit", "assign_folds", "plan_crossfit"),
    "scoring": ("LogWeightScorer", "Scores", "ScoringOptions", "score_sample_set"),
    "stage": ("WeighConfig", "WeighResult", "WeighSpec", "is_complete", "weigh"),
    "weigher": ("LogWeightModel", "load_weigher", "read_crossfit"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
