"""``rgm generate``: draw N samples from a checkpoint into a sharded sample set on Ray."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict
from typing import Any

from rgm_ray.cli.common import add_common, progress_bar, tracked_run
from rgm_ray.generate import ClusterOptions, generate_sample_set, make_plan
from rgm_ray.models.training import CHECKPOINT_DIR


def add_cluster_args(parser: argparse.ArgumentParser, *, batch_size: int = 64) -> None:
    parser.add_argument("--workers", type=int, default=None, help="Ray workers (default: fill the cluster)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="e.g. 1 on a GPU cluster")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--address", default=None,
                        help="Ray cluster address ('auto', 'ray://head:10001'); default: local Ray")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="sample a trained generator into a sharded sample set on Ray")
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir (or a 'rgm train' run dir)")
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default=None,
                        help="pixelcnnpp: cached (default) | naive; vae: mean (default) | sample")
    add_cluster_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a set made with other settings")
    add_common(parser)
    parser.set_defaults(handler=run_generate)


def resolve_checkpoint(path: str) -> str:
    """Accept either a checkpoint directory or the ``rgm train`` run directory that holds one."""
    from pathlib import Path

    candidate = Path(path) / CHECKPOINT_DIR
    return str(candidate) if (candidate / "config.json").is_file() else path


def run_generate(args: argparse.Namespace) -> dict[str, Any]:
    checkpoint = resolve_checkpoint(args.checkpoint)
    plan = make_plan(checkpoint, num_samples=args.num_samples, shard_size=args.shard_size, seed=args.seed,
                     sampler=args.sampler)
    options = ClusterOptions(workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size,
                             address=args.address)
    params = {**asdict(plan), **asdict(options), "checkpoint": checkpoint, "out": args.out}
    with tracked_run(args, f"generate-{plan.kind}", params) as tracker:
        return generate_sample_set(checkpoint, args.out, plan, options, overwrite=args.overwrite,
                                   tracker=tracker, command=shlex.join(["rgm", *sys.argv[1:]]),
                                   progress=progress_bar)
