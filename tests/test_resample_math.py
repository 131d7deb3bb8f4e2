"""Resampling math: counter-based noise, Gumbel top-k (without replacement) and multinomial SIR.

Statistical checks use fixed seed sets, so their p-values are fixed numbers: no flakiness.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from rgm_ray.resample.counter_rng import standard_gumbel, uniform_open, validate_sample_ids
from rgm_ray.resample.gumbel import gumbel_keys, gumbel_top_k, incomplete_shards, merge_top_k, shard_top_k
from rgm_ray.resample.multinomial import (
    multinomial_resample,
    multinomial_within_shard,
    split_counts_across_shards,
)
from rgm_ray.weigh.transforms import flatten, log_total_weight

NEG_INF = -np.inf
P_MIN = 1e-3


def random_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-weights and sparse, non-contiguous sample ids, as rows gathered from several shards look."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10 * n, size=n, replace=False)).astype(np.int64)
    return rng.normal(scale=2.0, size=n), ids


def random_split(n: int, n_shards: int, seed: int) -> list[np.ndarray]:
    """Row indices of a random permutation cut into ``n_shards`` pieces (some may be empty)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, n + 1, size=n_shards - 1))
    return np.split(rng.permutation(n), cuts)


# --- counter-based noise ----------------------------------------------------------------------


def test_uniforms_are_open_interval_and_uniform():
    u = uniform_open(12345, np.arange(200_000, dtype=np.int64))
    assert 0.0 < u.min() and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > P_MIN
    # neighbouring ids must not be correlated (SplitMix64 output on a Weyl sequence)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01


def test_gumbel_noise_has_gumbel_distribution():
    g = standard_gumbel(7, np.arange(200_000, dtype=np.int64))
    assert stats.kstest(g, "gumbel_r").pvalue > P_MIN


def test_noise_is_a_function_of_key_and_id_only():
    ids = np.array([5, 1_000_000_007, -3, 2**62], dtype=np.int64)
    u = uniform_open(99, ids)
    np.testing.assert_array_equal(uniform_open(99, ids[::-1]), u[::-1])
    np.testing.assert_array_equal(uniform_open(99, ids[1:2]), u[1:2])
    assert not np.any(uniform_open(100, ids) == u)


def test_noise_blocks_do_not_change_values():
    """The block loop must be invisible: a long array equals its pieces computed separately."""
    ids = np.arange(200_003, dtype=np.int64) * 3
    full = standard_gumbel(5, ids)
    pieces = np.concatenate([standard_gumbel(5, ids[s : s + 70_001]) for s in range(0, ids.size, 70_001)])
    np.testing.assert_array_equal(full, pieces)


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.array([1, 2, 2, 3]), "id 2 appears more than once"),
        (np.array([9, 4, 9, 0]), "id 9 appears more than once"),
        (np.array([10**12, 5, 10**12, 7]), "appears more than once"),  # sparse ids: the sorting path
        (np.array([1.0, 2.0, 3.0, 4.0]), "integer"),
        (np.array([1, 2, 3]), "4 entries"),
        (np.array([2**64 - 1, 0, 1, 2], dtype=np.uint64), "int64"),
    ],
)
def test_sample_id_validation(ids, message):
    with pytest.raises(ValueError, match=message):
        validate_sample_ids(ids, 4)


# --- Gumbel top-k: exactness ------------------------------------------------------------------


def test_k1_selection_frequencies_match_normalised_weights():
    w = np.array([1.0, 2.0, 3.0, 0.5, 6.0, 2.5])
    lw, ids = np.log(w), np.arange(6, dtype=np.int64)
    picks = np.array([gumbel_top_k(lw, ids, 1, seed)[0] for seed in range(20_000)])
    observed = np.bincount(picks, minlength=6)
    assert stats.chisquare(observed, observed.sum() * w / w.sum()).pvalue > P_MIN


def successive_sampling_pair_probabilities(w: np.ndarray) -> dict[tuple[int, int], float]:
    """P(first = i, second = j) when drawing two items without replacement ∝ w."""
    total = w.sum()
    return {(i, j): w[i] / total * w[j] / (total - w[i]) for i, j in itertools.permutations(range(w.size), 2)}


