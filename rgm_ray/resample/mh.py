"""Independence Metropolis–Hastings on importance weights (Turner et al. 2019's MH-GAN, one chain).

The generator is the proposal: the chain is offered the generated samples in the seeded proposal
order (``proposals``) and moves from state x to proposal x' with probability ``min(1, w(x')/w(x))``,
the independence-sampler ratio for target ∝ q·w with proposals from q. Its stationary law is ∝ w over
the samples; the first state is the first proposal with non-zero weight, so the first states lean
towards the generator: ``burn_in`` of them are dropped, then the next k states are kept.

Only log-weights in proposal order are needed, one comparison per step: with ``s' = ℓ' − log u``
(``acceptance_scores``) the move is taken iff ``s' > ℓ(x)``. A chain of L = burn-in + k steps reads
the first L proposals only, so over shards the driver holds O(L) rows, not O(N). The result is a
function of (seed, sample ids, weights, burn-in, k): identical for any sharding or row order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rgm_ray.resample.counter_rng import check_draw_count, validate_sample_ids
from rgm_ray.resample.proposals import acceptance_scores, first_proposed, proposal_keys
from rgm_ray.weigh.transforms import validate_log_weights


@dataclass(frozen=True)
class Chain:
    """A chain run over L proposals: the state (a proposal position) at each kept step, and its moves."""

    states: np.ndarray  # [L − burn_in] position in proposal order of the state at kept steps
    start: int  # position of the first state (proposals before it have zero weight)
    moves: int  # proposals after the first state
    accepted: int  # of which accepted

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.moves if self.moves else None


def independence_chain(log_weights: np.ndarray, scores: np.ndarray, burn_in: int) -> Chain:
    """Run the chain over proposals given in order (``scores`` from ``acceptance_scores``), keep the
    states after ``burn_in`` steps. Sequential by nature: one Python step per proposal (~0.1 s per 1e6)."""
    moved_at = []
    current = -math.inf
    lw = log_weights.tolist()
    for t, score in enumerate(scores.tolist()):
        if score > current:  # from the empty start every proposal with non-zero weight is taken
            moved_at.append(t)
            current = lw[t]
    if not moved_at:
        raise ValueError("every proposal has weight 0; the chain has no state")
    start = moved_at[0]
    if start > burn_in:
        raise ValueError(f"the first {start} proposals have weight 0, more than the burn-in ({burn_in}): "
                         "the chain has no state at its first kept step; raise the burn-in")
    marks = np.full(scores.size, -1, dtype=np.int64)
    marks[moved_at] = moved_at
    states = np.maximum.accumulate(marks)[burn_in:]
    return Chain(states, start, scores.size - start - 1, len(moved_at) - 1)


def run_chain(log_weights: np.ndarray, sample_ids: np.ndarray, seed: int, burn_in: int) -> Chain:
    """``independence_chain`` over rows already in proposal order (the first L proposals)."""
    return independence_chain(log_weights, acceptance_scores(log_weights, sample_ids, seed), burn_in)


def visited_states(sample_ids: np.ndarray, chain: Chain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(distinct state ids ascending, copies, proposal position of each)`` of the kept states."""
    ids, first, copies = np.unique(sample_ids[chain.states], return_index=True, return_counts=True)
    return ids, copies.astype(np.int64), chain.states[first]


def mh_resample(log_weights: object, sample_ids: object, k: int, seed: int,
                burn_in: int = 0) -> tuple[np.ndarray, np.ndarray, Chain]:
    """The k states after ``burn_in`` of the chain over all rows: ``(ids ascending, copies, chain)``."""
    k = check_draw_count(k)
    burn_in = check_draw_count(burn_in, "burn_in", allow_zero=True)
    lw = validate_log_weights(log_weights)
    ids = validate_sample_ids(sample_ids, lw.size)
    if burn_in + k > lw.size:
        raise ValueError(f"a chain of burn-in + k = {burn_in + k} proposals needs as many samples, got {lw.size}")
    first = first_proposed(proposal_keys(ids, seed), ids, burn_in + k)
    chain = run_chain(lw[first], ids[first], seed, burn_in)
    state_ids, copies, _ = visited_states(ids[first], chain)
    return state_ids, copies, chain
