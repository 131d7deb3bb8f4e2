"""One shard's share of a with-replacement draw, run as a Ray task.

The driver splits k across shards by their masses (``multinomial.split_counts_across_shards``); each
shard that got draws then draws them among its own rows (``multinomial.multinomial_within_shard``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rgm_ray.resample.multinomial import multinomial_within_shard
from rgm_ray.resample.shard_io import read_log_weights
from rgm_ray.resample.weight_transform import WeightTransform


def shard_multinomial(path: str | Path, transform: WeightTransform, k_shard: int, seed: int,
                      shard_key: int) -> tuple[np.ndarray, np.ndarray]:
    """This shard's share of a with-replacement draw: ``(ids ascending, copies)`` summing to ``k_shard``."""
    ids, lw = read_log_weights(path)
    return multinomial_within_shard(transform.apply(lw), ids, k_shard, seed, shard_key)
