"""The generator as a proposal: a seeded order of the generated samples and one acceptance coin each.

Rejection sampling and independence Metropolis–Hastings both walk through the samples as if the
generator proposed them one at a time (a random order of an i.i.d. sample is still an i.i.d. sample).
Both a sample's place in that order and its accept/reject coin are pure functions of
``(seed, sample_id)`` (``counter_rng``), so any sharding, row order or retry gives the same walk, and
the two methods share it: the same seed proposes the same samples in the same order to both.
"""

from __future__ import annotations

import numpy as np

from rgm_ray.resample.counter_rng import check_seed, uniform_open
from rgm_ray.seeding import derive_seed

# Path items naming the random streams under the run seed ("PROP", "ACPT" in ASCII).
PROPOSAL_STREAM = 0x50524F50
ACCEPT_STREAM = 0x41435054


def proposal_keys(sample_ids: np.ndarray, seed: int) -> np.ndarray:
    """Order keys ``v_i`` in (0, 1): sample i is proposed before j iff ``(v_i, id_i) < (v_j, id_j)``.

    Keys lie on a 2^-52 grid, so among 1e8 samples a tie or two is likely: ties go to the smaller id.
    """
    return uniform_open(derive_seed(check_seed(seed), PROPOSAL_STREAM), sample_ids)


def proposal_order(keys: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Positions of the rows in proposal order (ascending key, then ascending id)."""
    return np.lexsort((sample_ids, keys))


def first_proposed(keys: np.ndarray, sample_ids: np.ndarray, length: int) -> np.ndarray:
    """Positions of the first ``length`` rows in proposal order, sorting only those (and ties at the cut)."""
    if length < keys.size:
        cut = np.partition(keys, length - 1)[length - 1]
        candidates = np.flatnonzero(keys <= cut)
    else:
        candidates = np.arange(keys.size)
    return candidates[proposal_order(keys[candidates], sample_ids[candidates])][:length]


def acceptance_scores(log_weights: np.ndarray, sample_ids: np.ndarray, seed: int) -> np.ndarray:
    """``s_i = ℓ_i − log u_i``, ``u_i`` sample i's acceptance uniform: ``s_i > b`` happens with
    probability min(1, e^{ℓ_i − b}), so a test against any bound ``b`` is one comparison.

    ``ℓ_i = −inf`` (weight 0) gives ``s_i = −inf``: never accepted.
    """
    scores = uniform_open(derive_seed(check_seed(seed), ACCEPT_STREAM), sample_ids)
    np.log(scores, out=scores)
    np.subtract(log_weights, scores, out=scores)
    return scores
