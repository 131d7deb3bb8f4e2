"""The resample summary: flat JSON facts of a selection, stored in the output manifest and logged.

Its keys are module constants, reused as MLflow metric names. Every method records the transform
(α, where it came from, the target ESS it was chosen for), ESS and largest share before/after, and
``ess_alpha_one`` (the clipped weights' ESS at α = 1) with a ``warning`` when that is below k.
Method facts: ``rejection`` adds the bound (``rejection_bound``, ``rejection_quantile``,
``rejection_gamma``, ``rejection_log_bound``, ``rejection_exact``, ``rejection_capped``) and
``accepted``, ``acceptance_rate``, ``expected_acceptance_rate``, ``proposals_per_accepted``,
``proposals``; ``mh`` adds ``mh_burn_in``, ``mh_chain_length``, ``accepted`` (moves taken),
``acceptance_rate``, ``proposals``, ``distinct_states``. ``draws`` is the output's size with copies.
"""

from __future__ import annotations

from typing import Any

from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.selection_parts import Selection
from rgm_ray.store import SampleSet

KEY_METHOD = "method"
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
KEY_TARGET_ESS_USED = "target_ess_used"
KEY_ESS_ALPHA_ONE = "ess_alpha_one"
KEY_WARNING = "warning"
KEY_UNIQUE = "unique"
KEY_DRAWS = "draws"
KEY_MAX_COPIES = "max_copies"
KEY_PASSES = "passes"
KEY_CANDIDATES = "candidates"
KEY_REQUERIED = "requeried_shards"
KEY_SELECTION_SECONDS = "selection_seconds"
KEY_WALL_SECONDS = "wall_seconds"
# method facts (``Selection.facts``)
KEY_ACCEPTED = "accepted"
KEY_ACCEPTANCE_RATE = "acceptance_rate"
KEY_EXPECTED_ACCEPTANCE_RATE = "expected_acceptance_rate"
KEY_PROPOSALS_PER_ACCEPTED = "proposals_per_accepted"
KEY_PROPOSALS = "proposals"
KEY_REJECTION_BOUND = "rejection_bound"  # "max" | "quantile"
KEY_REJECTION_LOG_BOUND = "rejection_log_bound"
KEY_REJECTION_EXACT = "rejection_exact"
KEY_REJECTION_CAPPED = "rejection_capped"
KEY_DISTINCT_STATES = "distinct_states"
KEY_MH_BURN_IN = "mh_burn_in"
KEY_MH_CHAIN_LENGTH = "mh_chain_length"
SUMMARY_ARTIFACT = "resample_summary.json"


def ess_at_alpha_one(selection: Selection) -> float | None:
    """ESS of the clipped weights at α = 1, when known without another pass (not known only when α < 1
    was given together with a clip)."""
    t = selection.transform
    if selection.choice.at_one is not None:
        return selection.choice.at_one.ess
    if t.alpha == 1.0:
        return selection.transformed.ess
    return None if t.clips else selection.raw.ess


def low_ess_warning(k: int, ess_one: float | None, alpha: float, ess_after: float, max_share: float) -> str | None:
    """The line the CLI and the report show when α = 1 would give ESS < k, else None."""
    if ess_one is None or ess_one >= k:
        return None
    if alpha < 1.0:
        return f"alpha=1 would give ESS {ess_one:.3g} < k={k}; drew with alpha={alpha:.3g} (ESS {ess_after:.3g})"
    return (f"ESS {ess_one:.3g} < k={k} at alpha=1: the heaviest sample holds {max_share:.2g} of the weight, "
            "so few samples dominate; flatten with --alpha < 1 or --target-ess")


