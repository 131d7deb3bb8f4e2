"""The resample stage: exact, sharding-invariant selection on Ray, output sets, transforms, errors, CLI.

Reference results come from the single-process functions (``gumbel_top_k``, ``clip``, ``flatten``,
``alpha_for_target_ess``, ``np.quantile``) applied to all rows gathered in memory.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from rgm_ray.bench.resample import bench_resample
from rgm_ray.cli import main as cli_main
from rgm_ray.resample import gumbel_top_k
from rgm_ray.resample import topk_merge
from rgm_ray.resample.alpha_search import search_alpha
from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.log_sums import LogSums
from rgm_ray.resample.multinomial import multinomial_within_shard, split_counts_across_shards
from rgm_ray.resample.radix_select import RadixSelect, lerp, quantile_ranks, shard_digit_counts
from rgm_ray.resample.selection import select
from rgm_ray.resample.shard_io import shard_rows
from rgm_ray.resample.stage import ResampleSpec, is_complete, resample_sample_set
from rgm_ray.resample.topk_merge import TopKMerger, shard_candidates
from rgm_ray.resample.weight_transform import WeightTransform
from rgm_ray.store import SampleSet, SampleSetWriter, decode_images, make_table, verify_sample_set
from rgm_ray.weigh.transforms import (alpha_for_target_ess, clip, effective_sample_size, flatten,
                                      log_total_weight, max_normalized_weight)

N = 600
SEED = 11


def make_pool(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows with sparse ids, float32 log-weights (a few -inf) and random images/labels."""
    rng = np.random.default_rng(seed)
    lw = rng.normal(scale=2.0, size=n).astype(np.float32)
    lw[rng.choice(n, 7, replace=False)] = -np.inf
    return {"ids": np.sort(rng.choice(20 * n, n, replace=False)).astype(np.int64), "lw": lw,
            "images": rng.integers(0, 256, (n, 1, 3, 3), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).astype(np.int16)}


def write_set(path, pool, rows_per_shard: list[np.ndarray], *, log_weight=None):
    """A sample set whose shard s holds the pool rows ``rows_per_shard[s]`` (any order)."""
    lw = pool["lw"] if log_weight is None else log_weight
    with SampleSetWriter(path, source="test:pool") as writer:
        for rows in rows_per_shard:
            extra = {} if lw is False else {"log_weight": lw[rows]}
            writer.write(make_table(pool["ids"][rows], pool["images"][rows], pool["labels"][rows],
                                    source="test:pool", extra=extra))
    return path


@pytest.fixture(scope="module")
def pool():
    return make_pool()


@pytest.fixture(scope="module")
def sets(tmp_path_factory, pool):
    """The same rows as three sets: 3 contiguous shards, 5 shards of shuffled rows, and 4 shards in
    descending weight order (the heaviest rows all in shard 0)."""
    root = tmp_path_factory.mktemp("sets")
    shuffled = np.random.default_rng(5).permutation(N)
    heaviest_first = np.argsort(-pool["lw"], kind="stable")
    return {"a": write_set(root / "a", pool, np.array_split(np.arange(N), 3)),
            "b": write_set(root / "b", pool, np.split(shuffled, [37, 240, 241, 500])),
            "by_weight": write_set(root / "by_weight", pool, np.array_split(heaviest_first, 4))}


def lw64(pool) -> np.ndarray:
    return pool["lw"].astype(np.float64)


def reference(pool, k, seed, *, alpha=1.0, clip_max=None, clip_min=None, quantile=None):
    transformed = clip(lw64(pool), max_value=clip_max, floor=clip_min, quantile=quantile)
    return gumbel_top_k(flatten(transformed, alpha), pool["ids"], k, seed)


def n_support(pool) -> int:
    return int(np.isfinite(pool["lw"]).sum())


# --- pure pieces (no Ray) ---------------------------------------------------------------------


def test_log_sums_combine_exactly_over_any_split(pool):
    lw = lw64(pool)
    parts = [lw[:0], lw[:100], np.full(5, -np.inf), lw[100:101], lw[101:]]
    total = LogSums.combine([LogSums.of(p) for p in reversed(parts)])
    assert total.n == N + 5 and total.n_support == n_support(pool)
    assert total.ess == pytest.approx(effective_sample_size(lw), rel=1e-12)
    assert total.log_mass == pytest.approx(log_total_weight(lw), rel=1e-12)
    assert total.max_share == pytest.approx(max_normalized_weight(lw), rel=1e-12)
    assert LogSums.combine([LogSums.of(np.full(3, -np.inf))]).ess == 0.0


