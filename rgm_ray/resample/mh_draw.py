"""Independence Metropolis–Hastings over a sharded set, on Ray: the same chain as ``mh_resample`` on all rows.

The chain needs the first L = burn-in + k proposals with their transformed log-weights, in proposal
order, and nothing else. Proposal keys are uniform and independent of the weights, so every shard
can pick its share alone: one pass over ``sample_id`` + ``log_weight`` in which each shard sends its
rows with key below a bound ``t`` chosen so that N·t exceeds L by six standard deviations (about
L + 6√L + 64 rows in all; another round with a doubled bound in the ~1e-9 case that is short). The
driver sorts them, runs the chain over the first L (sequential, ~0.1 s per 1e6 steps) and keeps the
visited states with copies; O(L) rows meet on the driver, never the N log-weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.counter_rng import validate_sample_ids
from rgm_ray.resample.log_sums import LogSums, read_transformed
from rgm_ray.resample.mh import run_chain, visited_states
from rgm_ray.resample.proposals import first_proposed, proposal_keys
from rgm_ray.resample.selection_parts import AlphaChoice, Selection, check_support, combined_sums
from rgm_ray.resample.shard_pool import ShardRunner, in_shard_order
from rgm_ray.resample.summary import (KEY_ACCEPTANCE_RATE, KEY_ACCEPTED, KEY_DISTINCT_STATES, KEY_MH_BURN_IN,
                                      KEY_MH_CHAIN_LENGTH, KEY_PROPOSALS)
from rgm_ray.resample.weight_transform import WeightTransform

SLACK_SD = 6.0  # rows asked for beyond L, in standard deviations of the count ...
SLACK_ROWS = 64  # ... plus this many


@dataclass(frozen=True)
class ShardProposals:
    """One shard's rows with ``low ≤ key < high``: ids, proposal keys, transformed log-weights; its sums."""

    ids: np.ndarray
    keys: np.ndarray
    log_weights: np.ndarray
    raw: LogSums
    transformed: LogSums


def shard_proposals(path: str | Path, transform: WeightTransform, seed: int, low: float,
                    high: float) -> ShardProposals:
    """This shard's proposals with key in ``[low, high)``, reading ``sample_id`` + ``log_weight``."""
    ids, lw_t, raw, transformed = read_transformed(path, transform)
    keys = proposal_keys(validate_sample_ids(ids, lw_t.size), seed)
    chosen = np.flatnonzero((keys >= low) & (keys < high))
    return ShardProposals(ids[chosen], keys[chosen], lw_t[chosen], raw, transformed)


def key_bound(needed: int, n: int) -> float:
    """A key bound ``t`` with ``n·t = needed + 6·√needed + 64``: short of ``needed`` rows w.p. ~1e-9."""
    return min(1.0, (needed + SLACK_SD * math.sqrt(needed) + SLACK_ROWS) / n)


@dataclass(frozen=True)
class FirstProposals:
    """The first L proposals in order (ids, transformed log-weights, shard of each), the set's sums."""

    ids: np.ndarray
    log_weights: np.ndarray
    shards: np.ndarray
    sums: list[tuple[LogSums, LogSums]]  # per shard
    received: int
    rounds: int


def first_proposals(runner: ShardRunner, transform: WeightTransform, seed: int, length: int) -> FirstProposals:
    parts: list[tuple[int, ShardProposals]] = []
    sums: dict[int, tuple[LogSums, LogSums]] = {}
    low, high, rounds = 0.0, key_bound(length, len(runner.samples)), 0
    while True:
        found = runner.map(shard_proposals, lambda s: (transform, seed, low, high), desc="resample: mh proposals")
        rounds += 1
        for shard, part in found.items():
            parts.append((shard, part))
            sums.setdefault(shard, (part.raw, part.transformed))
        if sum(part.ids.size for _, part in parts) >= length or high >= 1.0:  # keys are < 1: all rows in
            break
        low, high = high, min(1.0, 2.0 * high)
    ids = validate_sample_ids(np.concatenate([p.ids for _, p in parts]), sum(p.ids.size for _, p in parts))
    keys = np.concatenate([p.keys for _, p in parts])
    first = first_proposed(keys, ids, length)
    return FirstProposals(ids[first], np.concatenate([p.log_weights for _, p in parts])[first],
                          np.concatenate([np.full(p.ids.size, s, dtype=np.int32) for s, p in parts])[first],
                          in_shard_order(sums), ids.size, rounds)


def draw_mh(runner: ShardRunner, config: ResampleConfig, choice: AlphaChoice) -> Selection:
    proposals = first_proposals(runner, choice.transform, config.seed, config.mh_chain_length)
    raw, transformed = combined_sums(proposals.sums)
    check_support(runner.samples, transformed, config)
    try:
        chain = run_chain(proposals.log_weights, proposals.ids, config.seed, config.mh_burn_in)
    except ValueError as exc:
        raise ValueError(f"{runner.samples.path}: {exc}") from None
    ids, copies, positions = visited_states(proposals.ids, chain)
    facts = {KEY_MH_BURN_IN: config.mh_burn_in, KEY_MH_CHAIN_LENGTH: config.mh_chain_length,
             KEY_PROPOSALS: config.mh_chain_length, KEY_ACCEPTED: chain.accepted,
             KEY_ACCEPTANCE_RATE: chain.acceptance_rate, KEY_DISTINCT_STATES: int(ids.size)}
    return Selection(ids=ids, copies=copies, shards=proposals.shards[positions], choice=choice, raw=raw,
                     transformed=transformed, passes=runner.rounds, candidates=proposals.received,
                     requeried=(proposals.rounds - 1) * len(runner.paths), facts=facts)
