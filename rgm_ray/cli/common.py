"""Shared CLI plumbing: common flags, progress bars (from ``rgm_ray.progress``), the one-line / JSON summary,
clean errors."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from rgm_ray.pipeline.presets import PRESETS
from rgm_ray.progress import progress, progress_bar  # the commands' bars, from the package's one implementation
from rgm_ray.results import StageResult
from rgm_ray.runtime import ClusterOptions
from rgm_ray.tracking import TAG_PRESET, start_run

T = TypeVar("T")
Handler = Callable[[argparse.Namespace], "dict[str, Any] | StageResult"]


class UserError(Exception):
    """A problem the user can fix (bad input, missing file): printed without a traceback."""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of threads, workers, ...), refused at parse time otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def output_dir(text: str) -> str:
    """An argparse type for a flag naming a directory to write: refused at parse time, before anything is
    written, when it or its nearest existing parent is not a directory."""
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is" if existing == path else f"lies under {existing}, which is"
        raise argparse.ArgumentTypeError(f"{text} {where} a file, not a directory")
    return text


def value_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser raising ValueError, whose message argparse would otherwise drop."""
    @functools.wraps(parse)
    def checked(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    return checked


def add_common(parser: argparse.ArgumentParser, *, tracked: bool = True) -> None:
    """Flags every command takes; ``tracked`` commands also open an MLflow run."""
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")
    if tracked:
        parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
        parser.add_argument("--experiment", default=None,
                            help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or 'rgm_ray')")


def add_cluster_args(parser: argparse.ArgumentParser, *, cpus_per_worker: float = 1.0) -> None:
    """Where a command runs on Ray (``runtime.ClusterOptions``); none of it changes results."""
    parser.add_argument("--workers", type=int, default=None, help="Ray workers (default: fill the cluster)")
    parser.add_argument("--cpus-per-worker", type=float, default=cpus_per_worker,
                        help=f"(default: {cpus_per_worker:g})")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="e.g. 1 on a GPU cluster")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address ('auto', 'ray://head:10001'); default: local Ray")


def add_preset_args(parser: argparse.ArgumentParser, default: str = "demo") -> None:
    """``--preset NAME`` and repeatable ``--set section.key=value`` overrides."""
    parser.add_argument("--preset", default=default, choices=tuple(PRESETS), help=f"(default: {default})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a preset field, e.g. --set pixelcnn.nr_filters=64 (repeatable)")


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    return ClusterOptions(workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker, address=args.address)


def command_line() -> str:
    """The command as typed, recorded in every output's provenance."""
    return shlex.join(["rgm", *sys.argv[1:]])


def job_store_dir(out: str | Path) -> Path:
    """Where a command writing ``out`` keeps its MLflow store inside a Ray job (no ``MLFLOW_TRACKING_URI``):
    the pipeline run directory ``out`` lies in (the nearest folder above it holding ``pipeline.json``), so
    single-stage commands on a run's folders track into the pipeline's own store; else beside ``out``
    (never in it: a sample set is replaced whole)."""
    from rgm_ray.report.build import STATE_FILE  # not at import time: ``rgm --help`` stays light

    out = Path(out).expanduser().resolve()
    return next((folder for folder in out.parents if (folder / STATE_FILE).is_file()), out.parent)


def tracked_run(args: argparse.Namespace, run_name: str, params: dict[str, Any], **options: Any):
    """Open the command's MLflow run, honouring ``--no-mlflow`` and ``--experiment``, tagged with its
    ``--preset`` and ``--out``; inside a Ray job the default store is :func:`job_store_dir`'s
    (``options`` go to :func:`~rgm_ray.tracking.start_run`)."""
    out = getattr(args, "out", None)
    options = {"experiment": getattr(args, "experiment", None), "out": out,
               "store_dir": job_store_dir(out) if out else None, **options}
    preset = getattr(args, "preset", None)
    return start_run(run_name, enabled=not getattr(args, "no_mlflow", True), params=params,
                     tags={TAG_PRESET: preset} if preset else None, **options)


def emit_summary(args: argparse.Namespace, summary: dict[str, Any] | StageResult) -> None:
    """Print a handler's result: JSON with ``--json``, else its one-line ``message``."""
    if isinstance(summary, StageResult):
        facts, message = summary.to_dict(), summary.message
    else:
        facts = {k: v for k, v in summary.items() if k != "message"}
        message = summary.get("message", "done")
    if getattr(args, "json", False):
        print(json.dumps(facts, indent=2, sort_keys=True, default=str))
    else:
        print(message)
