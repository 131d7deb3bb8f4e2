"""``rgm tune``: a Ray Tune sweep of the semi-supervised stage from a YAML config, with result tables."""

from __future__ import annotations

import argparse
from typing import Any

from rgm_ray.cli.common import UserError, add_common, output_dir
from rgm_ray.tune.config import load_sweep_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tune", help="sweep SL weight x labels x unlabelled source x seeds with Ray Tune (one MLflow run per trial)",
        description="Runs every cell of the config's grid as a Ray Tune trial, then writes summary.md / "
                    "summary.csv (mean ± std and 95 % t-intervals across seeds; selection on validation only).")
    parser.add_argument("--config", required=True, help="sweep YAML, e.g. tune_configs/ssl_smoke.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (YAML), e.g. --set sources.plain=DIR --set grid.seed=[0,1] "
                             "(repeatable)")
    parser.add_argument("--out", default=None, type=output_dir,
                        help="output directory (default: the config's out, or runs/tune/NAME)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local Ray or $RAY_ADDRESS)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished sweep in --out")
    parser.add_argument("--check", action="store_true", help="validate the config, print the trials and exit")
    add_common(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.overrides)
    if args.experiment:
        overrides.append(f"experiment={args.experiment}")
    config = load_sweep_config(args.config, overrides)
    cells = config.cells()
    if args.check:
        return {"sweep": config.name, "trials": len(cells), "cells": cells,
                "message": f"{args.config}: valid; {len(cells)} trials, {config.resources} per trial"}
    from rgm_ray.tune.sweep import SweepFailedError, run_sweep

    try:
        return run_sweep(config, out=args.out, address=args.address, track=not args.no_mlflow,
                         overwrite=args.overwrite)
    except SweepFailedError as exc:
        raise UserError(str(exc)) from exc
