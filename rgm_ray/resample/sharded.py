"""Per-shard work of the resample stage and the exact ways to combine it on the driver.

A sample set can hold far more log-weights than one process should gather (1e8 rows = 800 MB as
float64), so every global quantity is built from small per-shard pieces that combine exactly:

- ``LogSums``: count, support, max and the max-shifted sums Σe^{ℓ−m}, Σe^{2(ℓ−m)} of one shard.
  They merge exactly (up to float rounding), giving the global logsumexp, ESS and heaviest share.
- ``shard_candidates``: one shard's candidates for the global Gumbel top-k. Keys depend only on
  (seed, sample_id, ℓ), so a shard may drop every row whose key is below a *threshold* the driver
  already knows to be beaten (the k-th best key seen so far), and may send only its best few
  (a capped *request*), to be asked again only if its unsent rows could still win.
  ``TopKMerger`` keeps the threshold, finds the shards to re-query, and returns exactly
  ``gumbel_top_k`` of all rows.
- ``shard_digit_counts`` + ``RadixSelect``: exact order statistics (for clipping at a quantile) by
  radix selection over the float bit patterns, 16 bits per round, without moving the values.
- ``shard_alpha_sums`` + ``search_alpha``: the largest flattening α meeting an ESS target, by a
  bracketing search that evaluates several α per pass over the data.

The functions that take a ``path`` are plain functions: the stage runs them as Ray tasks, tests call
them directly. Each reads only the columns it needs from one Parquet shard and returns little.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rgm_ray.resample.counter_rng import check_draw_count
from rgm_ray.resample.gumbel import gumbel_keys, merge_top_k
from rgm_ray.resample.multinomial import multinomial_within_shard
from rgm_ray.store.schema import IMAGE, LABEL, LOG_WEIGHT, SAMPLE_ID
from rgm_ray.weigh.transforms import flatten, validate_log_weights

ROW_COLUMNS = (SAMPLE_ID, IMAGE, LABEL, LOG_WEIGHT)
DIGIT_BITS = 16  # radix-select digit: 65,536 buckets per round, two rounds for float32


# --- reading one shard ------------------------------------------------------------------------


def read_log_weights(path: str | Path, *, with_ids: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """``(sample_ids or None, log_weights as float64)`` of one shard; NaN and +inf are refused.

    The error names the shard's full path, hence the set.
    """
    columns = [SAMPLE_ID, LOG_WEIGHT] if with_ids else [LOG_WEIGHT]
    table = pq.ParquetFile(path).read(columns=columns, use_threads=False)
    lw = validate_log_weights(table.column(LOG_WEIGHT).to_numpy(), name=f"{path}: {LOG_WEIGHT}",
                              require_support=False)
    ids = table.column(SAMPLE_ID).to_numpy() if with_ids else None
    return ids, lw


def shard_rows(path: str | Path, sample_ids: np.ndarray) -> pa.Table:
    """The rows of ``sample_ids`` (all in this shard) with their images, reading only the row groups
    that hold them; rows come back in file order."""
    parquet = pq.ParquetFile(path)
    shard_ids = parquet.read(columns=[SAMPLE_ID], use_threads=False).column(SAMPLE_ID).to_numpy()
    positions = np.flatnonzero(np.isin(shard_ids, sample_ids))
    if positions.size != np.unique(sample_ids).size:
        raise ValueError(f"{path}: {np.unique(sample_ids).size - positions.size} selected sample id(s) "
                         "are not in this shard; was the set changed during resampling?")
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])  # [groups + 1] first row of each group
    group_of = np.searchsorted(starts, positions, side="right") - 1
    groups = np.unique(group_of)
    table = parquet.read_row_groups(groups.tolist(), columns=list(ROW_COLUMNS), use_threads=False)
    # Position within the concatenation of the groups read = offset of its group there + row in group.
    offsets = np.cumsum([0] + [sizes[g] for g in groups[:-1]])
    local = offsets[np.searchsorted(groups, group_of)] + positions - starts[group_of]
    return table.take(pa.array(local))


# --- mergeable sums -------------------------------------------------------------------------


@dataclass(frozen=True)
class LogSums:
    """Count, support size, ``m = max ℓ`` and ``s1 = Σ e^{ℓ−m}``, ``s2 = Σ e^{2(ℓ−m)}`` of some rows.

    Both sums lie in [1, n] on any support, so nothing overflows for any finite logits; shards merge
    by rescaling to the larger maximum (``combine``).
    """

    n: int
    n_support: int
    max: float
    s1: float
    s2: float

    @staticmethod
    def of(lw: np.ndarray) -> "LogSums":
        """Sums of validated float64 log-weights (``-inf`` allowed)."""
        return alpha_sums(lw, (1.0,))[0]

    @staticmethod
    def combine(parts: Sequence["LogSums"]) -> "LogSums":
        """Sums over the union of the parts' rows; exact summation, so independent of part order."""
        n, n_support = sum(p.n for p in parts), sum(p.n_support for p in parts)
        live = [p for p in parts if p.n_support]
        if not live:
            return LogSums(n, 0, -math.inf, 0.0, 0.0)
        m = max(p.max for p in live)
        s1 = math.fsum(p.s1 * math.exp(p.max - m) for p in live)
        s2 = math.fsum(p.s2 * math.exp(2.0 * (p.max - m)) for p in live)
        return LogSums(n, n_support, m, s1, s2)

    @property
    def log_mass(self) -> float:
        """``logsumexp ℓ`` (``-inf`` without support)."""
        return self.max + math.log(self.s1) if self.n_support else -math.inf

    @property
    def ess(self) -> float:
        """Kish ESS ``(Σw)²/Σw²``, within [1, support]; 0 without support."""
        return min(max(self.s1 * self.s1 / self.s2, 1.0), float(self.n_support)) if self.n_support else 0.0

    @property
    def max_share(self) -> float:
        """Largest normalised weight: the heaviest row's share of the total mass (1/s1)."""
        return 1.0 / self.s1 if self.n_support else 0.0


