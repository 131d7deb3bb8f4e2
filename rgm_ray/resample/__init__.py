"""Sampling-importance-resampling over sharded sample sets (stage resample).

Public API: :func:`gumbel_top_k` (exact k-of-N without replacement, proportional to w) and
:func:`multinomial_resample` (classic SIR with replacement). Both draw their noise from
(seed, sample_id) only, so results do not depend on sharding or row order.
"""

from rgm_ray.resample.gumbel import gumbel_keys, gumbel_top_k, merge_top_k, shard_top_k
from rgm_ray.resample.multinomial import (multinomial_resample, multinomial_within_shard,
                                          split_counts_across_shards)

__all__ = ["gumbel_keys", "gumbel_top_k", "merge_top_k", "multinomial_resample", "multinomial_within_shard",
           "shard_top_k", "split_counts_across_shards"]

# The stage on Ray (sharded selection, output set, summary).
from rgm_ray.resample.config import ResampleConfig  # noqa: E402
from rgm_ray.resample.selection import select  # noqa: E402
from rgm_ray.resample.stage import (ResampleResult, ResampleSpec, is_complete,  # noqa: E402
                                    resample_sample_set)

__all__ += ["ResampleConfig", "ResampleResult", "ResampleSpec", "is_complete", "resample_sample_set", "select"]