def test_k2_ordered_pairs_and_inclusion_match_successive_sampling():
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    lw, ids = np.log(w), np.arange(5, dtype=np.int64) + 100
    exact = successive_sampling_pair_probabilities(w)
    pairs = list(exact)
    n_seeds = 20_000
    draws = [tuple(gumbel_top_k(lw, ids, 2, seed) - 100) for seed in range(n_seeds)]
    observed = np.array([draws.count(pair) for pair in pairs])
    expected = n_seeds * np.array([exact[pair] for pair in pairs])
    assert stats.chisquare(observed, expected).pvalue > P_MIN
    # inclusion probabilities, the quantity SIR without replacement is judged by
    inclusion = np.array([sum(p for pair, p in exact.items() if i in pair) for i in range(5)])
    hits = np.bincount(np.array(draws).ravel(), minlength=5) / n_seeds
    assert np.all(np.abs(hits - inclusion) < 4 * np.sqrt(inclusion * (1 - inclusion) / n_seeds))


def test_alpha_zero_selects_uniformly_and_never_picks_excluded_samples():
    lw = np.array([8.0, -5.0, NEG_INF, 0.0, 2.0, NEG_INF])
    ids = np.arange(6, dtype=np.int64)
    flat = flatten(lw, 0.0)
    picks = np.array([gumbel_top_k(flat, ids, 2, seed) for seed in range(5000)]).ravel()
    observed = np.bincount(picks, minlength=6)
    assert observed[2] == 0 and observed[5] == 0
    assert stats.chisquare(observed[[0, 1, 3, 4]]).pvalue > P_MIN


def test_neg_inf_keys_and_selecting_the_whole_support():
    lw = np.array([NEG_INF, 0.0, NEG_INF, 3.0, -1.0])
    ids = np.array([10, 11, 12, 13, 14], dtype=np.int64)
    keys = gumbel_keys(lw, ids, seed=0)
    assert np.all(keys[[0, 2]] == NEG_INF) and np.all(np.isfinite(keys[[1, 3, 4]]))
    for seed in range(50):
        chosen = gumbel_top_k(lw, ids, 3, seed)
        assert sorted(chosen.tolist()) == [11, 13, 14]
        np.testing.assert_array_equal(chosen, ids[np.argsort(-gumbel_keys(lw, ids, seed))][:3])


# --- Gumbel top-k: sharding invariance --------------------------------------------------------


@pytest.mark.parametrize("k", [1, 37, 500, 2000])
def test_sharded_top_k_equals_global_for_any_split_and_row_order(k):
    lw, ids = random_rows(2000, seed=3)
    lw[::7] = NEG_INF
    k = min(k, int(np.isfinite(lw).sum()))
    expected = gumbel_top_k(lw, ids, k, seed=11)
    assert np.unique(expected).size == k
    for split_seed, n_shards in [(0, 1), (1, 3), (2, 8), (3, 40)]:
        shards = random_split(lw.size, n_shards, split_seed)
        candidates = [shard_top_k(lw[rows], ids[rows], k, seed=11) for rows in shards]
        np.testing.assert_array_equal(merge_top_k(candidates, k), expected)
        # the same rows in another order, in one process
        rows = np.concatenate(shards)
        np.testing.assert_array_equal(gumbel_top_k(lw[rows], ids[rows], k, seed=11), expected)


@pytest.mark.parametrize("cap", [5, 40, 400])
def test_capped_shard_requests_are_exact_after_requerying_incomplete_shards(cap):
    lw, ids = random_rows(4000, seed=5)
    lw[:300] += 6.0  # one heavy shard holds most of the top-k: a uniform cap is too small for it
    k = 300
    expected = gumbel_top_k(lw, ids, k, seed=2)
    shards = np.array_split(np.arange(lw.size), 10)
    candidates = [shard_top_k(lw[rows], ids[rows], cap, seed=2) for rows in shards]
    incomplete = incomplete_shards(candidates, [cap] * len(shards), k)
    assert (0 in incomplete) == (cap < k)  # the heavy shard must be re-queried unless it sent k rows
    for s in incomplete:
        candidates[s] = shard_top_k(lw[shards[s]], ids[shards[s]], k, seed=2)
    np.testing.assert_array_equal(merge_top_k(candidates, k), expected)
    assert incomplete_shards(candidates, [k if s in incomplete else cap for s in range(10)], k) == []


def test_keys_are_row_order_and_retry_invariant():
    lw, ids = random_rows(1000, seed=4)
    perm = np.random.default_rng(0).permutation(lw.size)
    keys = gumbel_keys(lw, ids, seed=5)
    np.testing.assert_array_equal(gumbel_keys(lw[perm], ids[perm], seed=5), keys[perm])
    np.testing.assert_array_equal(gumbel_keys(lw[:100], ids[:100], seed=5), keys[:100])
    assert not np.array_equal(gumbel_keys(lw, ids, seed=6), keys)


