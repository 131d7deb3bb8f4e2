"""What every resample method's draw shares: the resolved transform, the ``Selection`` it returns,
the support check, and the exact top-k over shards (Gumbel top-k for SIR, first accepted for rejection).

Kept below ``selection`` (which dispatches on the method) so the method modules can build on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.log_sums import LogSums
from rgm_ray.resample.shard_pool import ShardRunner, in_shard_order
from rgm_ray.resample.topk_merge import TopKMerger, shard_requests
from rgm_ray.resample.weight_transform import WeightTransform
from rgm_ray.store import SampleSet


@dataclass(frozen=True)
class AlphaChoice:
    """The transform to sample with, why its α, and the clipped weights' sums at α = 1 if a pass made them."""

    transform: WeightTransform
    source: str  # "given" | "target_ess" | "default" (chosen for ``default_target_ess``)
    target_ess: float | None = None  # the ESS α was chosen for (None when α was given)
    at_one: LogSums | None = None  # ``clipped_sums``: known whenever α was chosen for a target


@dataclass(frozen=True)
class Selection:
    """The chosen rows (output order) and the facts the summary reports."""

    ids: np.ndarray  # [rows] sample ids, output order
    copies: np.ndarray | None  # [rows] with replacement (and mh), else None
    shards: np.ndarray  # [rows] index of the input shard holding each row
    choice: AlphaChoice
    raw: LogSums  # of the stored log-weights
    transformed: LogSums  # of the log-weights actually sampled from
    passes: int  # rounds of shard tasks before the row pass
    candidates: int  # (id, key) pairs sent to the driver
    requeried: int  # shards asked a second time (their capped candidate list might hide winners)
    facts: dict[str, Any] = field(default_factory=dict)  # the method's own facts, summary keys

    @property
    def transform(self) -> WeightTransform:
        return self.choice.transform

    @property
    def alpha_source(self) -> str:
        return self.choice.source


def check_support(samples: SampleSet, sums: LogSums, config: ResampleConfig) -> None:
    """Refuse a set with no weight at all, or (SIR without replacement) fewer such rows than k."""
    if sums.n_support == 0:
        raise ValueError(f"{samples.path}: every log_weight is -inf (all weights are 0); nothing to resample")
    if config.method == "sir" and not config.replacement and config.k > sums.n_support:
        raise ValueError(f"{samples.path}: k={config.k} exceeds the {sums.n_support} samples with non-zero "
                         "weight; lower k or use --replacement")


@dataclass(frozen=True)
class MergedTopK:
    """``top_k_over_shards``' answer: the ids (merge order), their shards, and each shard's small facts."""

    ids: np.ndarray
    shards: np.ndarray
    facts: list[Any]  # ``facts_of`` of each shard's first answer, by shard index
    received: int
    requeried: int


def top_k_over_shards(runner: ShardRunner, k: int, task: Callable, args_for: Callable[[int, float, float], tuple],
                      facts_of: Callable[[Any], Any], check: Callable[[list[Any]], None], *, desc: str,
                      at_most: bool = False) -> MergedTopK:
    """The exact top k of per-shard keys: ``task(path, *args_for(request, threshold, below))`` returns an
    object with ``ids``, ``keys``, ``cut`` (``topk_merge.capped_candidates``); capped shards that may
    hide winners are asked again. ``check`` sees the facts before the merge; ``at_most``: see
    ``TopKMerger.finish``."""
    merger = TopKMerger(k)
    facts: dict[int, Any] = {}
    requests = shard_requests([s.rows for s in runner.samples.manifest.shards], k)

    def take(shard: int, found: Any) -> None:
        merger.add(shard, found.ids, found.keys, found.cut)
        if shard not in facts:
            facts[shard] = facts_of(found)

    runner.map(task, lambda s: args_for(requests[s], merger.threshold, math.inf), on_result=take, desc=desc)
    check(in_shard_order(facts))
    hidden = merger.hiding()
    if hidden:  # capped shards whose unsent rows might still win: ask for everything below their cut
        runner.map(task, lambda s: args_for(k, merger.threshold, hidden[s]), shards=sorted(hidden),
                   on_result=take, desc="resample: re-query")
    ids, shards = merger.finish(at_most=at_most)
    return MergedTopK(ids, shards, in_shard_order(facts), merger.received, len(hidden))


def combined_sums(per_shard: list[tuple[LogSums, LogSums]]) -> tuple[LogSums, LogSums]:
    """``(raw, transformed)`` over the set from each shard's pair."""
    raw, transformed = (LogSums.combine(parts) for parts in zip(*per_shard))
    return raw, transformed
