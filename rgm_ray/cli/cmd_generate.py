"""``rgm generate``: draw N samples from a checkpoint or a generator plugin into a sharded sample set on Ray."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from rgm_ray.cli.common import (add_cluster_args, add_common, cluster_options, command_line, output_dir,
                                progress_bar, tracked_run)
from rgm_ray.generate import GenerateResult, GenerateSpec, generate_sample_set
from rgm_ray.generate.plugins import parse_generator_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="sample a trained generator into a sharded sample set on Ray")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint dir (or a 'rgm train' run dir)")
    source.add_argument("--generator", metavar="MODULE:FACTORY",
                        help="a generator plugin, e.g. rgm_ray.generate.example_plugin:make (see README)")
    parser.add_argument("--generator-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword argument of the plugin's factory, VALUE read as YAML (repeatable)")
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--out", required=True, type=output_dir)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default=None,
                        help="pixelcnn: cached (default) | naive; vae: mean (default) | sample")
    parser.add_argument("--batch-size", type=int, default=64, help="images per sampling batch (checkpoints)")
    add_cluster_args(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a set made with other settings (only once the new one is complete)")
    add_common(parser)
    parser.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> GenerateResult:
    spec = GenerateSpec(checkpoint=args.checkpoint, out=args.out, num_samples=args.num_samples,
                        shard_size=args.shard_size, seed=args.seed, sampler=args.sampler, batch_size=args.batch_size,
                        generator=args.generator, generator_args=parse_generator_args(args.generator_arg))
    cluster = cluster_options(args)
    plan = spec.plan()
    with tracked_run(args, f"generate-{plan.kind}", {**asdict(spec), **plan.to_dict(), **asdict(cluster)}) as tracker:
        return generate_sample_set(spec, cluster, overwrite=args.overwrite, tracker=tracker, command=command_line(),
                                   progress=progress_bar)
