"""Counter-based random numbers: the noise of a sample is a pure function of (stream key, sample id).

A sequential generator hands out numbers in row order, so the noise a sample gets would depend on
how rows are split into shards, on worker order and on retries. Here the sample id *is* the counter:
``u_i = f(key, id_i)``, so any sharding, permutation or re-run of the same rows yields the same noise.

``f`` is SplitMix64 evaluated at position ``id`` of the Weyl sequence started at ``key``
(``mix(key + id·γ)``, γ the 64-bit golden ratio). SplitMix64 passes BigCrush; it is not
cryptographic, which resampling does not need. Ten-round Philox in NumPy was too slow for the
1e7-row target; the mixer here costs ~9 integer passes, run in cache-sized blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
# Elements per block: a block's few uint64/float64 buffers stay in L2 through the whole op chain.
_BLOCK = 1 << 16
# Ids spanning at most this many times their count are ordered by scattering into a table (O(span))
# instead of a comparison sort (O(n log n), ~2 s for 1e7 shuffled ids).
_DENSE_SPAN_FACTOR = 2


def as_sample_ids(sample_ids: object, n: int, *, name: str = "sample_ids") -> np.ndarray:
    """Return ``sample_ids`` as a 1-D int64 array of length ``n`` (no uniqueness check)."""
    ids = np.asarray(sample_ids)
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {ids.dtype}")
    if not np.can_cast(ids.dtype, np.int64, casting="safe"):
        if ids.size and int(ids.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{name} must fit in int64, got a maximum of {int(ids.max())}")
    if ids.ndim != 1 or ids.size != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per log-weight), got shape {ids.shape}")
    return np.ascontiguousarray(ids, dtype=np.int64)


def ascending_order(ids: np.ndarray) -> np.ndarray | None:
    """Permutation that sorts int64 ``ids`` ascending, or ``None`` if they already are.

    Raises ``ValueError`` on a duplicate id: ids are RNG counters, so two rows sharing one would share
    their noise.
    """
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return None
    lo, hi = int(ids.min()), int(ids.max())
    span = hi - lo + 1
    if span <= _DENSE_SPAN_FACTOR * ids.size:
        slot_dtype = np.int32 if ids.size < 2**31 else np.int64
        slots = np.full(span, -1, dtype=slot_dtype)
        slots[ids - lo] = np.arange(ids.size, dtype=slot_dtype)  # a duplicate overwrites, leaving a gap
        order = slots[slots >= 0].astype(np.int64)
        if order.size == ids.size:
            return order
    else:
        order = np.argsort(ids, kind="stable")
        if bool(np.all(np.diff(ids[order]) > 0)):
            return order
    sorted_ids = np.sort(ids)
    first = int(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0])
    raise ValueError(f"sample ids must be unique; id {first} appears more than once")


def validate_sample_ids(sample_ids: object, n: int, *, name: str = "sample_ids") -> np.ndarray:
    """``as_sample_ids`` plus the uniqueness check."""
    ids = as_sample_ids(sample_ids, n, name=name)
    ascending_order(ids)
    return ids


def check_seed(seed: object) -> int:
    """A run seed must be a non-negative integer (a float would be silently truncated by seeding)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_draw_count(k: object, name: str = "k", *, allow_zero: bool = False) -> int:
    """A number of draws must be an integer, positive (or non-negative with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {k!r}")
    return int(k)


def _check_key(stream_key: int) -> np.uint64:
    if isinstance(stream_key, bool) or not isinstance(stream_key, (int, np.integer)) or not 0 <= stream_key <= _MASK64:
        raise ValueError(f"stream_key must be an integer in [0, 2**64), got {stream_key!r}")
    return np.uint64(stream_key)


def _uniform_block(key: np.uint64, ids: np.ndarray, h: np.ndarray, tmp: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` with uniforms for one block of ids; ``h``/``tmp`` are uint64 scratch of the same length."""
    np.multiply(ids.view(np.uint64), _GAMMA, out=h)  # uint64 arithmetic wraps mod 2**64, as SplitMix64 needs
    h += key
    for shift, mul in ((30, _MUL1), (27, _MUL2)):
        np.right_shift(h, shift, out=tmp)
        h ^= tmp
        h *= mul
    np.right_shift(h, 31, out=tmp)
    h ^= tmp
    # Top 52 bits on a midpoint grid: u = (m + 0.5)·2^-52 is exact in float64 and lies in
    # [2^-53, 1 − 2^-53], strictly inside (0, 1), so logs below never see 0 or 1.
    np.right_shift(h, 12, out=h)
    np.add(h, 0.5, out=out)
    out *= 2.0**-52


def _map_uniform(stream_key: int, ids: object, finish: Callable[[np.ndarray, slice], None]) -> np.ndarray:
    """Uniforms for ``ids``, block by block, each block then transformed in place by ``finish(block, rows)``."""
    key = _check_key(stream_key)
    ids = as_sample_ids(ids, np.size(ids))
    out = np.empty(ids.size, dtype=np.float64)
    block = min(_BLOCK, ids.size)
    h = np.empty(block, dtype=np.uint64)
    tmp = np.empty(block, dtype=np.uint64)
    for start in range(0, ids.size, _BLOCK):
        rows = slice(start, min(start + _BLOCK, ids.size))
        n = rows.stop - start
        _uniform_block(key, ids[rows], h[:n], tmp[:n], out[rows])
        finish(out[rows], rows)
    return out


def uniform_open(stream_key: int, ids: object) -> np.ndarray:
    """Uniforms in the open interval (0, 1), one per id, each a pure function of ``(stream_key, id)``."""
    return _map_uniform(stream_key, ids, lambda u, rows: None)


def standard_gumbel(stream_key: int, ids: object, loc: np.ndarray | None = None) -> np.ndarray:
    """Gumbel noise ``loc + G``, ``G = −log(−log u)``, with ``u`` a pure function of ``(stream_key, id)``.

    ``loc`` (float64, one per id, default 0) is added inside the block loop to save a pass over memory.
    The uniforms are bit-identical on every machine; NumPy's float64 ``log`` may differ in the last bit
    between CPU code paths (e.g. with or without AVX-512), so across machine types G agrees to ~1e-16
    relative, and selections could differ only if two keys straddling the cut lie within that.
    """
    if loc is not None and (loc.dtype != np.float64 or loc.shape != np.shape(ids)):
        raise ValueError(f"loc must be float64 with the shape of ids {np.shape(ids)}, got {loc.dtype} {loc.shape}")

    def to_gumbel(u: np.ndarray, rows: slice) -> None:
        np.log(u, out=u)  # log u < 0
        np.negative(u, out=u)  # E = −log u ~ Exp(1), > 0
        np.log(u, out=u)
        if loc is None:
            np.negative(u, out=u)  # G = −log E ~ Gumbel(0, 1)
        else:
            np.subtract(loc[rows], u, out=u)

    return _map_uniform(stream_key, ids, to_gumbel)
