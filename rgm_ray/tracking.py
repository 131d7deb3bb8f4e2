"""MLflow tracking: one run per computing command, nested runs per pipeline stage.

The default store is a local SQLite database (MLflow 3 refuses the plain ``mlruns/`` file store);
``MLFLOW_TRACKING_URI`` overrides it, and ``--no-mlflow`` swaps in a tracker that records nothing,
so stage code never branches on whether tracking is on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

DEFAULT_EXPERIMENT = "rgm_ray"
DEFAULT_DB = "mlflow.db"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> ``a.b`` keys; MLflow params are strings of at most 6000 characters."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


class Tracker:
    """A live MLflow run. Metric/param names are the stage modules' constants."""

    def __init__(self, run: Any) -> None:
        self.run = run

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.log_params(_flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            self.log_artifact(path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})


class NullTracker(Tracker):
    """Used with ``--no-mlflow``: same interface, records nothing."""

    def __init__(self) -> None:
        super().__init__(run=None)

    @property
    def run_id(self) -> str | None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, obj: Any, name: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass


@contextlib.contextmanager
def start_run(run_name: str, *, enabled: bool = True, experiment: str | None = None,
              params: Mapping[str, Any] | None = None, nested: bool = False,
              tracking_uri: str | None = None) -> Iterator[Tracker]:
    """Open an MLflow run and yield its tracker.

    The run nests under an already active run (``nested`` forces that intent), so a command invoked
    by the pipeline becomes a child of the pipeline's stage run instead of failing.
    """
    if not enabled:
        yield NullTracker()
        return
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # DB-migration chatter drowns the summary
    nested = nested or mlflow.active_run() is not None
    if not nested:
        mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
        mlflow.set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    with mlflow.start_run(run_name=run_name, nested=nested) as run:
        tracker = Tracker(run)
        if params:
            tracker.log_params(params)
        yield tracker
