"""``rgm bench {sampler,generate,resample,ssl,weigh}``: speed measurements, printed as JSON.

Speed targets live here, never in timed unit tests.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from rgm_ray.models.registry import GENERATOR_NAMES, parse_generator_name
from rgm_ray.pipeline.presets import PRESETS
from rgm_ray.resample.config import METHODS


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods or not set(methods) <= set(METHODS):
        raise argparse.ArgumentTypeError(f"expected comma-separated methods from {','.join(METHODS)}, got {text!r}")
    return methods


def _generator_name(text: str) -> str:
    """A generator's public name; an old spelling still works, with a one-line note on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        try:
            name = parse_generator_name(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    for warning in caught:
        print(f"rgm bench generate: note: {warning.message}", file=sys.stderr)
    return name


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="benchmarks (JSON on stdout)")
    bench = parser.add_subparsers(dest="bench_command", required=True, metavar="{sampler,generate,resample,ssl,weigh}")

    sam = bench.add_parser("sampler", help="naive vs cached PixelCNN++ sampling speed per batch size")
    sam.add_argument("--preset", default="paper", choices=tuple(PRESETS),
                     help="model config source (default: paper); override fields with --set")
    sam.add_argument("--set", dest="overrides", action="append", default=[], metavar="pixelcnn.KEY=VALUE")
    sam.add_argument("--batch-sizes", type=_ints, default=[1, 16, 64, 256])
    sam.add_argument("--naive-steps", type=int, default=2,
                     help="full forward passes timed per batch size; naive cost = that x H*W (0 skips)")
    sam.add_argument("--threads", type=int, default=1,
                     help="torch intra-op threads (default 1: extra threads stall when another process holds a core)")
    sam.set_defaults(handler=run_bench_sampler, json=True)

    gen = bench.add_parser("generate", help="sharded generation throughput with 1 and 2 Ray workers")
    gen.add_argument("--preset", default="demo", choices=tuple(PRESETS))
    gen.add_argument("--model", default="pixelcnn", type=_generator_name, metavar=f"{{{','.join(GENERATOR_NAMES)}}}",
                     help="generator (default: pixelcnn)")
    gen.add_argument("--sampler", default=None)
    gen.add_argument("--num-samples", type=int, default=1024)
    gen.add_argument("--shard-size", type=int, default=128)
    gen.add_argument("--batch-size", type=int, default=64)
    gen.add_argument("--workers", type=_ints, default=[1, 2], help="worker counts to compare (default 1,2)")
    gen.set_defaults(handler=run_bench_generate, json=True)

    res = bench.add_parser("resample", help="gumbel_top_k vs NumPy choice; sharded on-disk selection; "
                           "rejection and mh beside them")
    res.add_argument("--n", type=int, default=10_000_000, help="in-process log-weights")
    res.add_argument("--k", type=int, default=1_000_000)
    res.add_argument("--shards", type=int, default=1000, help="on-disk shards")
    res.add_argument("--n-disk", type=int, default=100_000_000, help="on-disk log-weights (0 skips)")
    res.add_argument("--seed", type=int, default=0)
    res.add_argument("--workdir", default=None, help="keep/reuse the on-disk data here")
    res.add_argument("--methods", type=_methods, default=METHODS,
                     help=f"comma-separated resample methods to time (default: {','.join(METHODS)})")
    res.set_defaults(handler=run_bench_resample, json=True)

    ssl = bench.add_parser("ssl", help="a sweep trial's fixed costs (start-up, data, evaluation) and per-step time")
    ssl.add_argument("--config", default="ssl_demo.yaml",
                     help="sweep config (a YAML file or a shipped name) whose training settings are used "
                          "(default: the demo's)")
    ssl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a config value, e.g. --set sources.plain=DIR (repeatable)")
    ssl.add_argument("--source", default="real", help="unlabelled source: a name in the config's sources")
    ssl.add_argument("--steps", type=int, default=30, help="training steps timed (one epoch; default 30)")
    ssl.add_argument("--no-mlflow", action="store_true", help="leave out the trial's MLflow run")
    ssl.set_defaults(handler=run_bench_ssl, json=True)

    wgh = bench.add_parser("weigh", help="Ray Data scoring vs a plain torch loop over the same images")
    wgh.add_argument("--weigher", default=None, metavar="DIR",
                     help="a weigh run's classifier/ directory (default: build one from Fashion-MNIST)")
    wgh.add_argument("--samples", default=None, metavar="DIR", help="the set to score (with --weigher)")
    wgh.add_argument("--num-images", type=int, default=6000, help="images of the built set (default 6000)")
    wgh.add_argument("--batch-size", type=int, default=256)
    wgh.add_argument("--repeats", type=int, default=2, help="passes of each; the best is reported (default 2)")
    wgh.set_defaults(handler=run_bench_weigh, json=True)


def run_bench_generate(args: argparse.Namespace) -> dict[str, Any]:
    from rgm_ray.bench.generate import bench_generate

    return bench_generate(preset=args.preset, generator=args.model, sampler=args.sampler,
                          num_samples=args.num_samples, shard_size=args.shard_size,
                          batch_size=args.batch_size, worker_counts=tuple(args.workers))


def run_bench_resample(args: argparse.Namespace) -> dict[str, Any]:
    from rgm_ray.bench.resample import bench_resample

    return bench_resample(args.n, args.k, shards=args.shards, n_disk=args.n_disk, seed=args.seed,
                          workdir=args.workdir, methods=args.methods)


def run_bench_ssl(args: argparse.Namespace) -> dict[str, Any]:
    from rgm_ray.bench.ssl import bench_ssl

    return bench_ssl(args.config, args.overrides, source=args.source, steps=args.steps, track=not args.no_mlflow)


def run_bench_weigh(args: argparse.Namespace) -> dict[str, Any]:
    from rgm_ray.bench.weigh import bench_weigh

    return bench_weigh(weigher=args.weigher, samples=args.samples, num_images=args.num_images,
                       batch_size=args.batch_size, repeats=args.repeats)


def run_bench_sampler(args: argparse.Namespace) -> dict[str, Any]:
    from rgm_ray.bench.sampler import bench_sampler
    from rgm_ray.pipeline.presets import load_preset, section
    from rgm_ray.runtime import set_torch_threads

    set_torch_threads(args.threads)
    config = section(load_preset(args.preset, args.overrides), "pixelcnn")
    return bench_sampler(config, args.batch_sizes, naive_steps=args.naive_steps)
