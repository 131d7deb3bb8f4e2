"""``rgm resample``: draw rows of a weighted sample set ∝ importance weight into a new set, on Ray
(SIR, rejection sampling or independence Metropolis–Hastings on the same weights)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from rgm_ray.cli.common import add_common, command_line, output_dir, progress_bar, tracked_run
from rgm_ray.resample import ResampleConfig, ResampleResult, ResampleSpec, resample_sample_set
from rgm_ray.resample.config import METHODS
from rgm_ray.runtime import ClusterOptions


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "resample", help="draw k rows in proportion to their importance weights into a new sample set (Ray)",
        description="Resampling over a sharded set with a log_weight column. --method sir (default), without "
        "--replacement: exact weighted sampling of k distinct rows (Gumbel top-k), identical for any "
        "sharding; rows are written in selection order. With --replacement: classic SIR (multinomial), one "
        "row per distinct sample with a 'copies' column, ascending sample_id. --method rejection: each sample "
        "accepted with probability min(1, w/M), M the largest weight (exact) or --rejection-quantile's; the "
        "first k accepted in a seeded proposal order (all, if fewer), identical for any sharding. --method "
        "mh: an independence Metropolis-Hastings chain over the samples in a seeded order, the k states after "
        "--burn-in with 'copies', identical for any sharding. Without --alpha / --target-ess, alpha is the "
        "largest with ESS >= min(k, 0.5 x rows with non-zero weight). The output keeps the original "
        "log_weight; transforms (clip, then flatten w^alpha) only shape the draw and go in the summary.")
    parser.add_argument("--samples", required=True, help="input sample set (needs a log_weight column)")
    parser.add_argument("--k", type=int, required=True,
                        help="number of draws (rejection: at most k accepted rows; mh: kept chain states)")
    parser.add_argument("--method", choices=METHODS, default="sir",
                        help="sir (Gumbel top-k / multinomial), rejection or mh (default: sir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=output_dir, help="output sample set directory")
    flatten = parser.add_mutually_exclusive_group()
    flatten.add_argument("--alpha", type=float, default=None, help="flatten weights to w^alpha, alpha in [0, 1] "
                         "(0 = uniform over rows with non-zero weight; default: chosen for the default target "
                         "ESS, see above)")
    flatten.add_argument("--target-ess", type=float, default=None, metavar="E",
                         help="use the largest alpha in [0, 1] whose effective sample size is >= E")
    parser.add_argument("--target-ess-tol", type=float, default=1e-4, help="alpha tolerance for --target-ess")
    clip = parser.add_mutually_exclusive_group()
    clip.add_argument("--clip-max", type=float, default=None, metavar="W", help="cap weights at W (weight scale)")
    clip.add_argument("--clip-quantile", type=float, default=None, metavar="Q",
                      help="cap weights at their Q-quantile over the set, Q in (0, 1] (exact)")
    parser.add_argument("--clip-min", type=float, default=None, metavar="W",
                        help="raise non-zero weights to at least W (LFIW's max(w, beta))")
    parser.add_argument("--replacement", action="store_true",
                        help="draw with replacement (multinomial SIR; --method sir only)")
    parser.add_argument("--rejection-quantile", type=float, default=None, metavar="Q",
                        help="rejection: M = the Q-quantile of the weights (clipped and flattened like them) "
                        "instead of their maximum, Q in (0, 1]; weights above M are always accepted, so the output "
                        "is a sample of min(w, M)")
    parser.add_argument("--rejection-gamma", type=float, default=0.0, metavar="G",
                        help="rejection: log M += G (G > 0 accepts less, still exact; G < 0 clips more)")
    parser.add_argument("--burn-in", type=int, default=0, metavar="B",
                        help="mh: chain steps dropped before the k kept states (chain length B + k)")
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
                            shard_size=args.shard_size, method=args.method,
                            rejection_quantile=args.rejection_quantile, rejection_gamma=args.rejection_gamma,
                            mh_burn_in=args.burn_in)
    spec = ResampleSpec(samples=args.samples, out=args.out, config=config)
    params = {**asdict(config), "samples": args.samples, "out": args.out}
    with tracked_run(args, "resample", params) as tracker:
        return resample_sample_set(spec, ClusterOptions(address=args.address), overwrite=args.overwrite,
                                   tracker=tracker, command=command_line(), progress=progress_bar)
