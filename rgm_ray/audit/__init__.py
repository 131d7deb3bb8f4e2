"""Sample audits: class balance, memorisation and diversity of sample sets against real data.

Entry point: :func:`audit_sets` (an :class:`AuditSpec` in, an :class:`AuditResult` out);
:func:`is_complete` is the stage's completeness check. The maths is in plain functions
(:mod:`~rgm_ray.audit.stats`, :mod:`~rgm_ray.audit.neighbours`, :mod:`~rgm_ray.audit.diversity`).
"""

from rgm_ray.audit.diversity import (BirthdayTest, birthday_support_estimate, birthday_test, density_coverage,
                                     duplicate_rate)
from rgm_ray.audit.neighbours import near_copy_fraction, nearest_neighbours, pixel_vectors
from rgm_ray.audit.outputs import AUDIT_JSON, CLASS_BARS_PNG, TABLE_MD, neighbours_file, nn_histogram_file
from rgm_ray.audit.stage import AuditConfig, AuditResult, AuditSpec, audit_sets, is_complete
from rgm_ray.audit.stats import (binomial_ci, bootstrap_ci, class_histogram, kl_distance, smoothed_histogram,
                                 tv_distance)

__all__ = ["AUDIT_JSON", "AuditConfig", "AuditResult", "AuditSpec", "BirthdayTest", "CLASS_BARS_PNG", "TABLE_MD",
           "audit_sets", "binomial_ci", "birthday_support_estimate", "birthday_test", "bootstrap_ci",
           "class_histogram", "density_coverage", "duplicate_rate", "is_complete", "kl_distance",
           "near_copy_fraction", "nearest_neighbours", "neighbours_file", "nn_histogram_file", "pixel_vectors",
           "smoothed_histogram", "tv_distance"]
