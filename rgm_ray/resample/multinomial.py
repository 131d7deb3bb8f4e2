"""Classic SIR: resampling with replacement, ``counts ~ Multinomial(k, w̃)``.

Single process (``multinomial_resample``): rows are put in sample-id order before drawing, so the
counts depend only on the seed, ``k`` and the *set* of ``(id, ℓ)`` pairs, not on row order or on
how the rows were gathered from shards.

Distributed (``split_counts_across_shards`` then ``multinomial_within_shard`` per shard): first split
k over shards with a multinomial over shard masses ``m_s = Σ_{i∈s} w_i``, then draw ``k_s`` within each
shard ∝ w. Since a multinomial conditioned on its group totals is a product of within-group
multinomials, the union of counts is exactly ``Multinomial(k, w / Σ m_s)`` in distribution. It is *not*
the same draw as ``multinomial_resample`` on the gathered rows (different random streams), and it
depends on the shard layout (which rows form shard ``s`` and its ``shard_key``). The per-shard masses
must come from the same (transformed) log-weights that are then sampled within the shard.
"""

from __future__ import annotations

import numpy as np

from rgm_ray.resample.counter_rng import as_sample_ids, ascending_order, check_draw_count, check_seed
from rgm_ray.seeding import numpy_rng
from rgm_ray.weigh.transforms import self_normalize, validate_log_weights

# Path items naming the random streams under the run seed ("MULT", "SPLT", "SHRD" in ASCII).
SINGLE_STREAM = 0x4D554C54
SPLIT_STREAM = 0x53504C54
WITHIN_SHARD_STREAM = 0x53485244


def _draw_counts(
    lw: np.ndarray, ids: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF multinomial over rows in id order; returns (ids ascending, counts ≥ 1)."""
    order = ascending_order(ids)
    if order is not None:
        lw, ids = lw[order], ids[order]
    w = np.exp(lw - lw.max())  # [n]; an excluded row has 0, so it owns an empty interval of the CDF
    cdf = np.cumsum(w)
    u = rng.random(k)
    u.sort()  # sorted draws give sorted row positions: counting is then a run-length encoding
    u *= cdf[-1]
    pos = np.searchsorted(cdf, u, side="right")  # row i owns [cdf[i-1], cdf[i])
    # u·total can round up to total; give that ~2^-53 sliver to the last row with non-zero weight.
    np.minimum(pos, int(np.flatnonzero(w)[-1]), out=pos)
    starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
    counts = np.diff(np.r_[starts, k])
    return ids[pos[starts]], counts.astype(np.int64)


def multinomial_resample(
    log_weights: object, sample_ids: object, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``k`` samples with replacement ∝ weight: ``(unique ids ascending, counts)``, counts sum to k.

    Exact up to float64 rounding of the cumulative weights (a row whose weight is below ~1e-16 of the
    running total can lose its chance).
    """
    k = check_draw_count(k)
    lw = validate_log_weights(log_weights)
    ids = as_sample_ids(sample_ids, lw.size)
    return _draw_counts(lw, ids, k, numpy_rng(check_seed(seed), SINGLE_STREAM))


def split_counts_across_shards(shard_log_masses: object, k: int, seed: int) -> np.ndarray:
    """Split ``k`` draws over shards: ``Multinomial(k, softmax(shard_log_masses))`` (int64 per shard).

    ``shard_log_masses[s]`` is ``logsumexp`` of shard s's log-weights (``-inf`` for an empty shard);
    the result depends on the order of the shards.
    """
    k = check_draw_count(k)
    p = self_normalize(validate_log_weights(shard_log_masses, name="shard_log_masses"))
    return numpy_rng(check_seed(seed), SPLIT_STREAM).multinomial(k, p).astype(np.int64)


def multinomial_within_shard(
    log_weights: object, sample_ids: object, k_shard: int, seed: int, shard_key: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw this shard's ``k_shard`` samples with replacement ∝ weight: ``(unique ids ascending, counts)``.

    ``shard_key`` (non-negative, unique per shard, e.g. the shard index) names the shard's random
    stream, so a retried shard redraws the same counts.
    """
    k_shard = check_draw_count(k_shard, "k_shard", allow_zero=True)
    if isinstance(shard_key, bool) or not isinstance(shard_key, (int, np.integer)) or shard_key < 0:
        raise ValueError(f"shard_key must be a non-negative integer, got {shard_key!r}")
    lw = validate_log_weights(log_weights, require_support=k_shard > 0)
    ids = as_sample_ids(sample_ids, lw.size)
    if k_shard == 0:
        ascending_order(ids)  # still reject duplicate ids
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    rng = numpy_rng(check_seed(seed), WITHIN_SHARD_STREAM, int(shard_key))
    return _draw_counts(lw, ids, k_shard, rng)
