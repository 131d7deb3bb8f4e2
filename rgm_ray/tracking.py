"""MLflow tracking: one run per computing command, nested runs per pipeline stage and per Tune trial.

The default store is a local SQLite database (MLflow 3 refuses the plain ``mlruns/`` file store) in
the working directory; ``MLFLOW_TRACKING_URI`` overrides it, and ``--no-mlflow`` swaps in a tracker
that records nothing, so stage code never branches on whether tracking is on. Inside a Ray job the
working directory is Ray's temporary copy of ``--working-dir``, deleted with the job, so there the
default store is ``mlflow.db`` in the command's store directory (the pipeline's run directory, else
beside ``--out``), its artefacts in ``mlartifacts`` there, and a WARNING line says so.

Every run is tagged with what produced it (the code's git commit, else the package version; the
command line; the preset) and, where ``psutil`` imports, records MLflow's system metrics. A run ends
FINISHED, FAILED on an exception, or KILLED on Ctrl-C / SIGTERM (``ray job stop``) / Tune stopping a
trial, so no run is left RUNNING by a process that exits. Runs opened in another process (a Tune trial
in a Ray actor) get their store, experiment and parent explicitly, as a :class:`RunLink`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from rgm_ray import __version__
from rgm_ray.runtime import logger_level

DEFAULT_EXPERIMENT = "rgm_ray"
DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside a Ray job's default store
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
SYSTEM_METRICS_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
SUPPRESS_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"

TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_DIRTY = "rgm.git_dirty"
TAG_VERSION = "rgm.version"
TAG_COMMAND = "rgm.command"
TAG_PRESET = "rgm.preset"
TAG_OUT = "rgm.out"  # the top-level command's output directory (the pipeline's run directory)
TAG_MODEL_URI = "rgm.model_uri"
# Tags a child run takes from its parent, in this process or in a Ray actor (whose argv is Ray's worker).
INHERITED_TAGS = (TAG_COMMAND, TAG_PRESET, TAG_OUT)

_STATUS_FINISHED, _STATUS_FAILED, _STATUS_KILLED = "FINISHED", "FAILED", "KILLED"


class TrackingStoreError(ValueError):
    """No safe default tracking store (inside a Ray job, for a command without ``--out``)."""


def _in_working_dir_package() -> bool:
    """The working directory is Ray's unpacked ``--working-dir`` (``.../runtime_resources/working_dir_files/_ray_pkg_*``)."""
    parts = Path.cwd().parts
    return "runtime_resources" in parts and "working_dir_files" in parts


def in_ray_job() -> bool:
    """True in the driver of a ``ray job submit`` entrypoint (and in Ray workers of a working-dir package)."""
    # the variable is set by Ray's job supervisor for the entrypoint
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or _in_working_dir_package()


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative SQLite file made absolute: Ray workers (Tune trials) run in other
    working directories and would otherwise track into another database."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _default_store(store_dir: str | Path | None) -> tuple[str, str | None]:
    """(tracking URI, artefact root for new experiments or None for MLflow's own default)."""
    if os.environ.get(TRACKING_URI_ENV):
        return absolute_uri(os.environ[TRACKING_URI_ENV]), None
    if not in_ray_job():
        return f"sqlite:///{Path.cwd() / DEFAULT_DB}", None
    if store_dir is None:
        raise TrackingStoreError(f"inside a Ray job the working directory is temporary: set {TRACKING_URI_ENV} "
                                 "(e.g. http://mlflow-host:5000) or pass --no-mlflow")
    store_dir = Path(store_dir).expanduser().resolve()
    if _in_working_dir_package() and store_dir.is_relative_to(Path.cwd()):
        raise TrackingStoreError(f"{store_dir} lies in the Ray job's temporary working directory: pass an absolute "
                                 f"--out on lasting storage or set {TRACKING_URI_ENV}")
    store_dir.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its directory
    uri, artifacts = f"sqlite:///{store_dir / DEFAULT_DB}", store_dir / ARTIFACTS_DIR
    _warn_once(f"WARNING: {TRACKING_URI_ENV} is not set inside a Ray job; tracking into {uri} (artefacts in "
               f"{artifacts}) instead of the job's temporary working directory. Set {TRACKING_URI_ENV} "
               "to track into a shared server.")
    return uri, artifacts.as_uri()