def alpha_sums(lw: np.ndarray, alphas: Sequence[float]) -> list[LogSums]:
    """``LogSums`` of ``α·ℓ`` for each α ≥ 0, sharing one pass of shifting.

    α = 0 gives weight 1 on the support and keeps ``-inf`` excluded, like ``transforms.flatten``.
    """
    finite = lw > -np.inf
    n_support = int(np.count_nonzero(finite))
    if n_support == 0:
        return [LogSums(lw.size, 0, -math.inf, 0.0, 0.0) for _ in alphas]
    support = lw if n_support == lw.size else lw[finite]
    m = float(support.max())
    shifted = support - m  # [n_support], ≤ 0
    out = []
    for alpha in alphas:
        e = np.exp(shifted * alpha) if alpha != 1.0 else np.exp(shifted)
        s1 = float(e.sum())
        e *= e  # not np.dot: BLAS threads are costly on a busy worker
        out.append(LogSums(lw.size, n_support, alpha * m, s1, float(e.sum())))
    return out


# --- transforms -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightTransform:
    """``ℓ' = α · clip(ℓ)``: clip on the weight scale (``w ≤ e^log_cap``, ``w ≥ e^log_floor`` on the
    support), then flatten to ``w^α``. ``-inf`` (weight 0) stays excluded.

    Per row this equals ``transforms.flatten(transforms.clip(ℓ, max_value=e^log_cap,
    floor=e^log_floor), α)``; the cap is held as a log so a quantile cap resolved on the driver
    (``RadixSelect``) is applied without an exp/log round trip.
    """

    alpha: float = 1.0
    log_cap: float | None = None
    log_floor: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("log_cap", "log_floor"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if self.log_cap is not None and self.log_floor is not None and self.log_floor > self.log_cap:
            raise ValueError(f"the lower clip (log {self.log_floor:.4g}) is above the upper clip "
                             f"(log {self.log_cap:.4g})")

    @property
    def clips(self) -> bool:
        return self.log_cap is not None or self.log_floor is not None

    @property
    def is_identity(self) -> bool:
        return self.alpha == 1.0 and not self.clips

    def with_alpha(self, alpha: float) -> "WeightTransform":
        return WeightTransform(alpha, self.log_cap, self.log_floor)

    def apply(self, lw: np.ndarray) -> np.ndarray:
        """Transformed copy (or ``lw`` itself when there is nothing to do) of float64 log-weights."""
        if self.is_identity or lw.size == 0 or lw.max() == -np.inf:
            return lw
        out = lw if self.log_cap is None else np.minimum(lw, self.log_cap)
        if self.log_floor is not None:
            out = np.where(out > -np.inf, np.maximum(out, self.log_floor), -np.inf)
        return out if self.alpha == 1.0 else flatten(out, self.alpha)


def shard_log_sums(path: str | Path, transform: WeightTransform) -> tuple[LogSums, LogSums]:
    """``(sums of ℓ, sums of transform(ℓ))`` of one shard, reading only ``log_weight``."""
    _, lw = read_log_weights(path, with_ids=False)
    raw = LogSums.of(lw)
    return raw, raw if transform.is_identity else LogSums.of(transform.apply(lw))


def shard_alpha_sums(path: str | Path, clip: WeightTransform, alphas: Sequence[float]) -> list[LogSums]:
    """``LogSums`` of ``α·clip(ℓ)`` for each α, reading only ``log_weight`` (one round of ``search_alpha``)."""
    _, lw = read_log_weights(path, with_ids=False)
    return alpha_sums(clip.apply(lw), alphas)


def search_alpha(ess_at: Callable[[list[float]], list[float]], target_ess: float, *, tol: float,
                 points: int = 15) -> tuple[float, int]:
    """Largest α ∈ [0, 1] (within ``tol``) with ESS ≥ target; returns ``(α, rounds)``.

    Same contract as ``transforms.alpha_for_target_ess`` (the lower end of the bracket always meets
    the target, the upper end never does, so only evaluated points are trusted), but each round
    evaluates ``points`` α values at once (``ess_at``, one pass over the data), shrinking the bracket
    ``points + 1``-fold instead of 2-fold: four passes reach 1e-4 instead of fourteen. The caller
    has checked ESS(1) < target ≤ ESS(0).
    """
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    lo, hi, rounds = 0.0, 1.0, 0
    while hi - lo > tol:
        grid = [lo + (hi - lo) * j / (points + 1) for j in range(1, points + 1)]
        for alpha, ess in zip(grid, ess_at(grid)):
            if ess < target_ess:  # the first miss ends the bracket, even if rounding lets a later point pass
                hi = alpha
                break
            lo = alpha
        rounds += 1
    return lo, rounds


# --- exact quantiles by radix selection ------------------------------------------------------


def _order_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integers ordered like the float ``values`` (float32 -> uint32, float64 -> uint64)."""
    unsigned = np.uint32 if values.dtype == np.float32 else np.uint64
    bits = values.view(unsigned)
    sign = unsigned(1) << unsigned(8 * values.itemsize - 1)
    # Negative floats: flip every bit (larger magnitude sorts lower); positive: set the sign bit.
    return np.where(bits & sign, ~bits, bits | sign)


def _key_to_float(key: int, dtype: np.dtype) -> float:
    unsigned = np.uint32 if dtype == np.float32 else np.uint64
    sign = 1 << (8 * dtype.itemsize - 1)
    bits = key ^ sign if key & sign else ~key & ((sign << 1) - 1)
    return float(np.array(bits, dtype=unsigned).view(dtype))


def shard_digit_counts(path: str | Path, queries: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each ``(known_bits, prefix)``: among this shard's finite log-weights whose order key starts
    with ``prefix`` (its top ``known_bits`` bits), how many have each next 16-bit digit.

    Returns sparse ``(digits, counts)`` pairs (few buckets are occupied), reading only ``log_weight``.
    """
    native = pq.ParquetFile(path).read(columns=[LOG_WEIGHT], use_threads=False).column(LOG_WEIGHT).to_numpy()
    lw = validate_log_weights(native, name=f"{path}: {LOG_WEIGHT}", require_support=False)
    native = native if native.dtype == np.float32 else lw
    keys = _order_keys(native[lw > -np.inf])
    total_bits = 8 * native.itemsize
    out = []
    for known_bits, prefix in queries:
        shift = total_bits - known_bits - DIGIT_BITS
        selected = keys if known_bits == 0 else keys[(keys >> (total_bits - known_bits)) == prefix]
        counts = np.bincount(((selected >> shift) & 0xFFFF).astype(np.int64), minlength=1 << DIGIT_BITS)
        digits = np.flatnonzero(counts)
        out.append((digits, counts[digits]))
    return out


class RadixSelect:
    """Exact order statistics of all shards' finite log-weights, 16 bits per round (2 for float32).

    Round 0 also counts the finite values; the ranks are given then by ``ranks_of(n_finite)``.
    """

    def __init__(self, dtype: np.dtype, ranks_of: Callable[[int], Sequence[int]]) -> None:
        self.dtype = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)
        self.total_bits = 8 * self.dtype.itemsize
        self._ranks_of = ranks_of
        self.known_bits = 0
        self.n_finite: int | None = None
        self._targets: list[list[int]] = []  # per rank: [prefix, rank among values with that prefix]

    @property
    def done(self) -> bool:
        return self.known_bits == self.total_bits

    def queries(self) -> list[tuple[int, int]]:
        if self.known_bits == 0:
            return [(0, 0)]
        return sorted({(self.known_bits, prefix) for prefix, _ in self._targets})

    def update(self, shard_counts: Sequence[list[tuple[np.ndarray, np.ndarray]]]) -> None:
        """Fold one round of ``shard_digit_counts`` results (one list per shard, in ``queries()`` order)."""
        queries = self.queries()
        hists = {q: np.zeros(1 << DIGIT_BITS, dtype=np.int64) for q in queries}
        for per_query in shard_counts:
            for q, (digits, counts) in zip(queries, per_query):
                np.add.at(hists[q], digits, counts)
        if self.known_bits == 0:
            self.n_finite = int(hists[(0, 0)].sum())
            if self.n_finite == 0:
                raise ValueError("no finite log-weights to take a quantile of")
            self._targets = [[0, int(r)] for r in self._ranks_of(self.n_finite)]
        for target in self._targets:
            cumulative = np.cumsum(hists[(self.known_bits, target[0])])
            digit = int(np.searchsorted(cumulative, target[1], side="right"))
            target[1] -= int(cumulative[digit - 1]) if digit else 0
            target[0] = (target[0] << DIGIT_BITS) | digit
        self.known_bits += DIGIT_BITS

    def values(self) -> list[float]:
        """The order statistics, in the order of the ranks."""
        if not self.done:
            raise RuntimeError("radix selection has rounds left")
        return [_key_to_float(prefix, self.dtype) for prefix, _ in self._targets]