def test_weight_transform_is_clip_then_flatten(pool):
    lw = lw64(pool)
    t = WeightTransform(alpha=0.3, log_cap=math.log(5.0), log_floor=math.log(0.01))
    expected = flatten(clip(lw, max_value=5.0, floor=0.01), 0.3)
    np.testing.assert_array_equal(t.apply(lw), expected)
    np.testing.assert_array_equal(WeightTransform(alpha=0.0).apply(lw), flatten(lw, 0.0))
    assert WeightTransform().apply(lw) is lw
    with pytest.raises(ValueError, match="above the upper clip"):
        WeightTransform(log_cap=0.0, log_floor=1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_radix_select_gives_numpy_quantiles_exactly(tmp_path, dtype):
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(scale=3.0, size=997), [0.0, -0.0, 2.5, 2.5, 2.5]]).astype(dtype)
    values[:4] = -np.inf
    paths = []
    for s, part in enumerate(np.array_split(rng.permutation(values), 4)):
        paths.append(tmp_path / f"{s}.parquet")
        pq.write_table(pa.table({"log_weight": part}), paths[-1])
    finite = values[np.isfinite(values)].astype(np.float64)
    for q in (1e-3, 0.25, 0.5, 0.9, 0.999, 1.0):
        radix = RadixSelect(np.dtype(dtype), lambda n: quantile_ranks(q, n)[:2])
        rounds = 0
        while not radix.done:
            queries = radix.queries()
            radix.update([shard_digit_counts(p, queries) for p in paths])
            rounds += 1
        assert rounds == np.dtype(dtype).itemsize * 8 // 16
        low, high = radix.values()
        assert lerp(low, high, quantile_ranks(q, radix.n_finite)[2]) == np.quantile(finite, q)


def test_search_alpha_brackets_like_the_single_process_bisection(pool):
    lw = lw64(pool)
    tol = 1e-4
    for target in (50.0, 100.0, 400.0):  # between ESS(1) ≈ 33 and the support size (593)
        alpha, rounds = search_alpha(lambda alphas: [effective_sample_size(flatten(lw, a)) for a in alphas],
                                     target, tol=tol)
        assert rounds == 4
        assert effective_sample_size(flatten(lw, alpha)) >= target
        assert effective_sample_size(flatten(lw, alpha + tol)) < target
        assert abs(alpha - alpha_for_target_ess(lw, target, tol=tol)) <= tol


def test_merger_is_exact_for_any_arrival_order_thresholds_and_caps(tmp_path, pool):
    """Shards arrive in reverse order, filter with the threshold known at their turn and send at most
    ``request`` rows; the ones that may hide winners are re-queried below their cut."""
    paths = []
    for s, rows in enumerate(np.array_split(np.arange(N), 12)):
        paths.append(tmp_path / f"{s}.parquet")
        pq.write_table(pa.table({"sample_id": pool["ids"][rows], "log_weight": pool["lw"][rows]}), paths[-1])
    for k, request in [(1, 1), (30, 30), (30, 3), (300, 40), (N - 7, 10)]:
        merger = TopKMerger(k)
        unfiltered = 0
        for s in reversed(range(len(paths))):
            found = shard_candidates(paths[s], WeightTransform(), request, SEED, merger.threshold)
            merger.add(s, found.ids, found.keys, found.cut)
            unfiltered += min(k, found.transformed.n_support)
        hidden = merger.hiding()
        if request >= k:  # a shard that sent k rows holds back only rows below the k-th best
            assert not hidden
        if k == N - 7:  # the whole support is selected: every capped shard hides winners
            assert len(hidden) == 12
        for s, cut in hidden.items():
            found = shard_candidates(paths[s], WeightTransform(), k, SEED, merger.threshold, cut)
            merger.add(s, found.ids, found.keys, found.cut)
        ids, shards = merger.finish()
        np.testing.assert_array_equal(ids, reference(pool, k, SEED))
        assert merger.received <= unfiltered
        if k < N - 7:
            assert merger.received < unfiltered  # thresholds and caps spared rows that could not win
        owner = np.searchsorted(pool["ids"], ids) // (N // 12)
        np.testing.assert_array_equal(shards, owner)