@functools.cache
def _warn_once(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_tracking_uri(store_dir: str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``; else ``sqlite:///<cwd>/mlflow.db``, or inside a Ray job
    ``sqlite:///<store_dir>/mlflow.db`` (a :class:`TrackingStoreError` without ``store_dir``)."""
    return _default_store(store_dir)[0]


@functools.cache
def _code_tags() -> dict[str, str]:
    """The package version, and the git commit when rgm_ray runs from a git checkout (not an installed copy)."""
    tags = {TAG_VERSION: __version__}
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return tags

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        tags[TAG_GIT_COMMIT] = commit
        status = git("status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags[TAG_GIT_DIRTY] = str(bool(status)).lower()
    return tags


def _system_metrics() -> bool | None:
    """Ask MLflow for system metrics where psutil imports; an explicit ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING``
    wins (None: MLflow reads it itself)."""
    if os.environ.get(SYSTEM_METRICS_ENV) is not None:
        return None
    return importlib.util.find_spec("psutil") is not None or None


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


@dataclass(frozen=True)
class RunLink:
    """Where a run opened in another process goes: the store, the experiment, the parent run (None: a
    top-level run) and the tags it inherits. Ray actors see neither the driver's active run nor a
    store the driver chose itself, so they are given this explicitly (it pickles)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None = None
    experiment_name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


def end_open_children(link: RunLink | None, status: str = "KILLED") -> int:
    """End ``status`` every run still RUNNING under the link's parent (trials a failed or interrupted
    sweep leaves open: Tune stops their actors without letting them end their runs); returns how many.
    Tracking trouble here is reported, not raised: the sweep's own error is the one that matters."""
    if link is None or link.parent_run_id is None:
        return 0
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=link.tracking_uri)
        runs = client.search_runs([link.experiment_id], f"tags.`{TAG_PARENT}` = '{link.parent_run_id}' "
                                  "and attributes.status = 'RUNNING'", max_results=10_000)
        for run in runs:
            client.set_terminated(run.info.run_id, status=status)
    except Exception as exc:  # noqa: BLE001 - any store failure; the caller is already failing
        print(f"WARNING: could not close the open trial runs of {link.parent_run_id}: {exc}", file=sys.stderr)
        return 0
    return len(runs)


class Tracker:
    """A live MLflow run. Metric/param names are the stage modules' constants."""

    def __init__(self, run: Any) -> None:
        self.run = run

    @property
    def active(self) -> bool:
        """False for :class:`NullTracker`: lets callers skip work done only to be logged."""
        return True

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id

    def link(self) -> RunLink | None:
        """A :class:`RunLink` for children of this run opened elsewhere (a Tune trial in a Ray actor)."""
        import mlflow

        experiment_id = self.run.info.experiment_id
        tags = self.run.data.tags
        return RunLink(mlflow.get_tracking_uri(), experiment_id, self.run_id,
                       mlflow.get_experiment(experiment_id).name,
                       {key: tags[key] for key in INHERITED_TAGS if key in tags})

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

    def log_dataset(self, name: str, *, source: str | Path, digest: str, context: str,
                    tags: Mapping[str, str] | None = None) -> None:
        """Record a dataset this run read (the UI's "Datasets used"): metadata only, nothing is uploaded.
        MLflow keeps at most 36 characters of ``digest``; pass the full one in ``tags`` to keep it."""
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # a local path matches two equivalent registered source types
            warnings.simplefilter("ignore", UserWarning)
            resolved = resolve_dataset_source(str(source))
        mlflow.log_input(MetaDataset(resolved, name=name, digest=digest[:36]), context=context,
                         tags=dict(tags or {}))

    def log_torch_model(self, model: Any, *, name: str, inputs: tuple[str, Sequence[int]],
                        outputs: tuple[str, Sequence[int]], pip_requirements: Sequence[str],
                        registered_model_name: str | None = None,
                        metadata: Mapping[str, Any] | None = None) -> str | None:
        """Log an ``nn.Module`` with ``mlflow.pytorch`` in its pickle format (models whose ``forward`` loops
        cannot be traced into ``pt2``; load only models from stores you trust), its signature one tensor in
        (``(dtype, shape)``, -1 for any size) and one out; optionally register it. ``pip_requirements``
        skips MLflow's slow requirement inference (a subprocess that loads the model). Returns the model URI."""
        import mlflow.pytorch
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(inputs[0]), tuple(inputs[1]))]),
                                   outputs=Schema([TensorSpec(np.dtype(outputs[0]), tuple(outputs[1]))]))
        # mlflow.pytorch's pickle caution is in our docstrings instead
        with logger_level("mlflow.pytorch", logging.ERROR):
            info = mlflow.pytorch.log_model(model, name=name, signature=signature, serialization_format="pickle",
                                            pip_requirements=list(pip_requirements),
                                            registered_model_name=registered_model_name,
                                            metadata=dict(metadata or {}))
        self.set_tags({TAG_MODEL_URI: info.model_uri})
        return info.model_uri


