"""What the resample stage draws: the method, k, the seed, and the weight transform.

Kept apart from the stage so every part of it (transform set-up, selection, summary) can read the
config without importing the stage that drives them.

Three corrections use the same (transformed) weights: ``sir`` (Gumbel top-k without replacement, or a
multinomial with ``replacement``), ``rejection`` (each sample accepted with probability min(1, w/M);
at most the first k accepted in a seeded proposal order) and ``mh`` (an independence
Metropolis–Hastings chain over the samples in a seeded order; k kept states after ``mh_burn_in``).

α by default is honest: with neither ``alpha`` nor ``target_ess``, α is the largest value whose ESS
reaches ``default_target_ess`` = min(k, ``DEFAULT_TARGET_ESS_CAP`` · the rows with non-zero weight),
i.e. 1 whenever the raw weights already have ESS ≥ k. The cap keeps α from collapsing to 0 (uniform)
when k is close to N: asking for ESS ≥ N/2 already flattens most weight sets hard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from rgm_ray.resample.counter_rng import check_draw_count, check_seed


METHODS = ("sir", "rejection", "mh")
DEFAULT_TARGET_ESS_CAP = 0.5  # the default target ESS is at most this fraction of the support


def default_target_ess(k: int, n_support: int) -> float:
    """The ESS α is chosen for when neither ``alpha`` nor ``target_ess`` is given: min(k, cap · support)."""
    return min(float(k), DEFAULT_TARGET_ESS_CAP * n_support)


@dataclass(frozen=True)
class ResampleConfig:
    """What to draw. ``alpha=None`` and no ``target_ess``: α for ``default_target_ess``; clip values are
    weights. ``rejection_quantile``: M from that quantile of the log-weights instead of their maximum;
    ``rejection_gamma``: added to log M (see ``rejection``)."""

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
    method: str = "sir"
    rejection_quantile: float | None = None
    rejection_gamma: float = 0.0
    mh_burn_in: int = 0

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
        self._check_method()

    def _check_method(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.replacement and self.method != "sir":
            raise ValueError("replacement applies to method sir only (rejection keeps each accepted sample "
                             "once; mh counts repeated states as copies)")
        for name, given, owner in (("rejection_quantile", self.rejection_quantile is not None, "rejection"),
                                   ("rejection_gamma", self.rejection_gamma != 0.0, "rejection"),
                                   ("mh_burn_in", self.mh_burn_in != 0, "mh")):
            if given and self.method != owner:
                raise ValueError(f"{name} applies to method {owner} only, not {self.method}")
        if self.rejection_quantile is not None and not (_is_real(self.rejection_quantile)
                                                        and 0.0 < self.rejection_quantile <= 1.0):
            raise ValueError(f"rejection_quantile must be in (0, 1], got {self.rejection_quantile!r}")
        if not (_is_real(self.rejection_gamma) and math.isfinite(self.rejection_gamma)):
            raise ValueError(f"rejection_gamma must be a finite number, got {self.rejection_gamma!r}")
        check_draw_count(self.mh_burn_in, "mh_burn_in", allow_zero=True)

    @property
    def mh_chain_length(self) -> int:
        """Proposals the MH chain makes: the burn-in, then the k kept states."""
        return self.mh_burn_in + self.k


def _is_real(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and not math.isnan(x)
