"""The exact Gumbel top-k of a sharded set, from a few candidates per shard.

Keys depend only on (seed, sample_id, ℓ), so a shard may drop every row whose key is below a
*threshold* the driver already knows to be beaten (the k-th best key seen so far), and may send only
its best few (a capped *request*, ``shard_requests``), to be asked again only if its unsent rows
could still win. ``shard_candidates`` is a shard's side; ``TopKMerger`` keeps the threshold, finds
the shards to re-query, and returns exactly ``gumbel_top_k`` of all rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rgm_ray.resample.counter_rng import check_draw_count
from rgm_ray.resample.gumbel import gumbel_keys, merge_top_k
from rgm_ray.resample.log_sums import LogSums, read_transformed
from rgm_ray.resample.weight_transform import WeightTransform

REQUEST_FACTOR = 2.0  # candidates asked of a shard, relative to its share of k ...
REQUEST_SLACK = 64  # ... plus this many


def shard_requests(rows: list[int], k: int) -> list[int]:
    """How many candidates to ask each shard for: twice its share of k by row count, plus slack.

    Far fewer than k per shard (1e8 rows in 1000 shards, k = 1e6: ~2,000 instead of 100,000), and
    enough that, unless the heavy weights cluster in a few shards, no shard has to be asked again.
    """
    total = sum(rows)
    return [min(k, math.ceil(REQUEST_FACTOR * k * r / total) + REQUEST_SLACK) for r in rows]


def top_k_superset(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of every key ≥ the k-th largest: the top k plus any ties at the cut (never −inf)."""
    finite = keys > -np.inf
    if np.count_nonzero(finite) <= k:
        return np.flatnonzero(finite)
    kth = np.partition(keys, keys.size - k)[keys.size - k]
    return np.flatnonzero(keys >= kth)


@dataclass(frozen=True)
class ShardCandidates:
    """What one shard sends for the global top-k: candidate ids/keys, the key below which it held
    back rows (``cut``; −inf when it sent every eligible row), and its weight sums."""

    ids: np.ndarray
    keys: np.ndarray
    cut: float
    raw: LogSums
    transformed: LogSums


def shard_candidates(path: str | Path, transform: WeightTransform, request: int, seed: int,
                     threshold: float = -math.inf, below: float = math.inf) -> ShardCandidates:
    """This shard's best ``request`` rows (plus ties at its cut) among those with
    ``threshold ≤ key < below``.

    ``threshold`` is a key the final k-th best is known to reach, so rows under it cannot win;
    ``below`` is the cut of an earlier, capped request, so a re-query sends only rows not sent yet.
    """
    ids, lw_t, raw, transformed = read_transformed(path, transform)
    return ShardCandidates(*capped_candidates(ids, gumbel_keys(lw_t, ids, seed), request, threshold, below),
                           raw, transformed)


def capped_candidates(ids: np.ndarray, keys: np.ndarray, request: int, threshold: float = -math.inf,
                      below: float = math.inf) -> tuple[np.ndarray, np.ndarray, float]:
    """``(ids, keys, cut)`` of the best ``request`` rows (plus ties) with ``threshold ≤ key < below``,
    for any keys a ``TopKMerger`` merges (``cut``: see ``ShardCandidates``; −inf keys are never sent)."""
    if threshold > -math.inf or below < math.inf:
        eligible = np.flatnonzero((keys >= threshold) & (keys < below))
        ids, keys = ids[eligible], keys[eligible]
    best = top_k_superset(keys, request)
    held_back = best.size < np.count_nonzero(keys > -np.inf)
    cut = float(keys[best].min()) if held_back else -math.inf
    return ids[best], keys[best], cut


class TopKMerger:
    """Running global top-k over candidate lists arriving in any order; memory stays O(k).

    ``threshold`` is the k-th best key seen so far (−inf before k candidates): the final k-th best can
    only be higher, so shards scheduled later need send only keys ≥ it. A shard that held rows back
    (capped request) hides nothing if its cut is at most the final k-th best key, since all its unsent
    keys are strictly below the cut; ``hiding`` names the others, to re-query with ``below=cut``.
    ``finish`` is then exactly ``gumbel_top_k`` of all rows, whatever the order, caps or thresholds.
    """

    def __init__(self, k: int) -> None:
        self.k = check_draw_count(k)
        self.threshold = -math.inf
        self.received = 0
        self.cuts: dict[int, float] = {}
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (ids, keys, shard index)
        self._held = 0
        self._prune_at = self.k

    def add(self, shard: int, ids: np.ndarray, keys: np.ndarray, cut: float = -math.inf) -> None:
        self._parts.append((ids, keys, np.full(ids.size, shard, dtype=np.int32)))
        self.cuts[shard] = cut
        self._held += ids.size
        self.received += ids.size
        if self._held >= self._prune_at:
            self._prune()
            self._prune_at = max(2 * self._held, self.k)  # amortised: each prune at least halves

    def _prune(self) -> None:
        ids, keys, shards = self._concat()
        keep = top_k_superset(keys, self.k)
        self._parts = [(ids[keep], keys[keep], shards[keep])]
        self._held = keep.size
        if keep.size >= self.k:
            self.threshold = float(keys[keep].min())

    def _concat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._parts:
            return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int32)
        return tuple(np.concatenate(column) for column in zip(*self._parts))  # type: ignore[return-value]

    def hiding(self) -> dict[int, float]:
        """``{shard: cut}`` of shards whose held-back rows might still make the top k."""
        self._prune()
        return {shard: cut for shard, cut in self.cuts.items() if cut > self.threshold}

    def finish(self, *, at_most: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(selected ids in selection order, index of the shard each came from)``.

        With ``at_most``, fewer than k candidates in all (with a key above −inf) is no error: then all
        of them are selected, in order.
        """
        hidden = self.hiding()
        if hidden:
            raise RuntimeError(f"shards {sorted(hidden)} may hide top-k rows; re-query them first")
        ids, keys, shards = self._concat()
        k = min(self.k, int(np.count_nonzero(keys > -np.inf))) if at_most else self.k
        selected = merge_top_k([(ids, keys)], k)
        order = np.argsort(ids)
        return selected, shards[order[np.searchsorted(ids, selected, sorter=order)]]
