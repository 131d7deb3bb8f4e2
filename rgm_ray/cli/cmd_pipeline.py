"""``rgm pipeline`` (any preset) and ``rgm demo`` (the offline embedded default)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rgm_ray.cli.common import (UserError, add_cluster_args, add_preset_args, cluster_options, output_dir, progress,
                                progress_bar)
from rgm_ray.pipeline.context import Context
from rgm_ray.pipeline.presets import load_preset
from rgm_ray.pipeline.runner import run_pipeline
from rgm_ray.tracking import default_tracking_uri


def _add_pipeline_args(parser: argparse.ArgumentParser, *, preset: str, out: str) -> None:
    add_preset_args(parser, default=preset)
    parser.add_argument("--out", default=out, type=output_dir, help=f"run directory (default: {out})")
    parser.add_argument("--retrain", action="store_true",
                        help="train the generators instead of using the preset's committed checkpoints")
    parser.add_argument("--until", default=None, help="stop after this stage")
    parser.add_argument("--inception-weights", default=None,
                        help="local Inception-V3 weights file (torch-fidelity format) for the paper preset")
    add_cluster_args(parser)
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--register-models", default=None, metavar="PREFIX",
                        help="register each generator's MLflow model as PREFIX-<generator> (e.g. PREFIX-pixelcnn)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")


def register(sub: argparse._SubParsersAction) -> None:
    pipe = sub.add_parser("pipeline", help="run the whole pipeline for a preset (the Ray job of pipelines.full)")
    _add_pipeline_args(pipe, preset="paper", out="runs/paper")
    pipe.set_defaults(handler=run)
    demo = sub.add_parser("demo", help="the offline demo: Fashion-MNIST, local Ray, both generators")
    _add_pipeline_args(demo, preset="demo", out="runs/demo")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.register_models and args.no_mlflow:
        raise UserError("--register-models registers the runs' MLflow models: drop --no-mlflow")
    preset = load_preset(args.preset, args.overrides)
    ctx = Context(preset_name=args.preset, preset=preset, run_dir=Path(args.out),
                  cluster=cluster_options(args),
                  track=not args.no_mlflow, retrain=args.retrain, inception_weights=args.inception_weights,
                  register_models=args.register_models, progress_bar=progress_bar, progress=progress)
    summary = run_pipeline(ctx, until=args.until)
    report = Path(args.out) / "report.html"
    lines = [f"pipeline '{args.preset}' finished in {summary['seconds_total']:.0f} s; run directory {args.out}"]
    if report.is_file():
        lines.append(f"report: {report} (open it in a browser) and {Path(args.out) / 'report.md'}")
    if not args.no_mlflow:
        uri = default_tracking_uri(args.out)
        lines.append(f"MLflow: open {uri}" if uri.startswith(("http://", "https://")) else
                     f"MLflow: .venv/bin/mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000")
    summary["message"] = "\n".join(lines)
    return summary
