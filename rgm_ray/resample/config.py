"""What the resample stage draws: k, the seed, with or without replacement, and the weight transform.

Kept apart from the stage so every part of it (transform set-up, selection, summary) can read the
config without importing the stage that drives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from rgm_ray.resample.counter_rng import check_draw_count, check_seed


@dataclass(frozen=True)
class ResampleConfig:
    """What to draw. ``alpha=None`` means 1 unless ``target_ess`` picks it; clip values are weights."""

    k: int
    seed: int = 0
    replacement: bool = False
    alpha: float | None = None
    target_ess: float | None = None
    target_ess_tol: float = 1e-4
    clip_max: float | None = None
    clip_quantile: float | None = None
    clip_min: float | None = None
    shard_size: int = 10_000  # rows per output shard

    def __post_init__(self) -> None:
        check_draw_count(self.k)
        check_seed(self.seed)
        if self.alpha is not None and self.target_ess is not None:
            raise ValueError("give either alpha or target_ess, not both")
        if self.alpha is not None and not (_is_real(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if self.target_ess is not None and not (_is_real(self.target_ess) and self.target_ess > 0):
            raise ValueError(f"target_ess must be a positive number, got {self.target_ess!r}")
        if not (_is_real(self.target_ess_tol) and 0.0 < self.target_ess_tol < 1.0):
            raise ValueError(f"target_ess_tol must be in (0, 1), got {self.target_ess_tol!r}")
        if self.clip_max is not None and self.clip_quantile is not None:
            raise ValueError("give at most one of clip_max and clip_quantile")
        for name in ("clip_max", "clip_min"):
            value = getattr(self, name)
            if value is not None and not (_is_real(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite weight, got {value!r}")
        if self.clip_quantile is not None and not (_is_real(self.clip_quantile) and 0.0 < self.clip_quantile <= 1.0):
            raise ValueError(f"clip_quantile must be in (0, 1], got {self.clip_quantile!r}")
        check_draw_count(self.shard_size, "shard_size")


def _is_real(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and not math.isnan(x)
