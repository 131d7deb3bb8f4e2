"""Importance-weight transforms and diagnostics, all on log-weights ``ℓ = log w``.

The classifier's logit is the log-weight (Grover et al. 2019), so everything here stays on the log scale:
raw weights overflow float64 long before logits do, and the thesis's VAE logits already spanned
-24.7 … 6.6. ``-inf`` is a legal log-weight that means "weight exactly 0": the sample is excluded
(out of the *support*) and no transform here brings it back.

Why the diagnostics matter: with α = 1 those VAE weights had a Kish effective sample size of ~11.5
out of 100K, so resampling would have returned copies of a handful of images. Flattening (w^α) and
clipping trade bias for ESS; ``alpha_for_target_ess`` picks α from an ESS budget.

This is the one home of log-weight maths for every stage (weigh, resample, evaluate). The resample
stage merges per-shard sums, so the formulas on max-shifted sums (``shifted_exp_sums``,
``log_mass_of_sums``, ``ess_of_sums``, ``max_share_of_sums``) and the clipping kernel
(``clip_log_weights``) are public for it. Nothing here imports torch: it runs on torch-free Ray workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real

import numpy as np

DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

# Keys of ``weight_summary``: reused as the names reports and trackers log.
KEY_N = "n"
KEY_N_SUPPORT = "n_support"
KEY_ESS = "ess"
KEY_ESS_FRAC = "ess_frac"
KEY_MAX_SHARE = "max_share"
KEY_LOG_WEIGHT_MIN = "log_weight_min"
KEY_LOG_WEIGHT_MAX = "log_weight_max"
KEY_LOG_WEIGHT_MEAN = "log_weight_mean"


def ess_alpha_key(alpha: float) -> str:
    """Summary key for the ESS of ``w^alpha``, e.g. ``ess_alpha_0.25`` (a valid MLflow metric name)."""
    return f"ess_alpha_{float(alpha):g}"


def _first_index(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_log_weights(lw: object, *, name: str = "log_weight", require_support: bool = True) -> np.ndarray:
    """Return ``lw`` as a 1-D float64 array, rejecting NaN and +inf.

    With ``require_support`` (the default) the array must also hold at least one finite value; turn it
    off for per-shard inputs, where an empty or fully excluded shard is legitimate. The result may share
    memory with the input: callers must not modify it in place.
    """
    arr = np.asarray(lw)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size == 0:
        if require_support:
            raise ValueError(f"{name} is empty")
        return arr
    top = arr.max()  # one pass: NaN propagates through max, +inf would be the max
    if np.isnan(top):
        nan = np.isnan(arr)
        raise ValueError(
            f"{name} contains {int(nan.sum())} NaN value(s), first at index {_first_index(nan)}; "
            "a NaN log-weight usually means the classifier diverged"
        )
    if top == np.inf:
        posinf = arr == np.inf
        raise ValueError(
            f"{name} contains {int(posinf.sum())} +inf value(s), first at index {_first_index(posinf)}; "
            "an infinite weight would take all the mass"
        )
    if require_support and top == -np.inf:
        raise ValueError(f"{name} is -inf everywhere: every weight is 0, there is nothing to normalise")
    return arr


def _validate_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


# --- formulas on max-shifted sums: m = max ℓ, s1 = Σ e^{ℓ-m}, s2 = Σ e^{2(ℓ-m)} ---------


def shifted_exp_sums(shifted: np.ndarray) -> tuple[float, float]:
    """``(s1, s2) = (Σ e^x, Σ e^{2x})`` of max-shifted log-weights ``x = ℓ − m ≤ 0``.

    Both lie in [1, n] when the maximum is among the rows, so nothing overflows for any finite logits.
    """
    d = np.exp(shifted)  # [n] in [0, 1]; exactly 1 at the maximum
    s1 = float(d.sum())
    d *= d  # not np.dot: BLAS may spin up threads, costly on a busy 2-core worker
    return s1, float(d.sum())


def log_mass_of_sums(m: float, s1: float) -> float:
    """``logsumexp ℓ = m + log s1``."""
    return m + math.log(s1)


def ess_of_sums(s1: float, s2: float, n_support: int) -> float:
    """Kish ESS ``(Σw)²/Σw² = s1²/s2`` (the shift cancels), kept within [1, n_support] against rounding."""
    return min(max(s1 * s1 / s2, 1.0), float(n_support))


def max_share_of_sums(s1: float) -> float:
    """Largest normalised weight ``max w̃ = e^{m-m}/s1 = 1/s1``."""
    return 1.0 / s1


def _shifted_sums(lw: np.ndarray) -> tuple[float, float, float]:
    """``(m, s1, s2)`` of validated log-weights with some support."""
    m = float(lw.max())
    return (m, *shifted_exp_sums(lw - m))


# --- normalisation, ESS and transforms of log-weight arrays ---------------------------------


def log_total_weight(lw: object) -> float:
    """``log Σ w = logsumexp ℓ``; ``-inf`` for an empty or fully excluded array (e.g. a shard's log-mass)."""
    arr = validate_log_weights(lw, require_support=False)
    if arr.size == 0 or arr.max() == -np.inf:
        return -math.inf
    m, s1, _ = _shifted_sums(arr)
    return log_mass_of_sums(m, s1)


def _n_support(arr: np.ndarray) -> int:
    return int(np.count_nonzero(arr > -np.inf))


def _ess(arr: np.ndarray) -> float:
    _, s1, s2 = _shifted_sums(arr)
    return ess_of_sums(s1, s2, _n_support(arr))


def _flatten(arr: np.ndarray, alpha: float) -> np.ndarray:
    if alpha == 0.0:
        return np.where(arr > -np.inf, 0.0, -np.inf)
    return arr * alpha


def self_normalize(lw: object) -> np.ndarray:
    """Normalised weights ``w̃_i = exp(ℓ_i − logsumexp ℓ)``, summing to 1."""
    arr = validate_log_weights(lw)
    m, s1, _ = _shifted_sums(arr)
    return np.exp(arr - log_mass_of_sums(m, s1))


def effective_sample_size(lw: object) -> float:
    """Kish ESS ``(Σw)² / Σw²``, between 1 and the number of non-zero weights.

    Computed from max-shifted sums, which are bounded by n, so it is finite for any finite logits.
    """
    return _ess(validate_log_weights(lw))


def max_normalized_weight(lw: object) -> float:
    """Largest normalised weight ``max w̃``: the share of the mass held by the heaviest sample."""
    arr = validate_log_weights(lw)
    _, s1, _ = _shifted_sums(arr)
    return max_share_of_sums(s1)


def flatten(lw: object, alpha: float) -> np.ndarray:
    """Flattened log-weights ``α·ℓ`` (weights ``w^α``), α ∈ [0, 1].

    α = 0 gives weight 1 to every sample in the support and keeps ``-inf`` (weight 0) at ``-inf``,
    although ``0^0`` would conventionally be 1. Reasons: for every α > 0, ``0^α = 0``, so this is the
    limit α → 0⁺ and ESS stays continuous and non-increasing in α (which ``alpha_for_target_ess``
    relies on); and ``-inf`` marks a sample that was deliberately excluded, which tempering must not
    re-admit.
    """
    return _flatten(validate_log_weights(lw), _validate_alpha(alpha))


def clip(
    lw: object,
    *,
    max_value: float | None = None,
    quantile: float | None = None,
    floor: float | None = None,
) -> np.ndarray:
    """Clip weights from above and/or below; limits are given on the weight scale, applied to logs.

    - ``max_value``: cap ``w ≤ max_value``.
    - ``quantile``: cap at this quantile of the finite log-weights (a scale-free cap).
    - ``floor``: LFIW's ``max(w, β)`` with ``β = floor``. It guards against an over-confident
      classifier and applies to the support only: excluded samples (``-inf``) stay excluded.

    At most one of ``max_value`` / ``quantile``; with no argument the weights are returned unchanged,
    so a config can switch clipping off by leaving all three unset.
    """
    arr = validate_log_weights(lw)
    if max_value is not None and quantile is not None:
        raise ValueError("give at most one of max_value and quantile")
    upper = math.inf
    if max_value is not None:
        if not _positive_finite(max_value):
            raise ValueError(f"max_value must be a positive finite weight, got {max_value!r}")
        upper = math.log(max_value)
    if quantile is not None:
        if isinstance(quantile, bool) or not isinstance(quantile, Real) or not 0.0 < float(quantile) <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
        upper = float(np.quantile(arr[arr > -np.inf], float(quantile)))
    lower = -math.inf
    if floor is not None:
        if not _positive_finite(floor):
            raise ValueError(f"floor must be a positive finite weight, got {floor!r}")
        lower = math.log(floor)
    if lower > upper:
        raise ValueError(f"floor (log {lower:.4g}) is above the upper clip (log {upper:.4g})")
    # upper is a float (inf when unset), so the result is always a copy, never the caller's array.
    return clip_log_weights(arr, upper, lower if floor is not None else None)


def clip_log_weights(lw: np.ndarray, log_max: float | None = None, log_min: float | None = None) -> np.ndarray:
    """``min(ℓ, log_max)``, then ``max(ℓ, log_min)`` on the support only (``-inf`` stays excluded).

    The kernel of ``clip`` with the limits as logs, on validated float64 log-weights (``lw`` itself
    when both limits are None): the resample stage holds a quantile cap found over all shards as a
    log and applies it without an exp/log round trip.
    """
    out = lw if log_max is None else np.minimum(lw, log_max)
    if log_min is not None:
        out = np.where(out > -np.inf, np.maximum(out, log_min), -np.inf)
    return out


def _positive_finite(x: object) -> bool:
    return not isinstance(x, bool) and isinstance(x, Real) and math.isfinite(x) and x > 0


def ess_curve(lw: object, alphas: Iterable[float] = DEFAULT_ALPHAS) -> dict[float, float]:
    """ESS of ``w^α`` for each α: the bias/variance menu a user picks α from."""
    arr = validate_log_weights(lw)
    return {a: _ess(_flatten(arr, a)) for a in map(_validate_alpha, alphas)}


def alpha_for_target_ess(lw: object, target_ess: float, *, tol: float = 1e-4) -> float:
    """Largest α ∈ [0, 1] (to within ``tol``) with ``ESS(w^α) ≥ target_ess``.

    ESS(α) is non-increasing on α ≥ 0: with ``A(t) = logsumexp(t·ℓ)`` (convex), ``log ESS = 2A(α) − A(2α)``
    has derivative ``2(A'(α) − A'(2α)) ≤ 0``. Bisection nevertheless only trusts evaluated points
    (the lower end always satisfies the target, the upper end never does), so rounding noise cannot make
    it return an α that misses the target. ESS(0) is the support size exactly (see ``flatten``).
    """
    arr = validate_log_weights(lw)
    if isinstance(target_ess, bool) or not isinstance(target_ess, Real) or not target_ess > 0:
        raise ValueError(f"target_ess must be a positive number, got {target_ess!r}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    n_support = _n_support(arr)
    if target_ess > n_support:
        raise ValueError(f"target_ess={target_ess} exceeds the {n_support} samples with non-zero weight")
    if _ess(arr) >= target_ess:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _ess(arr * mid) >= target_ess:
            lo = mid
        else:
            hi = mid
    return lo


def weight_summary(lw: object, alphas: Iterable[float] = DEFAULT_ALPHAS) -> dict[str, float | int]:
    """Flat, JSON-able diagnostics for reports: sizes, ESS (also per α), heaviest share, logit range.

    ``ess_frac`` is ESS over all ``n`` samples (excluded ones included), i.e. the usable fraction of the pool.
    """
    arr = validate_log_weights(lw)
    finite = arr[arr > -np.inf]
    ess = _ess(arr)
    summary: dict[str, float | int] = {
        KEY_N: int(arr.size),
        KEY_N_SUPPORT: int(finite.size),
        KEY_ESS: ess,
        KEY_ESS_FRAC: ess / arr.size,
        KEY_MAX_SHARE: max_normalized_weight(arr),
        KEY_LOG_WEIGHT_MIN: float(finite.min()),
        KEY_LOG_WEIGHT_MAX: float(finite.max()),
        KEY_LOG_WEIGHT_MEAN: float(finite.mean()),
    }
    for alpha, value in ess_curve(arr, alphas).items():
        summary[ess_alpha_key(alpha)] = value
    return summary
