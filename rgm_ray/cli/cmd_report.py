"""``rgm report RUN_DIR``: rebuild report.md and the self-contained report.html of a pipeline run."""

from __future__ import annotations

import argparse
from typing import Any

from rgm_ray.cli.common import add_common
from rgm_ray.report.build import build_report


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write report.md and report.html for a pipeline run directory")
    parser.add_argument("run_dir")
    add_common(parser, tracked=False)
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> dict[str, Any]:
    md, page = build_report(args.run_dir)
    return {"markdown": str(md), "html": str(page), "message": f"wrote {md} and {page}"}
