"""``rgm generate``: draw N samples from a checkpoint into a sharded sample set on Ray."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from rgm_ray.cli.common import (add_cluster_args, add_common, cluster_options, command_line, progress_bar,
                                tracked_run)
from rgm_ray.generate import GenerateResult, GenerateSpec, generate_sample_set


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="sample a trained generator into a sharded sample set on Ray")
    parser.add_argument("--checkpoint", required=True, help="checkpoint dir (or a 'rgm train' run dir)")
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default=None,
                        help="pixelcnn: cached (default) | naive; vae: mean (default) | sample")
    parser.add_argument("--batch-size", type=int, default=64, help="images per sampling batch")
    add_cluster_args(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a set made with other settings (only once the new one is complete)")
    add_common(parser)
    parser.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> GenerateResult:
    spec = GenerateSpec(checkpoint=args.checkpoint, out=args.out, num_samples=args.num_samples,
                        shard_size=args.shard_size, seed=args.seed, sampler=args.sampler, batch_size=args.batch_size)
    cluster = cluster_options(args)
    plan = spec.plan()
    with tracked_run(args, f"generate-{plan.kind}", {**asdict(spec), **asdict(plan), **asdict(cluster)}) as tracker:
        return generate_sample_set(spec, cluster, overwrite=args.overwrite, tracker=tracker, command=command_line(),
                                   progress=progress_bar)