def test_shard_rows_reads_the_chosen_rows_across_row_groups(tmp_path, pool):
    path = tmp_path / "rows.parquet"
    table = make_table(pool["ids"], pool["images"], pool["labels"], source="t", extra={"log_weight": pool["lw"]})
    pq.write_table(table, path, row_group_size=7)  # 86 row groups
    rows = np.array([0, 6, 7, 300, 301, 599])
    got = shard_rows(path, pool["ids"][rows[::-1]])
    np.testing.assert_array_equal(got.column("sample_id").to_numpy(), pool["ids"][rows])
    np.testing.assert_array_equal(decode_images(got.column("image"), (1, 3, 3)), pool["images"][rows])
    np.testing.assert_array_equal(got.column("log_weight").to_numpy(), pool["lw"][rows])
    with pytest.raises(ValueError, match="1 selected sample id"):
        shard_rows(path, np.array([pool["ids"][0], -5]))


def test_merger_refuses_to_finish_while_a_shard_may_hide_winners(tmp_path, pool):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"sample_id": pool["ids"], "log_weight": pool["lw"]}), path)
    merger = TopKMerger(10)
    found = shard_candidates(path, WeightTransform(), 4, SEED)
    merger.add(0, found.ids, found.keys, found.cut)
    with pytest.raises(RuntimeError, match="re-query"):
        merger.finish()


# --- the stage on Ray ---------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize("k, options", [
    (1, {"alpha": 1.0}),
    (37, {"alpha": 1.0}),
    (200, {"alpha": 0.5, "clip_max": math.exp(2.0), "clip_min": math.exp(-3.0)}),
    (N - 7, {"alpha": 1.0}),  # the whole support
])
def test_selection_equals_gumbel_top_k_for_two_shardings(ray_local, sets, pool, k, options):
    expected = reference(pool, k, SEED, **options)
    for name in ("a", "b", "by_weight"):
        selection = select(sets[name], ResampleConfig(k=k, seed=SEED, **options))
        np.testing.assert_array_equal(selection.ids, expected)
        assert selection.passes == 1 + (selection.requeried > 0)


@pytest.mark.ray
def test_shards_holding_the_heavy_rows_are_requeried(ray_local, sets, pool, monkeypatch):
    """All the heaviest rows in shard 0: asked for twice its share by row count (70 of 150 rows), it
    holds back winners, so it must be asked again."""
    monkeypatch.setattr(topk_merge, "REQUEST_SLACK", 0)
    selection = select(sets["by_weight"], ResampleConfig(k=140, seed=SEED, alpha=1.0))
    assert selection.requeried >= 1 and selection.passes == 2
    np.testing.assert_array_equal(selection.ids, reference(pool, 140, SEED))


@pytest.mark.ray
def test_output_set_holds_the_chosen_rows_in_selection_order(ray_local, sets, pool, tmp_path):
    result = resample_sample_set(ResampleSpec(str(sets["b"]), str(tmp_path / "out"),
                                              ResampleConfig(k=50, seed=SEED, shard_size=16, alpha=1.0)))
    summary = result.to_dict()
    assert is_complete(ResampleSpec(str(sets["b"]), str(tmp_path / "out"), ResampleConfig(k=50, seed=SEED,
                                                                                           shard_size=16, alpha=1.0)))
    assert not is_complete(ResampleSpec(str(sets["b"]), str(tmp_path / "out"), ResampleConfig(k=49, seed=SEED)))
    out = SampleSet(tmp_path / "out")
    assert verify_sample_set(out.path) == [] and len(out.shard_paths) == 4
    data = out.read()
    np.testing.assert_array_equal(data["sample_id"], reference(pool, 50, SEED))
    rows = np.searchsorted(pool["ids"], data["sample_id"])
    np.testing.assert_array_equal(data["image"], pool["images"][rows])
    np.testing.assert_array_equal(data["label"], pool["labels"][rows])
    np.testing.assert_array_equal(data["log_weight"], pool["lw"][rows])  # original, untransformed
    assert "copies" not in out.columns and out.source == "test:pool"
    recorded = out.manifest.info["resample"]
    assert recorded["k"] == 50 and recorded["unique"] == 50 and recorded["n"] == N
    assert summary["ess_before"] == pytest.approx(effective_sample_size(lw64(pool)), rel=1e-12)
    assert summary["ess_after"] == summary["ess_before"] and summary["alpha_source"] == "given"