def test_ties_are_broken_by_smallest_id_consistently_across_shards():
    # logits so large that the noise is rounded away: these keys tie exactly
    lw = np.zeros(40)
    tied_ids = [31, 4, 17, 8, 22]
    ids = np.arange(40, dtype=np.int64)
    lw[tied_ids] = 1e20
    keys = gumbel_keys(lw, ids, seed=0)
    assert np.unique(keys[tied_ids]).size == 1
    expected = gumbel_top_k(lw, ids, 3, seed=0)
    np.testing.assert_array_equal(expected, [4, 8, 17])
    for split_seed in range(5):
        shards = random_split(lw.size, 4, split_seed)
        candidates = [shard_top_k(lw[rows], ids[rows], 3, seed=0) for rows in shards]
        np.testing.assert_array_equal(merge_top_k(candidates, 3), expected)
    np.testing.assert_array_equal(gumbel_top_k(lw, ids, 6, seed=0)[:5], [4, 8, 17, 22, 31])


def test_shard_candidates_are_clipped_to_the_shards_support():
    ids = np.arange(4, dtype=np.int64)
    cand_ids, cand_keys = shard_top_k(np.array([0.0, NEG_INF, 1.0, NEG_INF]), ids, 10, seed=0)
    assert sorted(cand_ids.tolist()) == [0, 2] and np.all(np.diff(cand_keys) <= 0)
    for empty in (np.array([]), np.array([NEG_INF, NEG_INF])):
        out_ids, out_keys = shard_top_k(empty, np.arange(empty.size, dtype=np.int64), 5, seed=0)
        assert out_ids.size == 0 and out_keys.size == 0


# --- Gumbel top-k: errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, message",
    [
        (0, "integer >= 1"),
        (-2, "integer >= 1"),
        (2.0, "integer >= 1"),
        (True, "integer >= 1"),
        (6, "number of samples"),
        (4, "3 samples with non-zero weight"),
    ],
)
def test_gumbel_top_k_rejects_bad_k(k, message):
    lw = np.array([0.0, 1.0, NEG_INF, 2.0, NEG_INF])
    with pytest.raises(ValueError, match=message):
        gumbel_top_k(lw, np.arange(5, dtype=np.int64), k, seed=0)


def test_gumbel_rejects_bad_inputs():
    ids = np.arange(3, dtype=np.int64)
    with pytest.raises(ValueError, match="NaN"):
        gumbel_top_k(np.array([0.0, np.nan, 1.0]), ids, 1, seed=0)
    with pytest.raises(ValueError, match="more than once"):
        gumbel_top_k(np.zeros(3), np.array([1, 1, 2]), 1, seed=0)
    with pytest.raises(ValueError, match="3 entries"):
        gumbel_keys(np.zeros(3), np.arange(2), seed=0)
    for seed in (-1, 1.5, None):
        with pytest.raises(ValueError, match="seed"):
            gumbel_keys(np.zeros(3), ids, seed=seed)


def test_merge_rejects_duplicates_and_too_few_candidates():
    a = shard_top_k(np.zeros(3), np.array([0, 1, 2]), 2, seed=0)
    c = shard_top_k(np.zeros(3), np.array([5, 6, 7]), 2, seed=0)
    assert merge_top_k([a, c], 4).size == 4
    repeated = (a[0][:1], a[1][:1])  # the same row delivered by a second shard
    with pytest.raises(ValueError, match=f"id {a[0][0]} appears more than once"):
        merge_top_k([a, repeated, c], 1)
    with pytest.raises(ValueError, match="4 candidates"):
        merge_top_k([a, c], 5)
    with pytest.raises(ValueError, match="at least one"):
        merge_top_k([], 1)


# --- multinomial SIR (with replacement) -------------------------------------------------------


