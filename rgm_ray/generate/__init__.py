"""Sharded sample generation on Ray actors into Parquet sample sets (stage generate).

Entry point: :func:`generate_sample_set` (a :class:`GenerateSpec` and ``runtime.ClusterOptions`` in,
a :class:`GenerateResult` out); :func:`is_complete` is the stage's completeness check. The generator
is a checkpoint or a generator plugin (the protocol: :mod:`rgm_ray.generate.plugins`).
"""

from rgm_ray.generate.plan import GenerationPlan, PlanMismatchError, PluginPlan
from rgm_ray.generate.plugins import PluginError
from rgm_ray.generate.runner import (GenerateConfig, GenerateResult, GenerateSpec, generate_sample_set, is_complete,
                                     make_plan)

__all__ = ["GenerateConfig", "GenerateResult", "GenerateSpec", "GenerationPlan", "PlanMismatchError", "PluginError",
           "PluginPlan", "generate_sample_set", "is_complete", "make_plan"]