class NullTracker(Tracker):
    """Used with ``--no-mlflow``: same interface, records nothing."""

    def __init__(self) -> None:
        super().__init__(run=None)

    @property
    def active(self) -> bool:
        return False

    @property
    def run_id(self) -> str | None:
        return None

    def link(self) -> RunLink | None:
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

    def log_dataset(self, name: str, *, source: str | Path, digest: str, context: str,
                    tags: Mapping[str, str] | None = None) -> None:
        pass

    def log_torch_model(self, model: Any, **_: Any) -> str | None:
        return None


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """Id of the MLflow experiment ``name`` in ``tracking_uri`` (created, or restored if deleted)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # another process created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``ray job stop``, ``kill``) raises KeyboardInterrupt, so runs and output locks are closed
    as on Ctrl-C instead of the process vanishing mid-run. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def start_run(run_name: str, *, enabled: bool = True, experiment: str | None = None,
              params: Mapping[str, Any] | None = None, nested: bool = False,
              tracking_uri: str | None = None, out: str | Path | None = None,
              store_dir: str | Path | None = None, tags: Mapping[str, Any] | None = None,
              link: RunLink | None = None) -> Iterator[Tracker]:
    """Open an MLflow run and yield its tracker.

    With ``link`` the run opens where the link says (under its parent, if any: a Tune trial). Otherwise
    it nests under an already active run (``nested`` forces that intent), so a command invoked by the
    pipeline becomes a child of the pipeline's stage run; a top-level run goes to ``tracking_uri`` or the
    default store (:func:`default_tracking_uri` of ``store_dir``, default ``out``) and is tagged with ``out``.
    ``store_dir`` must be a directory no stage replaces (a sample set's ``--out`` is swapped in whole).
    """
    if not enabled:
        yield NullTracker()
        return
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # DB-migration chatter drowns the summary
    os.environ.setdefault(SUPPRESS_URL_ENV, "true")  # with a server, MLflow prints run links on stdout (--json)
    all_tags = {**_code_tags(), TAG_COMMAND: shlex.join(sys.argv)[:5000]}
    active = mlflow.active_run()
    top_level = link is None and not (nested or active is not None)
    if link is not None:
        mlflow.set_tracking_uri(link.tracking_uri)
        all_tags.update(link.tags)
        where = {"experiment_id": link.experiment_id, "parent_run_id": link.parent_run_id}
    elif not top_level:
        parent_tags = active.data.tags if active is not None else {}
        all_tags.update({key: parent_tags[key] for key in INHERITED_TAGS if key in parent_tags})
        where = {"experiment_id": active.info.experiment_id if active is not None else None}
    else:
        uri, artifacts = (absolute_uri(tracking_uri), None) if tracking_uri else _default_store(store_dir or out)
        mlflow.set_tracking_uri(uri)
        experiment_id = ensure_experiment(uri, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                          or DEFAULT_EXPERIMENT, artifacts)
        mlflow.set_experiment(experiment_id=experiment_id)
        where = {"experiment_id": experiment_id}
        if out is not None:
            all_tags[TAG_OUT] = str(Path(out).expanduser().resolve())
    all_tags.update({key: str(value) for key, value in (tags or {}).items() if value is not None})
    run = mlflow.start_run(run_name=run_name, nested=not top_level and link is None, tags=all_tags,
                           log_system_metrics=_system_metrics(), **where)
    status = _STATUS_FAILED
    try:
        with _sigterm_interrupts() if top_level else contextlib.nullcontext():
            tracker = Tracker(run)
            if params:
                tracker.log_params(params)
            yield tracker
        status = _STATUS_FINISHED
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM, or Tune stopping a trial
        status = _STATUS_KILLED
        raise
    finally:
        mlflow.end_run(status=status)
