"""Diversity of a sample set: the birthday-paradox support estimate, the within-set duplicate rate,
and density/coverage (Naeem et al. 2020). "Duplicate" means a feature distance at or below a
threshold calibrated on real data (see :mod:`rgm_ray.audit.stage`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rgm_ray.audit.neighbours import QUERY_BLOCK, blocks, nearest_neighbours, squared_distances
from rgm_ray.audit.stats import binomial_ci
from rgm_ray.seeding import numpy_rng


def birthday_support_estimate(dup_prob: float, s: int) -> float:
    """Support size N from the probability that a batch of ``s`` samples holds a duplicate (Arora et al.
    2018): with N equally likely modes P(dup) ~ 1 - exp(-s^2 / (2N)), so N ~ -s^2 / (2 ln(1 - p));
    p = 1/2 gives N ~ s^2 / (2 ln 2) ~ 0.72 s^2. p = 0 gives infinity, p = 1 gives 0."""
    if not 0.0 <= dup_prob <= 1.0 or s < 2:
        raise ValueError(f"need 0 <= dup_prob <= 1 and s >= 2, got {dup_prob}, {s}")
    if dup_prob == 0.0:
        return math.inf
    if dup_prob == 1.0:
        return 0.0
    return -s * s / (2.0 * math.log1p(-dup_prob))


@dataclass(frozen=True)
class BirthdayTest:
    """``duplicate_batches`` of ``batches`` random batches of ``batch_size`` held a duplicate pair."""

    batch_size: int
    batches: int
    duplicate_batches: int

    @property
    def dup_prob(self) -> float:
        return self.duplicate_batches / self.batches

    def to_json(self) -> dict[str, object]:
        """Counts, p with its Clopper-Pearson interval, and the support estimate with the interval it
        maps to (a larger p means a smaller support); an infinite support is ``null``."""
        p_lo, p_hi = binomial_ci(self.duplicate_batches, self.batches)
        finite = lambda n: None if math.isinf(n) else n  # noqa: E731 - JSON has no infinity
        s = self.batch_size
        return {**asdict(self), "dup_prob": self.dup_prob, "dup_prob_ci": [p_lo, p_hi],
                "support": finite(birthday_support_estimate(self.dup_prob, s)),
                "support_ci": [finite(birthday_support_estimate(p_hi, s)), finite(birthday_support_estimate(p_lo, s))]}


def has_duplicate(features: torch.Tensor, threshold: float) -> bool:
    """Whether two distinct rows of ``features`` lie within ``threshold`` of each other."""
    d2 = squared_distances(features, features)
    d2.fill_diagonal_(float("inf"))
    return bool((d2 <= threshold * threshold).any())


def birthday_test(features: torch.Tensor, threshold: float, batch_size: int, batches: int, *,
                  seed: int) -> BirthdayTest:
    """Draw ``batches`` batches of ``batch_size`` distinct rows (seeded) and count those with a duplicate."""
    if batch_size > len(features):
        raise ValueError(f"birthday batch size {batch_size} exceeds the {len(features)} images of the set")
    rng = numpy_rng(seed)
    hits = sum(has_duplicate(features[torch.from_numpy(rng.permutation(len(features))[:batch_size])], threshold)
               for _ in range(batches))
    return BirthdayTest(batch_size, batches, int(hits))


def duplicate_rate(features: torch.Tensor, threshold: float) -> float:
    """Fraction of rows whose nearest *other* row is within ``threshold`` (the first neighbour of a row
    in its own set is itself at distance 0, so the second is the nearest other)."""
    if len(features) < 2:
        raise ValueError("a duplicate rate needs at least 2 rows")
    distances, _ = nearest_neighbours(features, features, 2)
    return float(np.mean(distances[:, 1] <= threshold))


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int, *,
                     block: int = QUERY_BLOCK) -> tuple[float, float]:
    """Naeem et al. (2020): with r_i the distance from real row i to its k-th nearest other real row,
    density = 1/(kM) sum_j sum_i [|f_j - x_i| < r_i] and coverage = 1/N sum_i [exists j: |f_j - x_i| < r_i]
    (strict, as in the authors' code)."""
    if len(real) <= k:
        raise ValueError(f"density/coverage with k={k} needs more than {k} real rows, got {len(real)}")
    radii, _ = nearest_neighbours(real, real, k + 1)  # column 0 is the row itself
    r2 = torch.from_numpy(radii[:, k]).float() ** 2
    inside = 0
    covered = torch.zeros(len(real), dtype=torch.bool)
    for rows in blocks(len(fake), block):
        within = squared_distances(fake[rows], real) < r2  # [b, N]
        inside += int(within.sum())
        covered |= within.any(0)
    return inside / (k * len(fake)), float(covered.float().mean())
