"""Ray Tune sweeps of the semi-supervised stage (stage tune): YAML configs, the Tune run, result tables.

Entry point: :func:`run_sweep` (a :class:`SweepConfig` in, a :class:`SweepResult` out); it imports Ray
on first use, so importing this package stays cheap. :func:`is_complete` is the stage's check.
"""

from rgm_ray.tune.config import ConfigError, SweepConfig, apply_overrides, load_sweep_config, sweep_config_from_dict
from rgm_ray.tune.results import (best_configuration, mean_ci, paired_differences, select_on_validation, summarize,
                                  write_results)
from rgm_ray.tune.sweep import SweepFailedError, SweepResult, is_complete, run_sweep, trial_name

__all__ = ["ConfigError", "SweepConfig", "SweepFailedError", "SweepResult", "apply_overrides", "best_configuration",
           "is_complete",
           "load_sweep_config", "mean_ci", "paired_differences", "run_sweep", "select_on_validation",
           "summarize", "sweep_config_from_dict", "trial_name", "write_results"]