def quantile_ranks(q: float, n: int) -> tuple[int, int, float]:
    """``(j, j + 1 clipped to n − 1, γ)`` of NumPy's default ('linear') quantile of n sorted values."""
    virtual = (n - 1) * q  # Hyndman–Fan type 7, computed as NumPy does
    j = math.floor(virtual)
    if virtual >= n - 1:
        return n - 1, n - 1, virtual - j
    return j, j + 1, virtual - j


def lerp(a: float, b: float, gamma: float) -> float:
    """NumPy's quantile interpolation between neighbouring order statistics (same rounding)."""
    diff = b - a
    return b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma


# --- selection --------------------------------------------------------------------------------


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
    ids, lw = read_log_weights(path)
    raw = LogSums.of(lw)
    lw_t = transform.apply(lw)
    transformed = raw if transform.is_identity else LogSums.of(lw_t)
    keys = gumbel_keys(lw_t, ids, seed)
    if threshold > -math.inf or below < math.inf:
        eligible = np.flatnonzero((keys >= threshold) & (keys < below))
        ids, keys = ids[eligible], keys[eligible]
    best = top_k_superset(keys, request)
    held_back = best.size < np.count_nonzero(keys > -np.inf)
    cut = float(keys[best].min()) if held_back else -math.inf
    return ShardCandidates(ids[best], keys[best], cut, raw, transformed)


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

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(selected ids in selection order, index of the shard each came from)``."""
        hidden = self.hiding()
        if hidden:
            raise RuntimeError(f"shards {sorted(hidden)} may hide top-k rows; re-query them first")
        ids, keys, shards = self._concat()
        selected = merge_top_k([(ids, keys)], self.k)
        order = np.argsort(ids)
        return selected, shards[order[np.searchsorted(ids, selected, sorter=order)]]


def shard_multinomial(path: str | Path, transform: WeightTransform, k_shard: int, seed: int,
                      shard_key: int) -> tuple[np.ndarray, np.ndarray]:
    """This shard's share of a with-replacement draw: ``(ids ascending, copies)`` summing to ``k_shard``."""
    ids, lw = read_log_weights(path)
    return multinomial_within_shard(transform.apply(lw), ids, k_shard, seed, shard_key)
