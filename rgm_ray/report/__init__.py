"""The report (stage report): the thesis's tables and figures rebuilt from a pipeline run directory.

Entry point: :func:`build_report` (a run directory in, ``report.md`` and ``report.html`` out).
"""

from rgm_ray.report.build import build_report

__all__ = ["build_report"]