def summarize(samples: SampleSet, config: ResampleConfig, selection: Selection) -> dict[str, Any]:
    """Flat JSON facts of a selection (``max_share_*``: the heaviest row's share of all the weight
    before / after the transforms, i.e. its chance of being the draw when k = 1)."""
    n = len(samples)
    t = selection.transform
    copies = selection.copies
    ess_one = ess_at_alpha_one(selection)
    target = selection.choice.target_ess
    return {
        "samples": str(samples.path), KEY_METHOD: config.method, KEY_N: n,
        KEY_N_SUPPORT: selection.transformed.n_support, KEY_K: config.k, "seed": config.seed,
        "replacement": config.replacement,
        KEY_ALPHA: t.alpha, KEY_ALPHA_SOURCE: selection.alpha_source, "target_ess": config.target_ess,
        KEY_TARGET_ESS_USED: target, "target_ess_tol": config.target_ess_tol if target is not None else None,
        "clip_max": config.clip_max, "clip_quantile": config.clip_quantile, "clip_min": config.clip_min,
        KEY_LOG_CAP: t.log_cap,
        KEY_ESS_BEFORE: selection.raw.ess, KEY_ESS_AFTER: selection.transformed.ess,
        KEY_ESS_FRAC_BEFORE: selection.raw.ess / n, KEY_ESS_FRAC_AFTER: selection.transformed.ess / n,
        KEY_MAX_SHARE_BEFORE: selection.raw.max_share, KEY_MAX_SHARE_AFTER: selection.transformed.max_share,
        KEY_ESS_ALPHA_ONE: ess_one,
        KEY_WARNING: low_ess_warning(config.k, ess_one, t.alpha, selection.transformed.ess,
                                     selection.transformed.max_share),
        KEY_UNIQUE: int(selection.ids.size),
        KEY_DRAWS: int(copies.sum()) if copies is not None else int(selection.ids.size),
        KEY_MAX_COPIES: int(copies.max()) if copies is not None else 1,
        "shards": len(samples.shard_paths), KEY_PASSES: selection.passes, KEY_CANDIDATES: selection.candidates,
        KEY_REQUERIED: selection.requeried, **selection.facts,
    }


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def describe(out: str, s: dict[str, Any]) -> str:
    """The one-line result message of a summary (``ResampleResult.message``), warning included."""
    method = s.get(KEY_METHOD, "sir")
    if method == "rejection":
        first_k = " (the first k in proposal order)" if s[KEY_ACCEPTED] > s[KEY_K] else ""
        bound = "exact bound" if s[KEY_REJECTION_EXACT] else f"bound below {s[KEY_REJECTION_CAPPED]} weights"
        what = (f"rejection: {s[KEY_UNIQUE]} rows of {s[KEY_ACCEPTED]} accepted among {s[KEY_N]}{first_k}, "
                f"acceptance {_rate(s[KEY_ACCEPTANCE_RATE])} ({s[KEY_PROPOSALS_PER_ACCEPTED]:.3g} proposals per "
                f"accepted, {bound})")
    elif method == "mh":
        what = (f"mh: {s[KEY_DISTINCT_STATES]} distinct states in {s[KEY_K]} kept of a {s[KEY_MH_CHAIN_LENGTH]}-step "
                f"chain (burn-in {s[KEY_MH_BURN_IN]}), acceptance {_rate(s[KEY_ACCEPTANCE_RATE])}")
    else:
        how = "with" if s["replacement"] else "without"
        what = f"{s[KEY_UNIQUE]} distinct of {s[KEY_N]} rows, k={s[KEY_K]} {how} replacement"
    line = (f"{out}: {what}, alpha={s[KEY_ALPHA]:.4g} ({s[KEY_ALPHA_SOURCE]}), ESS {s[KEY_ESS_BEFORE]:.1f} -> "
            f"{s[KEY_ESS_AFTER]:.1f}, largest share {s[KEY_MAX_SHARE_AFTER]:.3g}, {s[KEY_WALL_SECONDS]:.1f} s")
    return f"{line}\nWARNING: {s[KEY_WARNING]}" if s.get(KEY_WARNING) else line
