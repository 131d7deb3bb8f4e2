"""Resampling over sharded sample sets (stage resample): SIR, rejection sampling, independence MH.

Public API: :func:`gumbel_top_k` (exact k-of-N without replacement, proportional to w),
:func:`multinomial_resample` (classic SIR with replacement), :func:`rejection_sample` (accept with
probability min(1, w/M), the bound from :func:`rejection_log_bound`) and :func:`mh_resample` (an
independence Metropolis–Hastings chain over the samples). All draw their noise from
(seed, sample_id) only, so results do not depend on row order (nor, except the multinomial split
across shards, on sharding).
"""

from rgm_ray.resample.gumbel import gumbel_keys, gumbel_top_k, merge_top_k, shard_top_k
from rgm_ray.resample.mh import mh_resample
from rgm_ray.resample.multinomial import (multinomial_resample, multinomial_within_shard,
                                          split_counts_across_shards)
from rgm_ray.resample.rejection import rejection_log_bound, rejection_sample

__all__ = ["gumbel_keys", "gumbel_top_k", "merge_top_k", "mh_resample", "multinomial_resample",
           "multinomial_within_shard", "rejection_log_bound", "rejection_sample", "shard_top_k",
           "split_counts_across_shards"]

# The stage on Ray (sharded selection, output set, summary).
from rgm_ray.resample.config import ResampleConfig  # noqa: E402
from rgm_ray.resample.selection import select  # noqa: E402
from rgm_ray.resample.stage import (ResampleResult, ResampleSpec, is_complete,  # noqa: E402
                                    resample_sample_set)

__all__ += ["ResampleConfig", "ResampleResult", "ResampleSpec", "is_complete", "resample_sample_set", "select"]
