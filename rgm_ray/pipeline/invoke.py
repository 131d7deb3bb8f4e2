"""Run an ``rgm`` command from inside the pipeline: same parsing, validation and outputs as the CLI,
but errors propagate as exceptions and the command's summary dict is returned."""

from __future__ import annotations

from typing import Any

from rgm_ray.pipeline.context import Context


def run_command(ctx: Context, argv: list[str]) -> dict[str, Any]:
    from rgm_ray.cli.main import build_parser  # the CLI sits above the pipeline; import at call time

    if not ctx.track:
        argv = [*argv, "--no-mlflow"]
    args = build_parser().parse_args(argv)
    return args.handler(args)
