"""The weight transform the resample stage samples with: clip, then flatten, all on log-weights.

One small frozen value, so it travels to every shard task and into the summary; the maths is
``rgm_ray.weigh.transforms``'s (``clip_log_weights``, ``flatten``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rgm_ray.weigh.transforms import clip_log_weights, flatten


@dataclass(frozen=True)
class WeightTransform:
    """``ℓ' = α · clip(ℓ)``: clip on the weight scale (``w ≤ e^log_cap``, ``w ≥ e^log_floor`` on the
    support), then flatten to ``w^α``. ``-inf`` (weight 0) stays excluded.

    Per row this equals ``transforms.flatten(transforms.clip(ℓ, max_value=e^log_cap,
    floor=e^log_floor), α)``; the cap is held as a log so a quantile cap resolved on the driver
    (``RadixSelect``) is applied without an exp/log round trip.
    """

    alpha: float = 1.0
    log_cap: float | None = None
    log_floor: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("log_cap", "log_floor"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if self.log_cap is not None and self.log_floor is not None and self.log_floor > self.log_cap:
            raise ValueError(f"the lower clip (log {self.log_floor:.4g}) is above the upper clip "
                             f"(log {self.log_cap:.4g})")

    @property
    def clips(self) -> bool:
        return self.log_cap is not None or self.log_floor is not None

    @property
    def is_identity(self) -> bool:
        return self.alpha == 1.0 and not self.clips

    def with_alpha(self, alpha: float) -> "WeightTransform":
        return WeightTransform(alpha, self.log_cap, self.log_floor)

    def apply(self, lw: np.ndarray) -> np.ndarray:
        """Transformed copy (or ``lw`` itself when there is nothing to do) of float64 log-weights."""
        if self.is_identity or lw.size == 0 or lw.max() == -np.inf:
            return lw
        out = clip_log_weights(lw, self.log_cap, self.log_floor)
        return out if self.alpha == 1.0 else flatten(out, self.alpha)
