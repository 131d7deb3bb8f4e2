"""Choosing the rows on Ray: resolve the weight transform over the whole set, then draw k sample ids.

Without replacement every shard sends its best Gumbel-top-k candidates (``topk_merge``) and the
driver merges them exactly: the result equals ``gumbel_top_k`` on all rows, for any sharding. With
replacement a pass for the shard masses splits k across shards, then the shards that got draws draw
(``multinomial_shard``): exact in distribution, but the draw depends on the shard layout. No image is
read here; ``Selection`` holds ids, the shard of each, and the facts the summary reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rgm_ray.resample.alpha_search import alpha_for_target_ess_over_shards
from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.log_sums import LogSums, shard_log_sums
from rgm_ray.resample.multinomial import split_counts_across_shards
from rgm_ray.resample.multinomial_shard import shard_multinomial
from rgm_ray.resample.radix_select import log_weight_quantile
from rgm_ray.resample.shard_pool import ShardRunner, in_shard_order
from rgm_ray.resample.topk_merge import ShardCandidates, TopKMerger, shard_candidates, shard_requests
from rgm_ray.resample.weight_transform import WeightTransform
from rgm_ray.runtime import init_ray
from rgm_ray.store import LOG_WEIGHT, SAMPLE_ID, SampleSet


@dataclass(frozen=True)
class Selection:
    """The chosen rows (output order) and the facts the summary reports."""

    ids: np.ndarray  # [rows] sample ids, output order
    copies: np.ndarray | None  # [rows] with replacement, else None
    shards: np.ndarray  # [rows] index of the input shard holding each row
    transform: WeightTransform
    alpha_source: str  # "default" | "given" | "target_ess"
    raw: LogSums  # of the stored log-weights
    transformed: LogSums  # of the log-weights actually sampled from
    passes: int  # rounds of shard tasks before the row pass
    candidates: int  # (id, key) pairs sent to the driver
    requeried: int  # shards asked a second time (their capped candidate list might hide winners)


def resolve_transform(runner: ShardRunner, config: ResampleConfig) -> tuple[WeightTransform, str]:
    """The transform to sample with (clip limits and α resolved over the whole set) and α's origin."""
    log_floor = math.log(config.clip_min) if config.clip_min is not None else None
    log_cap = math.log(config.clip_max) if config.clip_max is not None else None
    if config.clip_quantile is not None:
        log_cap = log_weight_quantile(runner, config.clip_quantile)
    try:
        clip = WeightTransform(1.0, log_cap, log_floor)
    except ValueError as exc:
        raise ValueError(f"{runner.samples.path}: {exc}") from None
    if config.target_ess is not None:
        alpha = alpha_for_target_ess_over_shards(runner, clip, config.target_ess, config.target_ess_tol)
        return clip.with_alpha(alpha), "target_ess"
    if config.alpha is not None:
        return clip.with_alpha(float(config.alpha)), "given"
    return clip, "default"


def _check_support(samples: SampleSet, sums: LogSums, config: ResampleConfig) -> None:
    if sums.n_support == 0:
        raise ValueError(f"{samples.path}: every log_weight is -inf (all weights are 0); nothing to resample")
    if not config.replacement and config.k > sums.n_support:
        raise ValueError(f"{samples.path}: k={config.k} exceeds the {sums.n_support} samples with non-zero "
                         "weight; lower k or use --replacement")


def _top_k(runner: ShardRunner, config: ResampleConfig, transform: WeightTransform, alpha_source: str) -> Selection:
    merger = TopKMerger(config.k)
    sums: dict[int, tuple[LogSums, LogSums]] = {}
    requests = shard_requests([s.rows for s in runner.samples.manifest.shards], config.k)

    def take(shard: int, found: ShardCandidates) -> None:
        merger.add(shard, found.ids, found.keys, found.cut)
        sums.setdefault(shard, (found.raw, found.transformed))

    runner.map(shard_candidates, lambda s: (transform, requests[s], config.seed, merger.threshold),
               on_result=take, desc="resample: top-k")
    raw, transformed = (LogSums.combine(parts) for parts in zip(*in_shard_order(sums)))
    _check_support(runner.samples, transformed, config)
    hidden = merger.hiding()
    if hidden:  # capped shards whose unsent rows might still win: ask for everything below their cut
        runner.map(shard_candidates, lambda s: (transform, config.k, config.seed, merger.threshold, hidden[s]),
                   shards=sorted(hidden), on_result=take, desc="resample: re-query")
    ids, shards = merger.finish()
    return Selection(ids=ids, copies=None, shards=shards, transform=transform, alpha_source=alpha_source, raw=raw,
                     transformed=transformed, passes=runner.rounds, candidates=merger.received,
                     requeried=len(hidden))


def _with_replacement(runner: ShardRunner, config: ResampleConfig, transform: WeightTransform,
                      alpha_source: str) -> Selection:
    sums = in_shard_order(runner.map(shard_log_sums, lambda s: (transform,), desc="resample: masses"))
    raw, transformed = (LogSums.combine(parts) for parts in zip(*sums))
    _check_support(runner.samples, transformed, config)
    per_shard = split_counts_across_shards([t.log_mass for _, t in sums], config.k, config.seed)
    drawn = runner.map(shard_multinomial, lambda s: (transform, int(per_shard[s]), config.seed, s),
                       shards=[int(s) for s in np.flatnonzero(per_shard)], desc="resample: draw")
    ids = np.concatenate([drawn[s][0] for s in sorted(drawn)])
    copies = np.concatenate([drawn[s][1] for s in sorted(drawn)])
    shards = np.concatenate([np.full(drawn[s][0].size, s, dtype=np.int32) for s in sorted(drawn)])
    order = np.argsort(ids, kind="stable")
    return Selection(ids=ids[order], copies=copies[order], shards=shards[order], transform=transform,
                     alpha_source=alpha_source, raw=raw, transformed=transformed, passes=runner.rounds,
                     candidates=int(ids.size), requeried=0)


def select(samples: SampleSet | str | Path, config: ResampleConfig, *, address: str | None = None,
           progress: Callable[..., Any] | None = None) -> Selection:
    """Choose the rows (ids only) on Ray; no images are read."""
    samples = samples if isinstance(samples, SampleSet) else SampleSet(samples)
    samples.require_columns(SAMPLE_ID, LOG_WEIGHT)
    if not config.replacement and config.k > len(samples):
        raise ValueError(f"{samples.path}: k={config.k} exceeds the {len(samples)} rows of the set "
                         "(without replacement); lower k or use --replacement")
    init_ray(address)
    runner = ShardRunner(samples, progress=progress)
    transform, alpha_source = resolve_transform(runner, config)
    draw = _with_replacement if config.replacement else _top_k
    return draw(runner, config, transform, alpha_source)
