"""Weighted sampling without replacement by Gumbel top-k, exact and independent of sharding.

Adding i.i.d. Gumbel(0, 1) noise to log-weights and keeping the k largest keys ``ℓ_i + G_i`` draws k
distinct samples by successive sampling ∝ w, in order (Kool et al. 2019). The noise of sample i comes
from a counter-based generator keyed by ``(seed, sample_id_i)``, so every key is fixed by the seed and
the sample alone. Hence the global top-k equals the top-k of the union of per-shard top-k lists, for
any split of the rows and for retried shards: ``merge_top_k(shard_top_k(...) per shard)`` returns
exactly ``gumbel_top_k`` on all rows. Shards may also send fewer than k candidates and stay exact,
re-sending only the shards ``incomplete_shards`` names.

Order: key descending, ties (only possible when ``ℓ`` is so large that the noise is rounded away)
broken by ascending sample id. This is a total order on (key, id), which is what makes merging exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rgm_ray.resample.counter_rng import (
    as_sample_ids,
    ascending_order,
    check_draw_count,
    check_seed,
    standard_gumbel,
    validate_sample_ids,
)
from rgm_ray.seeding import derive_seed
from rgm_ray.weigh.transforms import validate_log_weights

# Path item naming the Gumbel noise stream under the run seed ("GUMB" in ASCII).
GUMBEL_STREAM = 0x47554D42


def _keys_and_ids(log_weights: object, sample_ids: object, seed: int) -> tuple[np.ndarray, np.ndarray]:
    lw = validate_log_weights(log_weights, require_support=False)
    ids = validate_sample_ids(sample_ids, lw.size)
    return standard_gumbel(derive_seed(check_seed(seed), GUMBEL_STREAM), ids, loc=lw), ids


def gumbel_keys(log_weights: object, sample_ids: object, seed: int) -> np.ndarray:
    """Keys ``ℓ_i + G_i`` (float64) with ``G_i`` a function of ``(seed, sample_id_i)`` only.

    A ``-inf`` log-weight gives a ``-inf`` key: that sample is never selected.
    """
    return _keys_and_ids(log_weights, sample_ids, seed)[0]


def _top_k_positions(keys: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k greatest (key, −id) pairs, best first; assumes 0 ≤ k ≤ len(keys)."""
    n = keys.size
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        kth = np.partition(keys, n - k)[n - k]  # the k-th largest key (faster than argpartition)
        chosen = np.flatnonzero(keys >= kth)
        if chosen.size > k:  # a tie straddles the cut: admit the smallest ids
            above = chosen[keys[chosen] > kth]
            tied = chosen[keys[chosen] == kth]
            tied = tied[np.argsort(ids[tied], kind="stable")[: k - above.size]]
            chosen = np.concatenate([above, tied])
    else:
        chosen = np.arange(n)
    chosen_keys = keys[chosen]
    order = np.argsort(-chosen_keys)
    ranked = chosen_keys[order]
    if np.any(ranked[1:] == ranked[:-1]):
        order = np.lexsort((ids[chosen], -chosen_keys))
    return chosen[order]


def _n_support(keys: np.ndarray) -> int:
    return int(np.count_nonzero(keys > -np.inf))


def gumbel_top_k(log_weights: object, sample_ids: object, k: int, seed: int) -> np.ndarray:
    """Sample ``k`` distinct ids ∝ weight (without replacement), returned in selection order."""
    k = check_draw_count(k)
    keys, ids = _keys_and_ids(log_weights, sample_ids, seed)
    if k > keys.size:
        raise ValueError(f"k={k} exceeds the number of samples ({keys.size})")
    n_support = _n_support(keys)
    if k > n_support:
        raise ValueError(f"k={k} exceeds the {n_support} samples with non-zero weight")
    return ids[_top_k_positions(keys, ids, k)]


def shard_top_k(log_weights: object, sample_ids: object, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard's candidates for a global top-k: its best ``min(k, non-zero weights)`` ``(ids, keys)``.

    Empty and fully excluded shards are fine and give empty lists.
    """
    k = check_draw_count(k)
    keys, ids = _keys_and_ids(log_weights, sample_ids, seed)
    positions = _top_k_positions(keys, ids, min(k, _n_support(keys)))
    return ids[positions], keys[positions]


def _concat_candidates(candidates: Sequence[tuple[object, object]]) -> tuple[np.ndarray, np.ndarray]:
    if len(candidates) == 0:
        raise ValueError("merging top-k candidates needs at least one shard's list")
    id_parts, key_parts = [], []
    for shard, (shard_ids, shard_keys) in enumerate(candidates):
        shard_keys = np.asarray(shard_keys, dtype=np.float64)
        if shard_keys.ndim != 1 or np.isnan(shard_keys).any():
            raise ValueError(f"shard {shard}: keys must be a 1-D array without NaN")
        id_parts.append(as_sample_ids(shard_ids, shard_keys.size, name=f"shard {shard} ids"))
        key_parts.append(shard_keys)
    ids, keys = np.concatenate(id_parts), np.concatenate(key_parts)
    ascending_order(ids)  # an id in two shards would be counted twice
    return ids, keys


def merge_top_k(candidates: Sequence[tuple[object, object]], k: int) -> np.ndarray:
    """Exact global top-k ids (selection order) from per-shard ``(ids, keys)`` candidate lists.

    Exact when every shard sent ``shard_top_k(..., k, ...)``; with smaller per-shard requests, check
    ``incomplete_shards`` first.
    """
    k = check_draw_count(k)
    ids, keys = _concat_candidates(candidates)
    n_support = _n_support(keys)
    if k > n_support:
        raise ValueError(f"k={k} exceeds the {n_support} candidates with non-zero weight across shards")
    return ids[_top_k_positions(keys, ids, k)]


def incomplete_shards(candidates: Sequence[tuple[object, object]], requested: Sequence[int], k: int) -> list[int]:
    """Shards whose capped candidate list may hide members of the global top-k.

    Asking every shard for k candidates moves up to k rows per shard (all of a shard smaller than k).
    Asking for fewer, e.g. ``2·k·m_s/M + 64`` with ``m_s`` the shard's weight mass, moves far less, and
    stays exact with one check: a shard that returned its full request ranks all its unsent rows below
    its last sent one, so it can only hide top-k rows if that last row ranks above the k-th of the
    merge. Re-query the shards returned here with ``k`` and merge again.
    """
    k = check_draw_count(k)
    if len(requested) != len(candidates):
        raise ValueError(f"got {len(requested)} request sizes for {len(candidates)} shards")
    requested = [check_draw_count(n, f"requested[{s}]") for s, n in enumerate(requested)]
    ids, keys = _concat_candidates(candidates)
    sizes = [np.size(shard_ids) for shard_ids, _ in candidates]
    last = np.cumsum(sizes) - 1  # position of each shard's last (lowest-ranked) candidate
    truncated = [s for s, (size, n) in enumerate(zip(sizes, requested)) if size >= n]
    if _n_support(keys) < k:
        return truncated
    kth = _top_k_positions(keys, ids, k)[-1]

    def ranks_above_kth(i: int) -> bool:
        return bool(keys[i] > keys[kth] or (keys[i] == keys[kth] and ids[i] < ids[kth]))

    return [s for s in truncated if ranks_above_kth(last[s])]
