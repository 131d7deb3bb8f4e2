"""Choosing the rows on Ray: resolve the weight transform over the whole set, then draw sample ids.

SIR without replacement: every shard sends its best Gumbel-top-k candidates (``topk_merge``) and the
driver merges them exactly: the result equals ``gumbel_top_k`` on all rows, for any sharding. With
replacement a pass for the shard masses splits k across shards, then the shards that got draws draw
(``multinomial_shard``): exact in distribution, but the draw depends on the shard layout. The other
methods live in ``rejection_draw`` and ``mh_draw``, on the same pieces. No image is read here;
``Selection`` holds ids, the shard of each, and the facts the summary reports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rgm_ray.resample.alpha_search import alpha_for_target_ess_over_shards, clipped_sums
from rgm_ray.resample.config import ResampleConfig, default_target_ess
from rgm_ray.resample.log_sums import shard_log_sums
from rgm_ray.resample.mh_draw import draw_mh
from rgm_ray.resample.multinomial import split_counts_across_shards
from rgm_ray.resample.multinomial_shard import shard_multinomial
from rgm_ray.resample.radix_select import log_weight_quantile
from rgm_ray.resample.rejection_draw import draw_rejection
from rgm_ray.resample.selection_parts import (AlphaChoice, Selection, check_support, combined_sums,
                                              top_k_over_shards)
from rgm_ray.resample.shard_pool import ShardRunner, in_shard_order
from rgm_ray.resample.topk_merge import shard_candidates
from rgm_ray.resample.weight_transform import WeightTransform
from rgm_ray.runtime import init_ray
from rgm_ray.store import LOG_WEIGHT, SAMPLE_ID, SampleSet


def resolve_transform(runner: ShardRunner, config: ResampleConfig) -> AlphaChoice:
    """The transform to sample with: clip limits and α resolved over the whole set.

    Neither ``alpha`` nor ``target_ess``: α for ``default_target_ess`` (1 if the clipped weights
    already reach it), at the cost of one pass (plus four when α < 1).
    """
    log_floor = math.log(config.clip_min) if config.clip_min is not None else None
    log_cap = math.log(config.clip_max) if config.clip_max is not None else None
    if config.clip_quantile is not None:
        log_cap = log_weight_quantile(runner, config.clip_quantile)
    try:
        clip = WeightTransform(1.0, log_cap, log_floor)
    except ValueError as exc:
        raise ValueError(f"{runner.samples.path}: {exc}") from None
    if config.alpha is not None:
        return AlphaChoice(clip.with_alpha(float(config.alpha)), "given")
    at_one = clipped_sums(runner, clip)
    if config.target_ess is not None:
        target, source = float(config.target_ess), "target_ess"
    else:
        target, source = default_target_ess(config.k, at_one.n_support), "default"
    alpha = alpha_for_target_ess_over_shards(runner, clip, target, config.target_ess_tol, at_one)
    return AlphaChoice(clip.with_alpha(alpha), source, target, at_one)


def _top_k(runner: ShardRunner, config: ResampleConfig, choice: AlphaChoice) -> Selection:
    merged = top_k_over_shards(
        runner, config.k, shard_candidates,
        lambda request, threshold, below: (choice.transform, request, config.seed, threshold, below),
        lambda found: (found.raw, found.transformed),
        lambda sums: check_support(runner.samples, combined_sums(sums)[1], config), desc="resample: top-k")
    raw, transformed = combined_sums(merged.facts)
    return Selection(ids=merged.ids, copies=None, shards=merged.shards, choice=choice, raw=raw,
                     transformed=transformed, passes=runner.rounds, candidates=merged.received,
                     requeried=merged.requeried)


def _with_replacement(runner: ShardRunner, config: ResampleConfig, choice: AlphaChoice) -> Selection:
    transform = choice.transform
    sums = in_shard_order(runner.map(shard_log_sums, lambda s: (transform,), desc="resample: masses"))
    raw, transformed = combined_sums(sums)
    check_support(runner.samples, transformed, config)
    per_shard = split_counts_across_shards([t.log_mass for _, t in sums], config.k, config.seed)
    drawn = runner.map(shard_multinomial, lambda s: (transform, int(per_shard[s]), config.seed, s),
                       shards=[int(s) for s in np.flatnonzero(per_shard)], desc="resample: draw")
    ids = np.concatenate([drawn[s][0] for s in sorted(drawn)])
    copies = np.concatenate([drawn[s][1] for s in sorted(drawn)])
    shards = np.concatenate([np.full(drawn[s][0].size, s, dtype=np.int32) for s in sorted(drawn)])
    order = np.argsort(ids, kind="stable")
    return Selection(ids=ids[order], copies=copies[order], shards=shards[order], choice=choice, raw=raw,
                     transformed=transformed, passes=runner.rounds, candidates=int(ids.size), requeried=0)


def check_size(samples: SampleSet, config: ResampleConfig) -> None:
    """Refuse draws the set's row count (from its manifest) rules out, before any Ray work."""
    n = len(samples)
    if config.target_ess is not None and config.target_ess > n:
        raise ValueError(f"{samples.path}: target_ess={config.target_ess} exceeds the {n} rows of the set "
                         "(an effective sample size is at most the number of rows); lower --target-ess")
    if config.method == "sir" and not config.replacement and config.k > n:
        raise ValueError(f"{samples.path}: k={config.k} exceeds the {n} rows of the set "
                         "(without replacement); lower k or use --replacement")
    if config.method == "mh" and config.mh_chain_length > n:
        raise ValueError(f"{samples.path}: an mh chain of burn-in + k = {config.mh_chain_length} proposals "
                         f"needs as many rows, the set has {n}; lower k or the burn-in")


def _draw_for(config: ResampleConfig) -> Callable[[ShardRunner, ResampleConfig, AlphaChoice], Selection]:
    if config.method == "sir":
        return _with_replacement if config.replacement else _top_k
    return draw_rejection if config.method == "rejection" else draw_mh


def select(samples: SampleSet | str | Path, config: ResampleConfig, *, address: str | None = None,
           progress: Callable[..., Any] | None = None) -> Selection:
    """Choose the rows (ids only) on Ray with ``config.method``; no images are read."""
    samples = samples if isinstance(samples, SampleSet) else SampleSet(samples)
    samples.require_columns(SAMPLE_ID, LOG_WEIGHT)
    check_size(samples, config)
    init_ray(address)
    runner = ShardRunner(samples, progress=progress)
    return _draw_for(config)(runner, config, resolve_transform(runner, config))
