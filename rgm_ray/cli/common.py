"""Shared CLI plumbing: common flags, progress bars, the one-line / JSON summary, clean errors."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Iterable, TypeVar

from tqdm.auto import tqdm

from rgm_ray.tracking import start_run

T = TypeVar("T")
Handler = Callable[[argparse.Namespace], dict[str, Any]]


class UserError(Exception):
    """A problem the user can fix (bad input, missing file): printed without a traceback."""


def add_common(parser: argparse.ArgumentParser, *, tracked: bool = True) -> None:
    """Flags every command takes; ``tracked`` commands also open an MLflow run."""
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")
    if tracked:
        parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
        parser.add_argument("--experiment", default=None,
                            help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or 'rgm_ray')")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it",
             disable: bool = False) -> Iterable[T]:
    """A tqdm bar on stderr (so ``--json`` output on stdout stays clean)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, disable=disable,
                dynamic_ncols=True, leave=False)


def progress_bar(*, total: int, desc: str, unit: str = "it", initial: int = 0) -> tqdm:
    """A manually-updated tqdm bar on stderr (rate and ETA included)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                leave=False)


def tracked_run(args: argparse.Namespace, run_name: str, params: dict[str, Any]):
    """Open the command's MLflow run, honouring ``--no-mlflow`` and ``--experiment``."""
    return start_run(run_name, enabled=not getattr(args, "no_mlflow", True),
                     experiment=getattr(args, "experiment", None), params=params)


def emit_summary(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """Print the summary: JSON with ``--json``, else its ``message`` line."""
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        print(summary.get("message", "done"))
