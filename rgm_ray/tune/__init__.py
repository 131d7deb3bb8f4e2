"""Ray Tune sweeps of the semi-supervised stage (stage tune): YAML configs, the Tune run, result tables.

``run_sweep`` imports Ray on first use, so importing this package stays cheap.
"""

from rgm_ray.tune.config import ConfigError, SweepConfig, apply_overrides, load_sweep_config, sweep_config_from_dict
from rgm_ray.tune.results import (best_configuration, mean_ci, paired_differences, select_on_validation, summarize,
                                  write_results)
from rgm_ray.tune.sweep import SweepFailedError, run_sweep, trial_name

__all__ = ["ConfigError", "SweepConfig", "SweepFailedError", "apply_overrides", "best_configuration",
           "load_sweep_config", "mean_ci", "paired_differences", "run_sweep", "select_on_validation",
           "summarize", "sweep_config_from_dict", "trial_name", "write_results"]