@pytest.mark.ray
def test_with_replacement_copies_and_equality_with_the_per_shard_draw(ray_local, sets, pool, tmp_path):
    k = 500
    config = ResampleConfig(k=k, seed=SEED, replacement=True, alpha=0.7)
    resample_sample_set(ResampleSpec(str(sets["a"]), str(tmp_path / "out"), config))
    data = SampleSet(tmp_path / "out").read()
    assert data["copies"].sum() == k and (data["copies"] >= 1).all()
    assert (np.diff(data["sample_id"]) > 0).all()
    rows = np.searchsorted(pool["ids"], data["sample_id"])
    np.testing.assert_array_equal(data["image"], pool["images"][rows])
    np.testing.assert_array_equal(data["log_weight"], pool["lw"][rows])
    assert np.isfinite(data["log_weight"]).all()
    # Exactly the documented two-level draw on set a's layout: split over shards, then within each.
    lw = flatten(lw64(pool), 0.7)
    shards = np.array_split(np.arange(N), 3)
    per_shard = split_counts_across_shards([log_total_weight(lw[r]) for r in shards], k, SEED)
    draws = [multinomial_within_shard(lw[r], pool["ids"][r], int(c), SEED, s)
             for s, (r, c) in enumerate(zip(shards, per_shard))]
    np.testing.assert_array_equal(data["sample_id"], np.concatenate([d[0] for d in draws]))
    np.testing.assert_array_equal(data["copies"], np.concatenate([d[1] for d in draws]))


@pytest.mark.ray
def test_with_replacement_counts_follow_the_multinomial(ray_local, tmp_path):
    """Counts pooled over fixed seeds against Multinomial(seeds·k, w̃): a fixed p-value, not flaky."""
    small = make_pool(9, seed=2)
    small["lw"] = np.append(np.log(np.arange(1, 9, dtype=np.float32)), np.float32(-np.inf))  # last weight is 0
    path = write_set(tmp_path / "small", small, [np.arange(4), np.arange(4, 5), np.arange(5, 9)])
    k, seeds = 300, range(12)
    totals = np.zeros(9)
    for seed in seeds:
        selection = select(path, ResampleConfig(k=k, seed=seed, replacement=True, alpha=1.0))
        totals[np.searchsorted(small["ids"], selection.ids)] += selection.copies
    assert totals[8] == 0
    p = np.arange(1, 9) / 36
    assert stats.chisquare(totals[:8], len(seeds) * k * p).pvalue > 1e-3


@pytest.mark.ray
def test_target_ess_picks_the_largest_alpha_meeting_it(ray_local, sets, pool):
    lw = lw64(pool)
    tol = 1e-4
    target = 100.0
    selection = select(sets["b"], ResampleConfig(k=20, seed=SEED, target_ess=target, target_ess_tol=tol))
    alpha = selection.transform.alpha
    assert selection.alpha_source == "target_ess" and selection.passes == 1 + 4 + 1
    assert selection.transformed.ess >= target
    assert effective_sample_size(flatten(lw, alpha)) >= target > effective_sample_size(flatten(lw, alpha + tol))
    assert abs(alpha - alpha_for_target_ess(lw, target, tol=tol)) <= tol
    np.testing.assert_array_equal(selection.ids, reference(pool, 20, SEED, alpha=alpha))
    easy = select(sets["a"], ResampleConfig(k=20, seed=SEED, target_ess=2.0))
    assert easy.transform.alpha == 1.0 and easy.passes == 2


@pytest.mark.ray
def test_clip_quantile_is_the_exact_global_quantile(ray_local, sets, pool):
    selection = select(sets["b"], ResampleConfig(k=40, seed=SEED, clip_quantile=0.9, alpha=0.8))
    finite = lw64(pool)[np.isfinite(pool["lw"])]
    assert selection.transform.log_cap == np.quantile(finite, 0.9)
    assert selection.passes == 2 + 1
    np.testing.assert_array_equal(selection.ids, reference(pool, 40, SEED, alpha=0.8, quantile=0.9))


@pytest.mark.ray
def test_alpha_zero_is_uniform_over_the_support(ray_local, sets, pool):
    selection = select(sets["a"], ResampleConfig(k=100, seed=SEED, alpha=0.0))
    support = np.isfinite(pool["lw"])
    uniform = np.where(support, 0.0, -np.inf)
    np.testing.assert_array_equal(selection.ids, gumbel_top_k(uniform, pool["ids"], 100, SEED))
    assert np.isin(selection.ids, pool["ids"][support]).all()
    assert selection.transformed.ess == n_support(pool)
    assert selection.transformed.max_share == pytest.approx(1.0 / n_support(pool))


