"""``rgm data export``, ``rgm data import`` and ``rgm data verify``."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from rgm_ray.cli.common import (UserError, add_common, command_line, emit_summary, output_dir, progress,
                                tracked_run)
from rgm_ray.data import DATASET_NAMES, load_dataset
from rgm_ray.store import ImportResult, ImportSpec, export_dataset, import_samples, verify_sample_set
from rgm_ray.store.export import DEFAULT_SHARD_SIZE
from rgm_ray.store.importing import DEFAULT_IMAGE_COLUMN, LAYOUT_CHANNEL_AXIS
from rgm_ray.store.manifest import MANIFEST_NAME


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="export real datasets or import samples as sample sets; verify sample sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{export,import,verify}")

    export = data_sub.add_parser("export", help="write a real dataset split as a sample set")
    export.add_argument("--dataset", default="fashion-mnist", choices=DATASET_NAMES)
    export.add_argument("--split", default="train", choices=("train", "test"))
    export.add_argument("--root", default=None, help="directory holding the dataset files")
    export.add_argument("--out", required=True, type=output_dir, help="output sample-set directory")
    export.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    export.add_argument("--overwrite", action="store_true", help="replace an existing set at --out")
    add_common(export)
    export.set_defaults(handler=run_export)

    imported = data_sub.add_parser(
        "import", help="turn samples made anywhere (PNG/JPEG folder, .npy/.npz, Parquet) into a sample set",
        description="Ids follow the input order (a folder's sorted file names, array rows, Parquet rows); "
        "every image must have one shape and mode unless --resize/--grayscale converts all of them. The "
        "source path, its SHA-256 and any conversion go in the manifest's info['import'].")
    imported.add_argument("source", help="a folder of PNG/JPEG files, a .npy/.npz array or a .parquet file")
    imported.add_argument("--out", required=True, type=output_dir, help="output sample-set directory")
    imported.add_argument("--layout", choices=tuple(LAYOUT_CHANNEL_AXIS), default=None,
                          help="arrays: axis order (default: detected from the channel axis of size 1 or 3)")
    imported.add_argument("--array", default=None, metavar="NAME", help=".npz: the array to import "
                          "(default: the only one)")
    imported.add_argument("--shape", type=_positive_ints("C,H,W"), default=None, metavar="C,H,W",
                          help="Parquet: the column holds raw uint8 bytes in CHW order (default: PNG/JPEG bytes)")
    imported.add_argument("--image-column", default=None, metavar="COL",
                          help=f"Parquet: the image column (default: {DEFAULT_IMAGE_COLUMN!r})")
    imported.add_argument("--resize", type=_positive_ints("H,W"), default=None, metavar="H,W",
                          help="resize every image (Pillow bicubic), allowing inputs of several sizes")
    imported.add_argument("--grayscale", action="store_true",
                          help="convert every image to one channel, allowing inputs of several modes")
    imported.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    imported.add_argument("--overwrite", action="store_true", help="replace an existing set at --out")
    add_common(imported)
    imported.set_defaults(handler=run_import)

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
        tracker.log_dict(manifest.to_json(), MANIFEST_NAME)
    return {"out": args.out, "rows": manifest.num_rows, "shards": len(manifest.shards),
            "shape": list(manifest.shape), "source": manifest.source,
            "message": f"wrote {manifest.num_rows} rows in {len(manifest.shards)} shards to {args.out}"}


def run_import(args: argparse.Namespace) -> ImportResult:
    spec = ImportSpec(source=args.source, out=args.out, layout=args.layout, array=args.array, shape=args.shape,
                      resize=args.resize, grayscale=args.grayscale, image_column=args.image_column,
                      shard_size=args.shard_size)
    with tracked_run(args, "import", asdict(spec)) as tracker:
        result = import_samples(spec, overwrite=args.overwrite, command=command_line(),
                                progress=lambda it: progress(it, desc="import", unit="shard"))
        tracker.log_metrics({"rows": result.num_samples, "shards": result.shards})
        tracker.log_artifact(Path(result.out) / MANIFEST_NAME)
    return result


def _positive_ints(form: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type for ``form`` (e.g. "H,W"): that many comma-separated positive integers."""
    def parse(text: str) -> tuple[int, ...]:
        parts = text.split(",")
        if len(parts) != len(form.split(",")) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"expected {form} with positive integers, got {text!r}")
        return tuple(int(p) for p in parts)
    return parse


def run_verify(args: argparse.Namespace) -> dict[str, Any]:
    problems = verify_sample_set(args.directory)
    if problems:
        summary = {"ok": False, "problems": [str(p) for p in problems]}
        if args.json:
            emit_summary(args, summary)
        if len(problems) == 1:  # one line, naming the set unless the problem is the directory itself
            only = problems[0]
            raise UserError(str(only) if Path(only.file) == Path(args.directory) else f"{args.directory}: {only}")
        raise UserError(f"{args.directory}: {len(problems)} problems\n" + "\n".join(f"  {p}" for p in problems))
    return {"ok": True, "directory": args.directory, "message": f"{args.directory}: OK"}
