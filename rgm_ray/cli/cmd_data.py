"""``rgm data export`` and ``rgm data verify``."""

from __future__ import annotations

import argparse
from typing import Any

from rgm_ray.cli.common import UserError, add_common, command_line, emit_summary, progress, tracked_run
from rgm_ray.data import DATASET_NAMES, load_dataset
from rgm_ray.store import export_dataset, verify_sample_set
from rgm_ray.store.export import DEFAULT_SHARD_SIZE


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="export real datasets as sample sets; verify sample sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{export,verify}")

    export = data_sub.add_parser("export", help="write a real dataset split as a sample set")
    export.add_argument("--dataset", default="fashion-mnist", choices=DATASET_NAMES)
    export.add_argument("--split", default="train", choices=("train", "test"))
    export.add_argument("--root", default=None, help="directory holding the dataset files")
    export.add_argument("--out", required=True, help="output sample-set directory")
    export.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    export.add_argument("--overwrite", action="store_true", help="replace an existing set at --out")
    add_common(export)
    export.set_defaults(handler=run_export)

    verify = data_sub.add_parser("verify", help="check a sample set's manifest, hashes, schema and ids")
    verify.add_argument("directory")
    add_common(verify, tracked=False)
    verify.set_defaults(handler=run_verify)


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    dataset = load_dataset(args.dataset, args.split, args.root)
    params = {"dataset": args.dataset, "split": args.split, "out": args.out, "shard_size": args.shard_size}
    with tracked_run(args, f"export-{args.dataset}-{args.split}", params) as tracker:
        manifest = export_dataset(dataset, args.out, shard_size=args.shard_size, overwrite=args.overwrite,
                                  command=command_line(),
                                  progress=lambda it: progress(it, desc="export", unit="shard"))
        tracker.log_metrics({"rows": manifest.num_rows, "shards": len(manifest.shards)})
        tracker.log_dict(manifest.to_json(), "manifest.json")
    return {"out": args.out, "rows": manifest.num_rows, "shards": len(manifest.shards),
            "shape": list(manifest.shape), "source": manifest.source,
            "message": f"wrote {manifest.num_rows} rows in {len(manifest.shards)} shards to {args.out}"}


def run_verify(args: argparse.Namespace) -> dict[str, Any]:
    problems = verify_sample_set(args.directory)
    if problems:
        summary = {"ok": False, "problems": [str(p) for p in problems]}
        if args.json:
            emit_summary(args, summary)
        raise UserError(f"{args.directory}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))
    return {"ok": True, "directory": args.directory, "message": f"{args.directory}: OK"}
