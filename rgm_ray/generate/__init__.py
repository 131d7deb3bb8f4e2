"""Sharded sample generation on Ray actors into Parquet sample sets (stage generate).

Entry point: :func:`generate_sample_set` (a :class:`GenerateSpec` and ``runtime.ClusterOptions`` in,
a :class:`GenerateResult` out); :func:`is_complete` is the stage's completeness check.
"""

from rgm_ray.generate.plan import GenerationPlan, PlanMismatchError
from rgm_ray.generate.runner import (GenerateConfig, GenerateResult, GenerateSpec, generate_sample_set, is_complete,
                                     make_plan)

__all__ = ["GenerateConfig", "GenerateResult", "GenerateSpec", "GenerationPlan", "PlanMismatchError",
           "generate_sample_set", "is_complete", "make_plan"]
