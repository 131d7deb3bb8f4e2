"""Rejection sampling over a sharded set, on Ray: the same rows as ``rejection_sample`` on all rows.

Passes: the bound, then one over ``sample_id`` + ``log_weight``. The bound ``log M`` is the
transform of the clipped weights' maximum (their α = 1 sums: already known when α was chosen for a
target ESS, else one pass over ``log_weight``) or of the exact q-quantile of the stored log-weights
(``radix_select``: 2 rounds for float32), plus γ. In the second pass every shard decides its own
acceptances (coins from ``(seed, sample_id)``, so the accepted set does not depend on the sharding)
and sends its accepted rows with the smallest proposal keys: the first k accepted in proposal order
are a top-k of ``−key``, so ``top_k_over_shards`` (the Gumbel top-k's merge, thresholds and
re-query rule) finds them exactly; each shard also sends its counts (accepted, Σ a_i, capped).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rgm_ray.resample.alpha_search import clipped_sums
from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.counter_rng import validate_sample_ids
from rgm_ray.resample.log_sums import LogSums, read_transformed
from rgm_ray.resample.proposals import proposal_keys
from rgm_ray.resample.radix_select import log_weight_quantile
from rgm_ray.resample.rejection import Acceptance, accept
from rgm_ray.resample.selection_parts import AlphaChoice, Selection, check_support, combined_sums, top_k_over_shards
from rgm_ray.resample.shard_pool import ShardRunner
from rgm_ray.resample.summary import (KEY_ACCEPTANCE_RATE, KEY_ACCEPTED, KEY_EXPECTED_ACCEPTANCE_RATE, KEY_PROPOSALS,
                                      KEY_PROPOSALS_PER_ACCEPTED, KEY_REJECTION_BOUND, KEY_REJECTION_CAPPED,
                                      KEY_REJECTION_EXACT, KEY_REJECTION_LOG_BOUND)
from rgm_ray.resample.topk_merge import capped_candidates
from rgm_ray.resample.weight_transform import WeightTransform


@dataclass(frozen=True)
class ShardAcceptances:
    """One shard's candidates for the first k accepted (key ``−v``, see ``capped_candidates``), its sums
    and its acceptance counts."""

    ids: np.ndarray
    keys: np.ndarray
    cut: float
    raw: LogSums
    transformed: LogSums
    acceptance: Acceptance


def shard_acceptances(path: str | Path, transform: WeightTransform, log_bound: float, seed: int, request: int,
                      threshold: float = -math.inf, below: float = math.inf) -> ShardAcceptances:
    """Accept this shard's rows against ``log_bound``; send the ``request`` accepted rows proposed first
    among those with ``threshold ≤ −v < below``."""
    ids, lw_t, raw, transformed = read_transformed(path, transform)
    accepted, counts = accept(lw_t, validate_sample_ids(ids, lw_t.size), seed, log_bound)
    ids = ids[accepted]
    return ShardAcceptances(*capped_candidates(ids, -proposal_keys(ids, seed), request, threshold, below),
                            raw, transformed, counts)


def rejection_bound(runner: ShardRunner, config: ResampleConfig, choice: AlphaChoice) -> tuple[float, AlphaChoice]:
    """``(log M, choice with the α = 1 sums if this made them)``: see ``rejection``."""
    transform = choice.transform
    if config.rejection_quantile is None:
        if choice.at_one is None:
            choice = dataclasses.replace(choice, at_one=clipped_sums(runner, transform.with_alpha(1.0)))
        base = choice.at_one.max
    else:
        base = log_weight_quantile(runner, config.rejection_quantile)
    return float(transform.apply(np.array([base]))[0]) + config.rejection_gamma, choice


def _totals(per_shard: list[ShardAcceptances]) -> tuple[LogSums, LogSums, Acceptance]:
    """``(raw, transformed, acceptance)`` over the set from each shard's first answer."""
    raw, transformed = combined_sums([(found.raw, found.transformed) for found in per_shard])
    return raw, transformed, Acceptance.combine([found.acceptance for found in per_shard])


def _counts_only(found: ShardAcceptances) -> ShardAcceptances:
    """What the driver keeps of a shard's answer after merging its candidates: its sums and counts."""
    return dataclasses.replace(found, ids=found.ids[:0], keys=found.keys[:0])


def draw_rejection(runner: ShardRunner, config: ResampleConfig, choice: AlphaChoice) -> Selection:
    log_bound, choice = rejection_bound(runner, config, choice)
    n = len(runner.samples)

    def check(per_shard: list[ShardAcceptances]) -> None:
        _, transformed, counts = _totals(per_shard)
        check_support(runner.samples, transformed, config)
        if counts.accepted == 0:
            raise ValueError(f"{runner.samples.path}: no sample was accepted (expected {counts.expected:.3g} of {n} "
                             f"with log M = {log_bound:.4g}); lower --rejection-gamma or flatten the weights")

    merged = top_k_over_shards(
        runner, config.k, shard_acceptances,
        lambda request, threshold, below: (choice.transform, log_bound, config.seed, request, threshold, below),
        _counts_only, check, desc="resample: rejection", at_most=True)
    raw, transformed, counts = _totals(merged.facts)
    facts = {KEY_REJECTION_BOUND: "max" if config.rejection_quantile is None else "quantile",
             "rejection_quantile": config.rejection_quantile, "rejection_gamma": config.rejection_gamma,
             KEY_REJECTION_LOG_BOUND: log_bound, KEY_REJECTION_EXACT: bool(log_bound >= transformed.max),
             KEY_REJECTION_CAPPED: counts.capped, KEY_ACCEPTED: counts.accepted, KEY_PROPOSALS: n,
             KEY_ACCEPTANCE_RATE: counts.accepted / n, KEY_EXPECTED_ACCEPTANCE_RATE: counts.expected / n,
             KEY_PROPOSALS_PER_ACCEPTED: n / counts.expected}
    return Selection(ids=merged.ids, copies=None, shards=merged.shards, choice=choice, raw=raw,
                     transformed=transformed, passes=runner.rounds, candidates=merged.received,
                     requeried=merged.requeried, facts=facts)
