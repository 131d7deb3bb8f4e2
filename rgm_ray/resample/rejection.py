"""Rejection sampling on importance weights: accept sample i with probability ``a_i = min(1, w_i / M)``.

Each generated sample is proposed once (``proposals``), its coin a function of ``(seed, sample_id)``,
so which samples are accepted depends on the seed, the weights and M only, never on sharding. The
accepted samples are distributed ∝ ``min(w, M)``: exactly ∝ w when M ≥ max w.

The bound: ``log M = b + γ`` (γ = ``rejection_gamma``, default 0) where b is

* the largest log-weight (default): exact rejection sampling, the mergeable per-shard maximum;
* or their q-quantile (``rejection_quantile``): samples above M are accepted with probability 1, so
  the output is exactly a rejection sample of the weights *clipped at M*, more accepted for some bias.

γ > 0 scales every acceptance by e^{−γ} (still exact with the maximum); γ < 0 clips more. This is
not the acceptance rule of Azadi et al.'s DRS, ``sigmoid(logit(r) − γ)`` with r = w/M (up to their
ε), which equals r only at γ = 0 (otherwise its output is ∝ ``r·e^{−γ} / (1 − r + r·e^{−γ})``, not
∝ w); it keeps DRS's two knobs (a bound below the maximum, a shift) with an output law ∝ min(w, M).

Output size: at most k, the first k accepted in proposal order (a sequential rejection sampler
stopped after k acceptances; any prefix is itself such a sample), all accepted when fewer (random,
reported). The expected number of proposals per accepted sample is ``N / Σ a_i`` (``N · M / Σ w``
with the maximum bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rgm_ray.resample.counter_rng import check_draw_count, validate_sample_ids
from rgm_ray.resample.proposals import acceptance_scores, proposal_keys, proposal_order
from rgm_ray.weigh.transforms import validate_log_weights


@dataclass(frozen=True)
class Acceptance:
    """Counts of some rows: accepted, expected accepted ``Σ a_i``, and capped (``w_i > M``: a_i = 1)."""

    accepted: int
    expected: float
    capped: int

    @staticmethod
    def combine(parts: Sequence["Acceptance"]) -> "Acceptance":
        return Acceptance(sum(p.accepted for p in parts), math.fsum(p.expected for p in parts),
                          sum(p.capped for p in parts))


def rejection_log_bound(log_weights: object, *, quantile: float | None = None, gamma: float = 0.0) -> float:
    """``log M``: the largest finite log-weight, or their ``quantile`` (as ``np.quantile``), plus ``gamma``."""
    lw = validate_log_weights(log_weights)
    finite = lw[lw > -np.inf]
    return float(finite.max() if quantile is None else np.quantile(finite, quantile)) + gamma


def accept(log_weights: np.ndarray, sample_ids: np.ndarray, seed: int,
           log_bound: float) -> tuple[np.ndarray, Acceptance]:
    """``(accepted mask, counts)`` of validated rows against ``log M = log_bound``."""
    accepted = acceptance_scores(log_weights, sample_ids, seed) > log_bound
    excess = log_weights - log_bound
    expected = float(np.exp(np.minimum(excess, 0.0)).sum())
    return accepted, Acceptance(int(np.count_nonzero(accepted)), expected, int(np.count_nonzero(excess > 0)))


def rejection_sample(log_weights: object, sample_ids: object, k: int, seed: int,
                     log_bound: float) -> tuple[np.ndarray, Acceptance]:
    """At most ``k`` accepted ids, in proposal order (the first k accepted), and the counts over all rows."""
    k = check_draw_count(k)
    lw = validate_log_weights(log_weights)
    ids = validate_sample_ids(sample_ids, lw.size)
    accepted, counts = accept(lw, ids, seed, float(log_bound))
    ids = ids[accepted]
    return ids[proposal_order(proposal_keys(ids, seed), ids)[:k]], counts
