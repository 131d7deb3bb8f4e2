"""``rgm resample``: draw k rows of a weighted sample set ∝ importance weight into a new set, on Ray."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from rgm_ray.cli.common import add_common, command_line, progress_bar, tracked_run
from rgm_ray.resample import ResampleConfig, ResampleResult, ResampleSpec, resample_sample_set
from rgm_ray.runtime import ClusterOptions


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "resample", help="draw k rows in proportion to their importance weights into a new sample set (Ray)",
        description="Sampling-importance-resampling over a sharded set with a log_weight column. Without "
        "--replacement: exact weighted sampling of k distinct rows (Gumbel top-k), identical for any "
        "sharding; rows are written in selection order. With --replacement: classic SIR (multinomial), one "
        "row per distinct sample with a 'copies' column, ascending sample_id. The output keeps the original "
        "log_weight; transforms (clip, then flatten w^alpha) only shape the draw and go in the summary.")
    parser.add_argument("--samples", required=True, help="input sample set (needs a log_weight column)")
    parser.add_argument("--k", type=int, required=True, help="number of draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output sample set directory")
    flatten = parser.add_mutually_exclusive_group()
    flatten.add_argument("--alpha", type=float, default=None, help="flatten weights to w^alpha, alpha in [0, 1] "
                         "(default 1; 0 = uniform over rows with non-zero weight)")
    flatten.add_argument("--target-ess", type=float, default=None, metavar="E",
                         help="use the largest alpha in [0, 1] whose effective sample size is >= E")
    parser.add_argument("--target-ess-tol", type=float, default=1e-4, help="alpha tolerance for --target-ess")
    clip = parser.add_mutually_exclusive_group()
    clip.add_argument("--clip-max", type=float, default=None, metavar="W", help="cap weights at W (weight scale)")
    clip.add_argument("--clip-quantile", type=float, default=None, metavar="Q",
                      help="cap weights at their Q-quantile over the set, Q in (0, 1] (exact)")
    parser.add_argument("--clip-min", type=float, default=None, metavar="W",
                        help="raise non-zero weights to at least W (LFIW's max(w, beta))")
    parser.add_argument("--replacement", action="store_true", help="draw with replacement (multinomial SIR)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="rows per output shard")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address ('auto', 'ray://head:10001'); default: local Ray")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_common(parser)
    parser.set_defaults(handler=run_resample)


def run_resample(args: argparse.Namespace) -> ResampleResult:
    config = ResampleConfig(k=args.k, seed=args.seed, replacement=args.replacement, alpha=args.alpha,
                            target_ess=args.target_ess, target_ess_tol=args.target_ess_tol,
                            clip_max=args.clip_max, clip_quantile=args.clip_quantile, clip_min=args.clip_min,
                            shard_size=args.shard_size)
    spec = ResampleSpec(samples=args.samples, out=args.out, config=config)
    params = {**asdict(config), "samples": args.samples, "out": args.out}
    with tracked_run(args, "resample", params) as tracker:
        return resample_sample_set(spec, ClusterOptions(address=args.address), overwrite=args.overwrite,
                                   tracker=tracker, command=command_line(), progress=progress_bar)
