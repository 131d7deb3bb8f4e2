"""Mergeable sums of log-weights: what a shard sends so the driver knows the set's mass, ESS and
heaviest share without gathering a single log-weight.

A sample set can hold far more log-weights than one process should gather (1e8 rows = 800 MB as
float64). ``LogSums`` of disjoint shards combine exactly (up to float rounding); the quantities read
off them use ``rgm_ray.weigh.transforms``'s formulas on max-shifted sums.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rgm_ray.resample.shard_io import read_log_weights
from rgm_ray.resample.weight_transform import WeightTransform
from rgm_ray.weigh.transforms import ess_of_sums, log_mass_of_sums, max_share_of_sums, shifted_exp_sums


@dataclass(frozen=True)
class LogSums:
    """Count, support size, ``m = max ℓ`` and ``s1 = Σ e^{ℓ−m}``, ``s2 = Σ e^{2(ℓ−m)}`` of some rows.

    Both sums lie in [1, n] on any support, so nothing overflows for any finite logits; shards merge
    by rescaling to the larger maximum (``combine``).
    """

    n: int
    n_support: int
    max: float
    s1: float
    s2: float

    @staticmethod
    def of(lw: np.ndarray) -> "LogSums":
        """Sums of validated float64 log-weights (``-inf`` allowed)."""
        return alpha_sums(lw, (1.0,))[0]

    @staticmethod
    def combine(parts: Sequence["LogSums"]) -> "LogSums":
        """Sums over the union of the parts' rows; exact summation, so independent of part order."""
        n, n_support = sum(p.n for p in parts), sum(p.n_support for p in parts)
        live = [p for p in parts if p.n_support]
        if not live:
            return LogSums(n, 0, -math.inf, 0.0, 0.0)
        m = max(p.max for p in live)
        s1 = math.fsum(p.s1 * math.exp(p.max - m) for p in live)
        s2 = math.fsum(p.s2 * math.exp(2.0 * (p.max - m)) for p in live)
        return LogSums(n, n_support, m, s1, s2)

    @property
    def log_mass(self) -> float:
        """``logsumexp ℓ`` (``-inf`` without support)."""
        return log_mass_of_sums(self.max, self.s1) if self.n_support else -math.inf

    @property
    def ess(self) -> float:
        """Kish ESS ``(Σw)²/Σw²``, within [1, support]; 0 without support."""
        return ess_of_sums(self.s1, self.s2, self.n_support) if self.n_support else 0.0

    @property
    def max_share(self) -> float:
        """Largest normalised weight: the heaviest row's share of the total mass (1/s1)."""
        return max_share_of_sums(self.s1) if self.n_support else 0.0


def alpha_sums(lw: np.ndarray, alphas: Sequence[float]) -> list[LogSums]:
    """``LogSums`` of ``α·ℓ`` for each α ≥ 0, sharing one pass of shifting.

    α = 0 gives weight 1 on the support and keeps ``-inf`` excluded, like ``transforms.flatten``.
    Unlike ``transforms``, the sums run over the support only: the shift ``ℓ − m`` is shared by every
    α, and ``0 · −inf`` would be NaN (same values, not the same bits as summing zeros too).
    """
    finite = lw > -np.inf
    n_support = int(np.count_nonzero(finite))
    if n_support == 0:
        return [LogSums(lw.size, 0, -math.inf, 0.0, 0.0) for _ in alphas]
    support = lw if n_support == lw.size else lw[finite]
    m = float(support.max())
    shifted = support - m  # [n_support], ≤ 0
    out = []
    for alpha in alphas:
        s1, s2 = shifted_exp_sums(shifted * alpha if alpha != 1.0 else shifted)
        out.append(LogSums(lw.size, n_support, alpha * m, s1, s2))
    return out


def read_transformed(path: str | Path, transform: WeightTransform) -> tuple[np.ndarray, np.ndarray, LogSums, LogSums]:
    """``(sample ids, transform(ℓ), sums of ℓ, sums of transform(ℓ))`` of one shard: what every
    shard task that draws needs first."""
    ids, lw = read_log_weights(path)
    raw = LogSums.of(lw)
    lw_t = transform.apply(lw)
    return ids, lw_t, raw, raw if transform.is_identity else LogSums.of(lw_t)


def shard_log_sums(path: str | Path, transform: WeightTransform) -> tuple[LogSums, LogSums]:
    """``(sums of ℓ, sums of transform(ℓ))`` of one shard, reading only ``log_weight``."""
    _, lw = read_log_weights(path, with_ids=False)
    raw = LogSums.of(lw)
    return raw, raw if transform.is_identity else LogSums.of(transform.apply(lw))
