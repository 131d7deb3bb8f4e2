"""Sharded sample generation on Ray actors into Parquet sample sets (stage generate)."""

from rgm_ray.generate.plan import GenerationPlan, PlanMismatchError
from rgm_ray.generate.runner import ClusterOptions, GenerateConfig, generate_sample_set, make_plan
from rgm_ray.generate.shards import SAMPLERS_BY_KIND, draw

__all__ = ["ClusterOptions", "GenerateConfig", "GenerationPlan", "PlanMismatchError", "SAMPLERS_BY_KIND", "draw",
           "generate_sample_set", "make_plan"]
