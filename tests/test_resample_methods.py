"""Rejection sampling and independence MH on importance weights, and the honest default α.

Exactness: chi-square of output frequencies against p ∝ w on small discrete targets, over fixed seeds
(fixed p-values, not flaky), each beside a wrong target the same test must reject (so it can fail).
Sharding: the Ray selection equals the single-process function on all rows, for three layouts.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from test_resample_stage import N, SEED, lw64, make_pool, n_support, write_set

from rgm_ray.cli import main as cli_main
from rgm_ray.resample import mh_draw, mh_resample, rejection_log_bound, rejection_sample, topk_merge
from rgm_ray.resample.config import DEFAULT_TARGET_ESS_CAP, ResampleConfig, default_target_ess
from rgm_ray.resample.mh import independence_chain, run_chain
from rgm_ray.resample.proposals import acceptance_scores, first_proposed, proposal_keys, proposal_order
from rgm_ray.resample.selection import select
from rgm_ray.resample.stage import ResampleSpec, is_complete, resample_sample_set
from rgm_ray.store import SampleSet, verify_sample_set
from rgm_ray.weigh.transforms import alpha_for_target_ess, clip, effective_sample_size, flatten

P_MIN = 1e-3
WEIGHTS = np.exp(np.linspace(-2.0, 1.5, 50))  # 50 distinct weights, a 33-fold range


def chi2_p(counts: np.ndarray, weights: np.ndarray) -> float:
    return stats.chisquare(counts, counts.sum() * weights / weights.sum()).pvalue


# --- pure: proposals ------------------------------------------------------------------------------


def test_proposal_order_is_a_function_of_seed_and_ids_only():
    ids = np.random.default_rng(0).choice(10**9, 5000, replace=False).astype(np.int64)
    keys = proposal_keys(ids, 3)
    order = ids[proposal_order(keys, ids)]
    perm = np.random.default_rng(1).permutation(ids.size)
    np.testing.assert_array_equal(ids[perm][proposal_order(keys[perm], ids[perm])], order)
    np.testing.assert_array_equal(ids[first_proposed(keys, ids, 40)], order[:40])
    assert not np.array_equal(ids[proposal_order(proposal_keys(ids, 4), ids)], order)
    # ties (possible on the 2^-52 grid at 1e8 rows) go to the smaller id, in both functions
    tied = np.array([0.5, 0.25, 0.5, 0.5, 0.75])
    tied_ids = np.array([9, 1, 3, 7, 2], dtype=np.int64)
    np.testing.assert_array_equal(tied_ids[proposal_order(tied, tied_ids)], [1, 3, 7, 9, 2])
    np.testing.assert_array_equal(tied_ids[first_proposed(tied, tied_ids, 2)], [1, 3])


def test_acceptance_scores_accept_with_probability_min_1_w_over_m():
    ids = np.arange(200_000, dtype=np.int64)
    scores = acceptance_scores(np.full(ids.size, math.log(0.3)), ids, seed=5)
    assert abs(np.mean(scores > 0.0) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / ids.size)
    assert np.all(scores > math.log(0.3))  # a bound at or below ℓ always accepts
    assert acceptance_scores(np.array([-np.inf]), ids[:1], seed=5)[0] == -np.inf


# --- pure: rejection --------------------------------------------------------------------------------


def rejection_counts(weights: np.ndarray, seeds: range, **bound) -> np.ndarray:
    lw, ids = np.log(weights), np.arange(weights.size, dtype=np.int64) * 7 + 3
    counts = np.zeros(weights.size)
    for seed in seeds:
        accepted, _ = rejection_sample(lw, ids, weights.size, seed, rejection_log_bound(lw, **bound))
        counts[(accepted - 3) // 7] += 1
    return counts


def test_rejection_output_follows_the_weights():
    seeds = range(2000)
    counts = rejection_counts(WEIGHTS, seeds)
    assert chi2_p(counts, WEIGHTS) > P_MIN
    assert chi2_p(counts, np.sqrt(WEIGHTS)) < P_MIN  # the test can fail
    # each sample accepted independently with probability w / max w (accepted/rejected cells per sample)
    assert counts[-1] == len(seeds)  # the heaviest: always
    a = WEIGHTS[:-1] / WEIGHTS.max()
    cells = np.concatenate([counts[:-1], len(seeds) - counts[:-1]])
    assert stats.chisquare(cells, len(seeds) * np.concatenate([a, 1 - a]), ddof=a.size - 1).pvalue > P_MIN


def test_rejection_with_a_quantile_bound_samples_the_clipped_weights():
    log_m = np.quantile(np.log(WEIGHTS), 0.6) + 0.1
    counts = rejection_counts(WEIGHTS, range(1500), quantile=0.6, gamma=0.1)
    assert chi2_p(counts, np.minimum(WEIGHTS, math.exp(log_m))) > P_MIN
    assert chi2_p(counts, WEIGHTS) < P_MIN


def test_rejection_keeps_the_first_k_accepted_in_proposal_order_for_any_row_order():
    rng = np.random.default_rng(2)
    lw = rng.normal(scale=1.5, size=3000)
    lw[::9] = -np.inf
    ids = np.sort(rng.choice(30_000, lw.size, replace=False)).astype(np.int64)
    bound = rejection_log_bound(lw) - 1.0  # γ < 0: some weights capped
    everything, counts = rejection_sample(lw, ids, lw.size, 4, bound)
    assert everything.size == counts.accepted and 0 < counts.accepted < lw.size
    assert counts.capped == int(np.sum(lw > bound)) and counts.expected == pytest.approx(
        np.minimum(np.exp(lw - bound), 1.0).sum())
    np.testing.assert_array_equal(everything, everything[proposal_order(proposal_keys(everything, 4), everything)])
    assert not np.isin(everything, ids[::9]).any()
    first, _ = rejection_sample(lw, ids, 25, 4, bound)
    np.testing.assert_array_equal(first, everything[:25])
    perm = rng.permutation(lw.size)
    np.testing.assert_array_equal(rejection_sample(lw[perm], ids[perm], 25, 4, bound)[0], first)
    # the accepted set is the union of the shards' accepted sets
    union = np.concatenate([rejection_sample(lw[r], ids[r], lw.size, 4, bound)[0]
                            for r in np.array_split(perm, 7) if np.isfinite(lw[r]).any()])
    np.testing.assert_array_equal(np.sort(union), np.sort(everything))


# --- pure: MH ---------------------------------------------------------------------------------------


def test_mh_chain_is_stationary_at_the_weights():
    """50 weights, each held by 2000 generated samples; one long chain, every 20th state kept (the
    chain forgets its state within a few steps: weights span 33×, so about half the moves are taken)."""
    copies = 2000
    lw = np.repeat(np.log(WEIGHTS), copies)
    ids = np.arange(lw.size, dtype=np.int64) * 3 + 11
    burn_in, k, seed = 200, 60_000, 8
    first = first_proposed(proposal_keys(ids, seed), ids, burn_in + k)
    chain = run_chain(lw[first], ids[first], seed, burn_in)
    values = (ids[first][chain.states[::20]] - 11) // 3 // copies
    counts = np.bincount(values, minlength=WEIGHTS.size)
    assert chi2_p(counts, WEIGHTS) > P_MIN
    assert chi2_p(counts, np.ones_like(WEIGHTS)) < P_MIN  # the proposal law is rejected
    assert 0.3 < chain.acceptance_rate < 0.9
    got_ids, got_copies, again = mh_resample(lw, ids, k, seed, burn_in=burn_in)
    expected_ids, expected_copies = np.unique(ids[first][chain.states], return_counts=True)
    np.testing.assert_array_equal(got_ids, expected_ids)
    np.testing.assert_array_equal(got_copies, expected_copies)
    assert again.accepted == chain.accepted and got_copies.sum() == k


def test_mh_moves_by_the_independence_ratio():
    """Equal weights: every move is taken; zero weights: never; from w to w/4: a quarter of the time."""
    lw = np.zeros(500)
    chain = independence_chain(lw, acceptance_scores(lw, np.arange(500), 1), burn_in=0)
    assert chain.accepted == chain.moves == 499 and np.array_equal(chain.states, np.arange(500))
    lw = np.tile([0.0, math.log(0.25)], 20_000)  # heavy, light, heavy, light, ...
    states = independence_chain(lw, acceptance_scores(lw, np.arange(lw.size), 2), burn_in=0).states
    light = np.arange(3, lw.size, 2)
    from_heavy = light[lw[states[light - 1]] == 0.0]  # light proposals offered while at a heavy state
    assert abs(np.mean(states[from_heavy] == from_heavy) - 0.25) < 0.02
    heavy = np.arange(2, lw.size, 2)
    from_light = heavy[lw[states[heavy - 1]] < 0.0]  # heavy proposals offered while at a light state: taken
    assert from_light.size > 1000 and np.all(states[from_light] == from_light)
    lw = np.array([-np.inf, -np.inf, 0.0, -np.inf, 1.0])
    chain = independence_chain(lw, acceptance_scores(lw, np.arange(5), 0), burn_in=2)
    assert chain.start == 2 and chain.states[0] == 2 and chain.states[-1] in (2, 4)
    assert independence_chain(lw[2:3], np.zeros(1), burn_in=0).acceptance_rate is None
    with pytest.raises(ValueError, match="first 2 proposals have weight 0, more than the burn-in"):
        independence_chain(lw, acceptance_scores(lw, np.arange(5), 0), burn_in=1)


def test_mh_depends_on_the_rows_not_their_order():
    rng = np.random.default_rng(3)
    lw, ids = rng.normal(size=2000), rng.choice(10**6, 2000, replace=False).astype(np.int64)
    expected = mh_resample(lw, ids, 300, 5, burn_in=50)
    perm = rng.permutation(lw.size)
    got = mh_resample(lw[perm], ids[perm], 300, 5, burn_in=50)
    for a, b in zip(expected[:2], got[:2]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="needs as many samples"):
        mh_resample(lw, ids, 1990, 5, burn_in=11)


# --- config and the honest default α ----------------------------------------------------------------


def test_default_target_ess_is_k_capped_at_a_fraction_of_the_support():
    assert DEFAULT_TARGET_ESS_CAP == 0.5
    assert default_target_ess(100, 10_000) == 100.0
    assert default_target_ess(8000, 10_000) == 5000.0


@pytest.mark.parametrize("config, message", [
    ({"method": "gibbs"}, "method must be one of sir, rejection, mh"),
    ({"method": "mh", "replacement": True}, "replacement applies to method sir only"),
    ({"method": "rejection", "replacement": True}, "replacement applies to method sir only"),
    ({"rejection_quantile": 0.5}, "rejection_quantile applies to method rejection only, not sir"),
    ({"method": "mh", "rejection_gamma": 1.0}, "rejection_gamma applies to method rejection only"),
    ({"method": "rejection", "mh_burn_in": 5}, "mh_burn_in applies to method mh only"),
    ({"method": "rejection", "rejection_quantile": 0.0}, r"rejection_quantile must be in \(0, 1\]"),
    ({"method": "rejection", "rejection_quantile": 1.5}, r"rejection_quantile must be in \(0, 1\]"),
    ({"method": "rejection", "rejection_gamma": math.inf}, "rejection_gamma must be a finite number"),
    ({"method": "mh", "mh_burn_in": -1}, "mh_burn_in must be an integer >= 0"),
])
def test_bad_method_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        ResampleConfig(k=5, **config)


# --- on Ray -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    return make_pool()


@pytest.fixture(scope="module")
def sets(tmp_path_factory, pool):
    """The same rows as three sets: 3 contiguous shards, 5 shuffled shards (one with a single row),
    4 shards in descending weight order (the heaviest rows all in shard 0)."""
    root = tmp_path_factory.mktemp("method_sets")
    shuffled = np.random.default_rng(5).permutation(N)
    return {"a": write_set(root / "a", pool, np.array_split(np.arange(N), 3)),
            "b": write_set(root / "b", pool, np.split(shuffled, [37, 240, 241, 500])),
            "by_weight": write_set(root / "by_weight", pool, np.array_split(np.argsort(-pool["lw"]), 4))}


def transformed(pool, alpha=1.0, clip_max=None):
    return flatten(clip(lw64(pool), max_value=clip_max), alpha)


@pytest.mark.ray
@pytest.mark.parametrize("k, options", [
    (5, {"alpha": 1.0}),
    (400, {"alpha": 1.0}),  # fewer than k accepted: all of them
    (60, {"alpha": 0.4, "clip_max": math.exp(2.0)}),
    (60, {"alpha": 0.7, "rejection_quantile": 0.8, "rejection_gamma": -0.2}),
])
def test_rejection_on_ray_equals_the_single_process_draw(ray_local, sets, pool, k, options, monkeypatch):
    monkeypatch.setattr(topk_merge, "REQUEST_SLACK", 0)  # small requests: shard 0 of by_weight is re-queried
    lw_t = transformed(pool, options["alpha"], options.get("clip_max"))
    q = options.get("rejection_quantile")
    base = lw_t.max() if q is None else flatten(np.array([np.quantile(lw64(pool)[np.isfinite(pool["lw"])], q)]),
                                                options["alpha"])[0]
    bound = base + options.get("rejection_gamma", 0.0)
    expected, counts = rejection_sample(lw_t, pool["ids"], k, SEED, bound)
    for name in ("a", "b", "by_weight"):
        selection = select(sets[name], ResampleConfig(k=k, seed=SEED, method="rejection", **options))
        np.testing.assert_array_equal(selection.ids, expected)
        facts = selection.facts
        assert facts["rejection_log_bound"] == bound and facts["accepted"] == counts.accepted
        assert facts["proposals_per_accepted"] == pytest.approx(N / counts.expected, rel=1e-12)
        assert facts["rejection_exact"] == (q is None) and facts["rejection_capped"] == counts.capped
    assert (expected.size < k) == (k == 400)
    if q is not None:  # many accepted, the heavy shard capped: it must be (and was) asked again
        assert selection.requeried >= 1


@pytest.mark.ray
def test_mh_on_ray_equals_the_single_process_chain_even_when_short_of_proposals(ray_local, sets, pool,
                                                                                monkeypatch):
    lw_t = transformed(pool, 0.5)
    expected_ids, expected_copies, chain = mh_resample(lw_t, pool["ids"], 150, SEED, burn_in=30)
    config = ResampleConfig(k=150, seed=SEED, method="mh", mh_burn_in=30, alpha=0.5)
    for name in ("a", "b"):
        selection = select(sets[name], config)
        np.testing.assert_array_equal(selection.ids, expected_ids)
        np.testing.assert_array_equal(selection.copies, expected_copies)
        assert selection.passes == 1 and selection.facts["accepted"] == chain.accepted
        assert selection.facts["distinct_states"] == expected_ids.size
    monkeypatch.setattr(mh_draw, "key_bound", lambda needed, n: 0.3 * needed / n)  # first rounds fall short
    selection = select(sets["by_weight"], config)
    np.testing.assert_array_equal(selection.ids, expected_ids)
    assert selection.passes == 3 and selection.requeried == 2 * 4


@pytest.mark.ray
def test_the_default_alpha_meets_the_default_target_and_warns(ray_local, sets, pool):
    lw = lw64(pool)
    k = 50
    ess_one = effective_sample_size(lw)
    assert ess_one < k  # these weights are skewed: α = 1 would repeat a few samples
    selection = select(sets["a"], ResampleConfig(k=k, seed=SEED))
    target = default_target_ess(k, n_support(pool))
    assert selection.alpha_source == "default" and selection.choice.target_ess == target == k
    assert abs(selection.transform.alpha - alpha_for_target_ess(lw, target)) <= 1e-4
    assert selection.transformed.ess >= target and selection.passes == 1 + 4 + 1
    easy = select(sets["a"], ResampleConfig(k=3, seed=SEED))
    assert easy.transform.alpha == 1.0 and easy.passes == 2


@pytest.mark.ray
@pytest.mark.parametrize("method, options", [
    ("rejection", {"rejection_gamma": 0.5}),
    ("mh", {"mh_burn_in": 20}),
])
def test_stage_writes_the_method_output_with_its_facts(ray_local, sets, pool, tmp_path, method, options):
    config = ResampleConfig(k=40, seed=SEED, method=method, **options)
    spec = ResampleSpec(str(sets["b"]), str(tmp_path / "out"), config)
    result = resample_sample_set(spec)
    out = SampleSet(tmp_path / "out")
    assert verify_sample_set(out.path) == []
    data = out.read()
    selection = select(sets["a"], config)  # another layout: the same draw
    np.testing.assert_array_equal(data["sample_id"], selection.ids)
    rows = np.searchsorted(pool["ids"], data["sample_id"])
    np.testing.assert_array_equal(data["image"], pool["images"][rows])
    np.testing.assert_array_equal(data["log_weight"], pool["lw"][rows])
    recorded = out.manifest.info["resample"]
    assert recorded["method"] == method and recorded["alpha_source"] == "default"
    assert recorded["warning"].startswith("alpha=1 would give ESS") and "WARNING: alpha=1" in result.message
    assert recorded["ess_alpha_one"] == pytest.approx(effective_sample_size(lw64(pool)), rel=1e-12)
    assert 0 < recorded["acceptance_rate"] <= 1
    if method == "mh":
        np.testing.assert_array_equal(data["copies"], selection.copies)
        assert data["copies"].sum() == 40 == recorded["draws"] and recorded["mh_chain_length"] == 60
        assert recorded["distinct_states"] == data["sample_id"].size and "mh: " in result.message
    else:
        assert "copies" not in out.columns and recorded["draws"] == data["sample_id"].size <= 40
        assert recorded["proposals"] == N and "rejection: " in result.message
    assert is_complete(spec)
    other = "mh" if method == "rejection" else "rejection"
    assert not is_complete(ResampleSpec(spec.samples, spec.out, ResampleConfig(k=40, seed=SEED, method=other)))


@pytest.mark.ray
def test_cli_runs_the_methods_and_refuses_bad_flags(ray_local, sets, tmp_path, capsys):
    out = tmp_path / "mh"
    argv = ["resample", "--samples", str(sets["a"]), "--k", "60", "--out", str(out), "--no-mlflow"]
    assert cli_main.main([*argv, "--method", "mh", "--burn-in", "10", "--alpha", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # ESS ≈ 33 < k at alpha=1
    assert summary["method"] == "mh" and summary["mh_burn_in"] == 10 and summary["draws"] == 60
    assert summary["warning"].startswith("ESS") and summary["alpha_source"] == "given"
    for flags, message in [(["--method", "mh", "--replacement"], "replacement applies to method sir only"),
                           (["--method", "rejection", "--rejection-quantile", "1.5"], "rejection_quantile must be"),
                           (["--burn-in", "3"], "mh_burn_in applies to method mh only"),
                           (["--method", "mh", "--k", str(N + 1)], f"chain of burn-in + k = {N + 1} proposals")]:
        assert cli_main.main([*argv[:-3], "--out", str(tmp_path / "x"), "--no-mlflow", *flags]) == 2
        assert message in capsys.readouterr().err
