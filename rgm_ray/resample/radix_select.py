"""Exact order statistics of a sharded set's log-weights (for clipping at a quantile), without moving them.

Radix selection over the float bit patterns, 16 bits per round: each shard counts, among its values
whose top bits match the prefixes still open, how many have each next 16-bit digit
(``shard_digit_counts``); the driver (``RadixSelect``) adds the counts and narrows each wanted rank to
one digit. Two rounds for float32, four for float64, and only sparse counts leave a shard. The answer
equals ``np.quantile`` on the gathered column, interpolation included (``quantile_ranks``, ``lerp``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rgm_ray.resample.shard_io import read_stored_log_weights, stored_log_weight_dtype
from rgm_ray.resample.shard_pool import ShardRunner, in_shard_order

DIGIT_BITS = 16  # radix-select digit: 65,536 buckets per round, two rounds for float32


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
    native, lw = read_stored_log_weights(path)
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


def log_weight_quantile(runner: ShardRunner, q: float) -> float:
    """The q-quantile of all finite log-weights of ``runner``'s set, exactly as ``np.quantile`` on the
    gathered column."""
    radix = RadixSelect(stored_log_weight_dtype(runner.paths[0]), lambda n: quantile_ranks(q, n)[:2])
    while not radix.done:
        queries = radix.queries()
        counts = in_shard_order(runner.map(shard_digit_counts, lambda s: (queries,), desc="clip quantile"))
        try:
            radix.update(counts)
        except ValueError as exc:  # no finite log-weight at all
            raise ValueError(f"{runner.samples.path}: {exc}") from None
    low, high = radix.values()
    return lerp(low, high, quantile_ranks(q, radix.n_finite)[2])
