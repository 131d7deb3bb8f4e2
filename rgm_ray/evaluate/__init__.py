"""Evaluation: IS / FID / KID / precision-recall on equal-size sets with torch-fidelity (thesis Table 6.3).

Entry point: :func:`evaluate_sets` (an :class:`EvaluateSpec` in, an :class:`EvaluateResult` out);
:func:`is_complete` is the stage's completeness check.
"""

from rgm_ray.evaluate.features import (DOMAIN_EXTRACTOR, EXTRACTOR_KINDS, ExtractorSpec, Features,
                                       FidelityFeaturizer, domain_spec, inception_spec,
                                       register_domain_extractor)
from rgm_ray.evaluate.inputs import load_real, load_sample_set, parse_set_argument
from rgm_ray.evaluate.metrics import (KEY_FID, KEY_IS, KEY_KID, KEY_PRECISION, KEY_RECALL, METRIC_KEYS,
                                      fidelity_metrics)
from rgm_ray.evaluate.outputs import METRICS_JSON, TABLE_MD, grid_file, write_outputs
from rgm_ray.evaluate.protocol import EvalConfig, EvalSet, Evaluation, RowResult, evaluate, validate_sets
from rgm_ray.evaluate.stage import EvaluateResult, EvaluateSpec, evaluate_sets, is_complete
from rgm_ray.evaluate.tables import markdown_table
from rgm_ray.evaluate.weighted_fid import KEY_WEIGHTED_FID, KEY_WEIGHTED_FID_ESS, weighted_fid

__all__ = ["DOMAIN_EXTRACTOR", "EXTRACTOR_KINDS", "EvalConfig", "EvalSet", "EvaluateResult", "EvaluateSpec",
           "Evaluation", "ExtractorSpec", "evaluate_sets", "is_complete",
           "Features", "FidelityFeaturizer", "KEY_FID", "KEY_IS", "KEY_KID", "KEY_PRECISION", "KEY_RECALL",
           "KEY_WEIGHTED_FID", "KEY_WEIGHTED_FID_ESS", "METRICS_JSON", "METRIC_KEYS", "RowResult", "TABLE_MD",
           "domain_spec", "evaluate", "fidelity_metrics", "grid_file",
           "inception_spec", "load_real", "load_sample_set", "markdown_table", "parse_set_argument",
           "register_domain_extractor", "validate_sets", "weighted_fid", "write_outputs"]
