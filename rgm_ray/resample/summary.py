"""The resample summary: flat JSON facts of a selection, stored in the output manifest and logged.

Its keys are module constants, reused as MLflow metric names.
"""

from __future__ import annotations

from typing import Any

from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.selection import Selection
from rgm_ray.store import SampleSet

KEY_N = "n"
KEY_N_SUPPORT = "n_support"
KEY_K = "k"
KEY_ALPHA = "alpha"
KEY_ALPHA_SOURCE = "alpha_source"
KEY_LOG_CAP = "log_clip_max"
KEY_ESS_BEFORE = "ess_before"
KEY_ESS_AFTER = "ess_after"
KEY_ESS_FRAC_BEFORE = "ess_frac_before"
KEY_ESS_FRAC_AFTER = "ess_frac_after"
KEY_MAX_SHARE_BEFORE = "max_share_before"
KEY_MAX_SHARE_AFTER = "max_share_after"
KEY_UNIQUE = "unique"
KEY_MAX_COPIES = "max_copies"
KEY_PASSES = "passes"
KEY_CANDIDATES = "candidates"
KEY_REQUERIED = "requeried_shards"
KEY_SELECTION_SECONDS = "selection_seconds"
KEY_WALL_SECONDS = "wall_seconds"
SUMMARY_ARTIFACT = "resample_summary.json"


def summarize(samples: SampleSet, config: ResampleConfig, selection: Selection) -> dict[str, Any]:
    """Flat JSON facts of a selection (``max_share_*``: the heaviest row's share of all the weight
    before / after the transforms, i.e. its chance of being the draw when k = 1)."""
    n = len(samples)
    t = selection.transform
    copies = selection.copies
    return {
        "samples": str(samples.path), KEY_N: n, KEY_N_SUPPORT: selection.transformed.n_support, KEY_K: config.k,
        "seed": config.seed, "replacement": config.replacement,
        KEY_ALPHA: t.alpha, KEY_ALPHA_SOURCE: selection.alpha_source, "target_ess": config.target_ess,
        "target_ess_tol": config.target_ess_tol if config.target_ess is not None else None,
        "clip_max": config.clip_max, "clip_quantile": config.clip_quantile, "clip_min": config.clip_min,
        KEY_LOG_CAP: t.log_cap,
        KEY_ESS_BEFORE: selection.raw.ess, KEY_ESS_AFTER: selection.transformed.ess,
        KEY_ESS_FRAC_BEFORE: selection.raw.ess / n, KEY_ESS_FRAC_AFTER: selection.transformed.ess / n,
        KEY_MAX_SHARE_BEFORE: selection.raw.max_share, KEY_MAX_SHARE_AFTER: selection.transformed.max_share,
        KEY_UNIQUE: int(selection.ids.size), KEY_MAX_COPIES: int(copies.max()) if copies is not None else 1,
        "shards": len(samples.shard_paths), KEY_PASSES: selection.passes, KEY_CANDIDATES: selection.candidates,
        KEY_REQUERIED: selection.requeried,
    }
