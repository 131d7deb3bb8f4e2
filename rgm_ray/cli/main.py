"""The ``rgm`` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

from rgm_ray import __version__
from rgm_ray.cli import cmd_audit, cmd_bench, cmd_data, cmd_evaluate, cmd_generate, cmd_pipeline, cmd_report, cmd_resample, cmd_ssl, cmd_train, cmd_tune, cmd_weigh
from rgm_ray.cli.common import UserError, emit_summary
from rgm_ray.data import DatasetNotFoundError
from rgm_ray.store import ArtefactExistsError, ManifestError
from rgm_ray.store.lock import OutputLockedError

COMMANDS = (cmd_data, cmd_train, cmd_generate, cmd_weigh, cmd_resample, cmd_evaluate, cmd_audit, cmd_ssl, cmd_tune, cmd_pipeline, cmd_report, cmd_bench)
# Failures a user can fix: one clear line, no traceback, exit code 2.
USER_ERRORS = (UserError, DatasetNotFoundError, ArtefactExistsError, ManifestError, OutputLockedError,
               FileNotFoundError, ValueError)
# Storage failures the user can fix (full disk, quota, read-only or forbidden target): one line too.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line like every other user error (no usage block), exit code 2.

    Subcommand parsers are built with the same class, so the line names the subcommand."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def storage_problem(exc: OSError) -> str:
    """A storage failure as one line: what went wrong, on which path, and on a full disk the space left there."""
    where = exc.filename or "the output path"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{os.strerror(exc.errno)}: {where} ({_space_left(where)}); free some space, then re-run the "
                "same command to continue")
    return f"{os.strerror(exc.errno)}: {where}; make it writable or choose another output, then re-run the same command"


def _space_left(path: str) -> str:
    """The free space of the filesystem holding ``path`` (or its nearest existing parent), for people."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = float(shutil.disk_usage(existing).free)
    except OSError:
        return "free space unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            break
        free /= 1024
    return f"{free:.0f} {unit} left on its filesystem" if unit == "bytes" else f"{free:.1f} {unit} left on its filesystem"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rgm", description="Resampling generative models with likelihood-free importance "
        "weights, distributed with Ray and tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"rgm_ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = args.handler(args)
    except USER_ERRORS as exc:
        print(f"rgm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rgm {args.command}: interrupted; finished outputs are kept and unfinished ones are never taken "
              "for finished: re-run the same command to continue", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        print(f"rgm {args.command}: error: {storage_problem(exc)}", file=sys.stderr)
        return 2
    emit_summary(args, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