def test_multinomial_counts_sum_to_k_and_follow_the_multinomial():
    w = np.array([0.5, 1.0, 4.0, 2.0, 0.25, 3.0, 1.5, 0.75])
    lw, ids = np.log(w), np.arange(8, dtype=np.int64) * 5
    total = np.zeros(8, dtype=np.int64)
    for seed in range(400):
        got_ids, counts = multinomial_resample(lw, ids, 50, seed)
        assert counts.sum() == 50 and np.all(counts >= 1)
        assert np.all(np.diff(got_ids) > 0) and got_ids.dtype == np.int64 and counts.dtype == np.int64
        total[got_ids // 5] += counts
    assert stats.chisquare(total, total.sum() * w / w.sum()).pvalue > P_MIN


def test_multinomial_never_draws_excluded_samples():
    lw = np.array([NEG_INF, 0.0, NEG_INF, -2.0, NEG_INF])
    for seed in range(100):
        got_ids, counts = multinomial_resample(lw, np.arange(5, dtype=np.int64), 20, seed)
        assert set(got_ids.tolist()) <= {1, 3} and counts.sum() == 20


def test_multinomial_depends_only_on_the_set_of_rows():
    lw, ids = random_rows(3000, seed=6)
    lw[::5] = NEG_INF
    expected_ids, expected_counts = multinomial_resample(lw, ids, 10_000, seed=8)
    for split_seed, n_shards in [(0, 2), (1, 7)]:
        rows = np.concatenate(random_split(lw.size, n_shards, split_seed))
        got_ids, got_counts = multinomial_resample(lw[rows], ids[rows], 10_000, seed=8)
        np.testing.assert_array_equal(got_ids, expected_ids)
        np.testing.assert_array_equal(got_counts, expected_counts)
    other_ids, other_counts = multinomial_resample(lw, ids, 10_000, seed=9)
    assert not (np.array_equal(other_ids, expected_ids) and np.array_equal(other_counts, expected_counts))


def test_distributed_multinomial_is_exact_in_distribution():
    w = np.array([0.5, 1.0, 4.0, 2.0, 0.25, 3.0, 1.5, 0.75])
    lw, ids = np.log(w), np.arange(8, dtype=np.int64)
    shards = [np.array([0, 1, 2]), np.array([], dtype=np.int64), np.array([3, 4, 5, 6, 7])]
    masses = np.array([log_total_weight(lw[rows]) for rows in shards])
    assert masses[1] == NEG_INF
    total = np.zeros(8, dtype=np.int64)
    for seed in range(400):
        per_shard = split_counts_across_shards(masses, 50, seed)
        assert per_shard.sum() == 50 and per_shard[1] == 0
        for key, (rows, k_shard) in enumerate(zip(shards, per_shard)):
            got_ids, counts = multinomial_within_shard(lw[rows], ids[rows], int(k_shard), seed, key)
            assert counts.sum() == k_shard
            total[got_ids] += counts
    assert stats.chisquare(total, total.sum() * w / w.sum()).pvalue > P_MIN


def test_within_shard_draw_is_retry_and_row_order_invariant():
    lw, ids = random_rows(500, seed=7)
    first = multinomial_within_shard(lw, ids, 300, seed=1, shard_key=4)
    perm = np.random.default_rng(1).permutation(lw.size)
    again = multinomial_within_shard(lw[perm], ids[perm], 300, seed=1, shard_key=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = multinomial_within_shard(lw, ids, 300, seed=1, shard_key=5)
    assert not np.array_equal(other[1], first[1]) or not np.array_equal(other[0], first[0])
    empty_ids, empty_counts = multinomial_within_shard(np.array([NEG_INF]), np.array([3]), 0, seed=1, shard_key=0)
    assert empty_ids.size == 0 and empty_counts.size == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: multinomial_resample(np.zeros(3), np.arange(3), 0, 0), "k must be an integer >= 1"),
        (lambda: multinomial_resample(np.full(3, NEG_INF), np.arange(3), 2, 0), "-inf everywhere"),
        (lambda: multinomial_resample(np.zeros(3), np.array([0, 0, 1]), 2, 0), "more than once"),
        (lambda: multinomial_resample(np.zeros(3), np.arange(3), 2, -1), "seed"),
        (lambda: split_counts_across_shards(np.array([NEG_INF, NEG_INF]), 5, 0), "-inf everywhere"),
        (lambda: split_counts_across_shards(np.array([0.0, np.nan]), 5, 0), "NaN"),
        (lambda: multinomial_within_shard(np.full(2, NEG_INF), np.arange(2), 1, 0, 0), "-inf everywhere"),
        (lambda: multinomial_within_shard(np.zeros(2), np.arange(2), -1, 0, 0), "k_shard"),
        (lambda: multinomial_within_shard(np.zeros(2), np.arange(2), 1, 0, -3), "shard_key"),
    ],
)
def test_multinomial_rejects_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