@pytest.mark.ray
@pytest.mark.parametrize("damage, config, message", [
    ("nan", {"k": 5}, r"shard-00001\.parquet: log_weight contains 2 NaN"),
    ("posinf", {"k": 5}, r"log_weight contains 1 \+inf"),
    ("zero", {"k": 5}, "every log_weight is -inf"),
    ("missing", {"k": 5}, "no column.* log_weight"),
    (None, {"k": N + 1}, f"k={N + 1} exceeds the {N} rows"),
    (None, {"k": N - 6}, f"k={N - 6} exceeds the {N - 7} samples with non-zero weight"),
    (None, {"k": 5, "target_ess": 598.0}, "target_ess=598.0 exceeds the 593 samples"),  # > N: test_cli_validation
    (None, {"k": 5, "clip_quantile": 0.1, "clip_min": 100.0}, "lower clip .* is above the upper clip"),
])
def test_bad_inputs_fail_clearly_naming_the_set(ray_local, pool, tmp_path, damage, config, message):
    lw = pool["lw"].copy()
    if damage == "nan":
        lw[[300, 310]] = np.nan
    elif damage == "posinf":
        lw[5] = np.inf
    elif damage == "zero":
        lw[:] = -np.inf
    path = write_set(tmp_path / "bad", pool, np.array_split(np.arange(N), 2),
                     log_weight=False if damage == "missing" else lw)
    with pytest.raises(ValueError, match=message) as info:
        select(path, ResampleConfig(**config))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("config, message", [
    ({"k": 0}, "k must be an integer >= 1"),
    ({"k": -3}, "k must be an integer >= 1"),
    ({"k": 2.5}, "k must be an integer"),
    ({"k": 5, "alpha": 0.5, "target_ess": 10}, "either alpha or target_ess"),
    ({"k": 5, "alpha": 1.5}, "alpha must be"),
    ({"k": 5, "clip_max": 2.0, "clip_quantile": 0.5}, "at most one of clip_max and clip_quantile"),
    ({"k": 5, "clip_quantile": 0.0}, "clip_quantile must be in"),
    ({"k": 5, "clip_min": -1.0}, "clip_min must be a positive"),
    ({"k": 5, "seed": -1}, "seed must be"),
])
def test_bad_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        ResampleConfig(**config)


@pytest.mark.ray
def test_cli_end_to_end_with_json_and_mlflow(ray_local, sets, tmp_path, tracking_uri, capsys):
    out = tmp_path / "drawn"
    argv = ["resample", "--samples", str(sets["a"]), "--k", "25", "--seed", "3", "--out", str(out),
            "--target-ess", "300", "--clip-quantile", "0.95", "--replacement"]
    assert cli_main.main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["alpha_source"] == "target_ess" and summary["ess_after"] >= 300
    assert summary["k"] == 25 and summary["replacement"] and summary["out"] == str(out)
    assert SampleSet(out).read(["copies"])["copies"].sum() == 25
    import mlflow

    runs = mlflow.search_runs(experiment_names=["rgm_ray"])
    assert len(runs) == 1 and runs["metrics.ess_after"].iloc[0] == pytest.approx(summary["ess_after"])

    assert cli_main.main([*argv, "--no-mlflow"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    bad = write_set(tmp_path / "nan", make_pool(20), [np.arange(20)], log_weight=np.full(20, np.nan, np.float32))
    assert cli_main.main(["resample", "--samples", str(bad), "--k", "2", "--out", str(tmp_path / "x"),
                          "--no-mlflow"]) == 2
    assert f"{bad}/shard-00000.parquet: log_weight contains 20 NaN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main.main([*argv, "--alpha", "0.5"])  # --alpha and --target-ess exclude each other


@pytest.mark.ray
def test_bench_reports_both_parts_and_checks_the_sharded_result(ray_local, tmp_path):
    result = bench_resample(20_000, 1_000, shards=7, n_disk=30_000, seed=1, workdir=tmp_path)
    assert json.loads(json.dumps(result)) == result  # JSON-able as is
    sharded = result["sharded"]
    assert sharded["equals_gumbel_top_k"] and sharded["n"] == 30_000 and sharded["shards"] == 7
    assert sharded["select_seconds"] > 0 and sharded["memory_bytes"]["driver_peak_rss"] > 0
    assert sharded["input_check_seconds"] > 0  # the set it wrote passes the stage's input check
    assert len(sharded["memory_bytes"]["worker_peak_rss"]) >= 1
    assert result["in_process"]["gumbel_top_k_seconds"] > 0 and result["in_process"]["speedup"] > 0
    for method in ("rejection", "mh"):
        timed = sharded["methods"][method]
        assert timed["equals_reference"] and timed["select_seconds"] > 0 and 0 < timed["acceptance_rate"] <= 1
        assert result["in_process"]["methods"][method]["seconds"] > 0
    again = bench_resample(2_000, 10, shards=7, n_disk=30_000, seed=1, workdir=tmp_path, methods=("sir",))
    assert again["sharded"]["reused"] and again["sharded"]["methods"] == {}
