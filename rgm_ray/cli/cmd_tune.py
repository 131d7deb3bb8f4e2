"""``rgm tune``: a Ray Tune sweep of the semi-supervised stage from a YAML config, with result tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rgm_ray.cli.common import UserError, add_common, output_dir, tracked_run
from rgm_ray.tune.config import load_sweep_config, shipped_config_names


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tune", help="sweep SL weight x labels x unlabelled source x seeds with Ray Tune (one MLflow run per trial)",
        description="Runs every cell of the config's grid as a Ray Tune trial, then writes summary.md / "
                    "summary.csv (mean ± std and 95 % t-intervals across seeds; selection on validation only).")
    parser.add_argument("--config", required=True,
                        help=f"sweep YAML file, or the name of a shipped one ({', '.join(shipped_config_names())})")
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
    from rgm_ray.tune.sweep import SweepFailedError, refuse_finished, run_sweep

    out = Path(args.out or config.out_dir).expanduser().resolve()
    refuse_finished(out, args.overwrite)  # before an MLflow run is opened (and left FAILED)
    # the sweep's run, its trials' parent
    with tracked_run(args, f"tune-{config.name}", {"config": args.config, "overrides": overrides},
                     experiment=config.experiment_name, tracking_uri=config.tracking_uri, out=out) as tracker:
        try:
            return run_sweep(config, out=out, address=args.address, tracker=tracker, overwrite=args.overwrite)
        except SweepFailedError as exc:
            raise UserError(str(exc)) from exc
